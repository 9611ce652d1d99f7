//! Model families: the names GitLab sends as `model_name`, and what a family's own chat template
//! accepts, applied to every message list before it leaves for the model server.

use crate::plugins::wit;

/// Model families GitLab sends as `model_name`. A family without a prompt of its own for a task
/// uses the task's `base` prompt.
pub const FAMILIES: [&str; 12] = [
    "mistral",
    "mixtral",
    "codestral",
    "llama3",
    "codellama",
    "codegemma",
    "deepseekcoder",
    "gpt",
    "qwen",
    "claude_3",
    "gemini",
    "general",
];

/// Families whose chat templates have no system role: Mistral's and Mixtral's instruct templates
/// (v0.1/v0.2) raise "Conversation roles must alternate user/assistant…", Gemma's (CodeGemma)
/// raises "System role not supported". vLLM serving them answers 400 to any system message, so
/// for these families the system text travels at the start of the first user message instead.
/// Codestral is served by vLLM with the same family of templates; folding is harmless where a
/// template would have accepted it.
const WITHOUT_SYSTEM_ROLE: [&str; 4] = ["mistral", "mixtral", "codestral", "codegemma"];

/// Make `messages` acceptable to `family`'s chat template: for a family without a system role,
/// system messages are joined into the first user message (or become it, if there is none).
pub fn fit_roles(family: &str, messages: &mut Vec<wit::Message>) {
    if !WITHOUT_SYSTEM_ROLE.contains(&family) || !messages.iter().any(|m| matches!(m.role, wit::Role::System)) {
        return;
    }
    let (system, mut rest): (Vec<_>, Vec<_>) =
        std::mem::take(messages).into_iter().partition(|m| matches!(m.role, wit::Role::System));
    let mut preamble = system.into_iter().map(|m| m.content).collect::<Vec<_>>().join("\n\n");
    match rest.iter_mut().find(|m| matches!(m.role, wit::Role::User)) {
        Some(first_user) => {
            preamble.push_str("\n\n");
            preamble.push_str(&first_user.content);
            first_user.content = preamble;
        }
        None => rest.insert(0, wit::Message { role: wit::Role::User, content: preamble }),
    }
    *messages = rest;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: wit::Role, content: &str) -> wit::Message {
        wit::Message { role, content: content.to_string() }
    }

    fn shape(messages: &[wit::Message]) -> Vec<(String, String)> {
        messages.iter().map(|m| (format!("{:?}", m.role), m.content.clone())).collect()
    }

    #[test]
    fn families_without_a_system_role_get_it_in_the_first_user_message() {
        let conversation = vec![
            message(wit::Role::System, "Be brief."),
            message(wit::Role::User, "hi"),
            message(wit::Role::Assistant, "hello"),
            message(wit::Role::User, "more"),
        ];
        let mut folded = conversation.clone();
        fit_roles("mixtral", &mut folded);
        assert_eq!(
            shape(&folded),
            shape(&[
                message(wit::Role::User, "Be brief.\n\nhi"),
                message(wit::Role::Assistant, "hello"),
                message(wit::Role::User, "more"),
            ])
        );
        let mut kept = conversation.clone();
        fit_roles("llama3", &mut kept);
        assert_eq!(shape(&kept), shape(&conversation), "llama3 has a system role");

        let mut only_system = vec![message(wit::Role::System, "Reply OK.")];
        fit_roles("codegemma", &mut only_system);
        assert_eq!(shape(&only_system), shape(&[message(wit::Role::User, "Reply OK.")]));
    }
}
