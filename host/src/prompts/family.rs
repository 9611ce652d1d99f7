//! Model families: the names GitLab sends as `model_name`, read from the registry's
//! `families.toml`, with the family's prompt folders to fall back on, its default sampling, and
//! what its chat template accepts, applied to every message list before it leaves for the model
//! server.

use super::Params;
use crate::plugins::wit;
use serde::Deserialize;

/// The registry file that lists the families, at the root of the embedded prompts and of the
/// operator's `AIGW_PROMPTS__DIR`.
pub(crate) const FAMILIES_FILE: &str = "families.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamiliesFile {
    #[serde(default)]
    family: Vec<FamilyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyFile {
    name: String,
    #[serde(default = "has_system_role")]
    system_role: bool,
    /// Families whose prompts serve this one when it has none of its own for a task, in order,
    /// before `base` (GitLab's `models.yml` family lists: `mixtral` → `mistral`).
    #[serde(default)]
    falls_back_to: Vec<String>,
    /// Sampling for every prompt of the family, under what each prompt file sets itself
    /// (GitLab's `models.yml` `params`). No stop sequences here: those belong to the prompt.
    #[serde(default)]
    params: FamilyParams,
    /// The model's context window in tokens: prompt and answer together (GitLab's `models.yml`
    /// `max_context_tokens`). An operator whose server runs the model with a smaller window
    /// (vLLM's `--max-model-len`) states it here.
    context_tokens: Option<usize>,
    /// The models GitLab's supported-models list maps to this family (display names): an
    /// administrator who adds one in GitLab picks this family for it.
    #[serde(default)]
    models: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyParams {
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    top_p: Option<f32>,
}

fn has_system_role() -> bool {
    true
}

/// One model family.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    /// The `model_name` GitLab sends.
    pub(crate) name: String,
    /// Whether its chat template accepts a system message.
    pub(crate) system_role: bool,
    /// The families whose prompts it uses when it has none of its own, in order.
    pub(crate) falls_back_to: Vec<String>,
    /// Its default sampling, under each prompt's own.
    pub(crate) params: Params,
    /// Its context window in tokens.
    pub(crate) context_tokens: usize,
    /// The supported models GitLab maps to it.
    pub(crate) models: Vec<String>,
}

/// The context window of a family that states none, and of a model whose family is unknown:
/// GitLab's gateway assumes as much of a model it has no definition for.
pub(crate) const DEFAULT_CONTEXT_TOKENS: usize = 32_768;

/// The families the registry knows, in the order their files list them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Families(Vec<Family>);

impl Families {
    /// Add the families of one `families.toml`; an entry whose name is already known replaces it.
    pub(crate) fn merge(&mut self, text: &str) -> Result<(), String> {
        let file: FamiliesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for entry in file.family {
            let name = entry.name.trim();
            if name.is_empty() || name.contains('/') {
                return Err(format!("family name {:?} must be a non-empty name without '/'", entry.name));
            }
            let FamilyParams { temperature, max_tokens, top_p } = entry.params;
            let family = Family {
                name: name.to_string(),
                system_role: entry.system_role,
                falls_back_to: entry.falls_back_to,
                params: Params { temperature, max_tokens, top_p, stop: Vec::new() },
                context_tokens: entry.context_tokens.unwrap_or(DEFAULT_CONTEXT_TOKENS),
                models: entry.models,
            };
            match self.0.iter_mut().find(|known| known.name == family.name) {
                Some(known) => *known = family,
                None => self.0.push(family),
            }
        }
        Ok(())
    }

    /// The family named `name`, if known.
    pub(crate) fn get(&self, name: &str) -> Option<&Family> {
        self.0.iter().find(|family| family.name == name)
    }

    /// The context window of `family`'s models, in tokens.
    pub(crate) fn context_tokens(&self, family: &str) -> usize {
        self.get(family).map_or(DEFAULT_CONTEXT_TOKENS, |f| f.context_tokens)
    }

    /// Every family, in order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Family> {
        self.0.iter()
    }

    /// Every family's name, in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|family| family.name.as_str())
    }

    /// Make `messages` acceptable to `family`'s chat template: for a family without a system
    /// role, system messages are joined into the first user message (or become it, if there is
    /// none). An unknown family keeps its messages as they are.
    pub(crate) fn fit_roles(&self, family: &str, messages: &mut Vec<wit::Message>) {
        if self.get(family).is_none_or(|f| f.system_role) {
            return;
        }
        if !messages.iter().any(|m| matches!(m.role, wit::Role::System)) {
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

    fn families() -> Families {
        let mut families = Families::default();
        let text = "[[family]]\nname = \"mixtral\"\nsystem_role = false\n[[family]]\nname = \"llama3\"\n\
                    [[family]]\nname = \"codegemma\"\nsystem_role = false\n";
        families.merge(text).unwrap();
        families
    }

    #[test]
    fn a_later_file_adds_families_and_replaces_by_name() {
        let mut families = families();
        families.merge("[[family]]\nname = \"llama3\"\nsystem_role = false\n[[family]]\nname = \"starcoder\"").unwrap();
        assert_eq!(families.names().collect::<Vec<_>>(), ["mixtral", "llama3", "codegemma", "starcoder"]);
        assert!(!families.get("llama3").unwrap().system_role, "replaced by name");
        assert!(families.get("starcoder").unwrap().system_role, "a system role unless said otherwise");
        assert!(families.merge("[[family]]\nname = \"a/b\"").is_err());
        assert!(families.merge("[[family]]\nnmae = \"x\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn families_without_a_system_role_get_it_in_the_first_user_message() {
        let families = families();
        let conversation = vec![
            message(wit::Role::System, "Be brief."),
            message(wit::Role::User, "hi"),
            message(wit::Role::Assistant, "hello"),
            message(wit::Role::User, "more"),
        ];
        let mut folded = conversation.clone();
        families.fit_roles("mixtral", &mut folded);
        assert_eq!(
            shape(&folded),
            shape(&[
                message(wit::Role::User, "Be brief.\n\nhi"),
                message(wit::Role::Assistant, "hello"),
                message(wit::Role::User, "more"),
            ])
        );
        let mut kept = conversation.clone();
        families.fit_roles("llama3", &mut kept);
        assert_eq!(shape(&kept), shape(&conversation), "llama3 has a system role");

        let mut only_system = vec![message(wit::Role::System, "Reply OK.")];
        families.fit_roles("codegemma", &mut only_system);
        assert_eq!(shape(&only_system), shape(&[message(wit::Role::User, "Reply OK.")]));
    }
}
