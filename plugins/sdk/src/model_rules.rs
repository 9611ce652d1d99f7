//! What today's models refuse, by model id, as GitLab's gateway learned it: Claude models from
//! 4.6 on refuse an assistant prefill, the newest Claude models refuse `temperature`, and the
//! GPT-5 family wants `max_completion_tokens`. Each plugin that can serve such a model applies
//! the rule where its wire format is built.

/// The text that leads a refused prefill once it is sent as the user's (GitLab's words, so the
/// model sees the same request through either gateway).
pub const PREFILL_AS_USER_PREFIX: &str = "[Previous assistant context]: ";

/// Claude models that still accept an assistant message as the last turn: 4.1 and 4.5 (Opus,
/// Sonnet, Haiku) and the legacy dated ones still offered for self-hosting. Anthropic removed
/// prefill from 4.6 on for good, so every other Claude model is taken to refuse it.
const PREFILL_ACCEPTED: [&str; 19] = [
    "opus-4-1",
    "opus_4_1",
    "opus-4.1",
    "opus_4.1",
    "opus-4-5",
    "opus_4_5",
    "opus-4.5",
    "opus_4.5",
    "sonnet-4-5",
    "sonnet_4_5",
    "sonnet-4.5",
    "sonnet_4.5",
    "haiku-4-5",
    "haiku_4_5",
    "haiku-4.5",
    "haiku_4.5",
    "sonnet-4-20250514",
    "3-haiku-20240307",
    "3-sonnet-20240229",
];

/// Claude models that answer 400 to any `temperature` (Opus 4.7 and 4.8, and the 5 family).
const TEMPERATURE_REFUSED: [&str; 16] = [
    "opus-4-7", "opus_4_7", "opus-4.7", "opus_4.7", "opus-4-8", "opus_4_8", "opus-4.8", "opus_4.8", "opus-5", "opus_5",
    "sonnet-5", "sonnet_5", "fable-5", "fable_5", "mythos-5", "mythos_5",
];

/// Whether `model` accepts a conversation that ends with an assistant turn: every model but the
/// Claude ones outside [`PREFILL_ACCEPTED`].
pub fn accepts_assistant_prefill(model: &str) -> bool {
    lowercase(model, |model| {
        !model.contains("claude") || PREFILL_ACCEPTED.iter().any(|accepted| model.contains(accepted))
    })
}

/// Whether `model` accepts `temperature`.
pub fn accepts_temperature(model: &str) -> bool {
    lowercase(model, |model| {
        // Every refusing model is an Opus, Sonnet, Fable or Mythos: one look for those first.
        let candidate = ["opus", "sonnet", "fable", "mythos"].iter().any(|name| model.contains(name));
        !(candidate && TEMPERATURE_REFUSED.iter().any(|refused| model.contains(refused)))
    })
}

/// Whether `model` is of the GPT-5 family, which takes its output limit as
/// `max_completion_tokens` (OpenAI refuses `max_tokens` for it; `gpt-5-chat` models still take
/// the old name).
pub fn wants_max_completion_tokens(model: &str) -> bool {
    lowercase(model, |model| model.contains("gpt-5") && !model.contains("gpt-5-chat"))
}

/// Call `check` with `model` in ASCII lower case, lowered on the stack for any usual id: these
/// rules run for every request a plugin builds.
fn lowercase<R>(model: &str, check: impl FnOnce(&str) -> R) -> R {
    let mut buffer = [0u8; 256];
    match buffer.get_mut(..model.len()) {
        Some(lowered) => {
            lowered.copy_from_slice(model.as_bytes());
            lowered.make_ascii_lowercase();
            // Lowering ASCII letters keeps UTF-8 valid.
            check(std::str::from_utf8(lowered).unwrap_or_default())
        }
        None => check(&model.to_ascii_lowercase()),
    }
}

/// A refused prefill's text as the user content that replaces it.
pub fn prefill_as_user(text: &str) -> String {
    format!("{PREFILL_AS_USER_PREFIX}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_from_4_6_refuses_prefill_and_every_other_model_takes_it() {
        for refuses in ["claude-sonnet-4-6", "anthropic/claude-opus-4-7", "us.anthropic.claude-sonnet-4-6-v1:0"] {
            assert!(!accepts_assistant_prefill(refuses), "{refuses}");
        }
        for accepts in [
            "claude-sonnet-4-5-20250929",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "Claude-Opus-4.1",
            "mistralai/Mistral-7B-Instruct-v0.3",
            "gpt-5",
        ] {
            assert!(accepts_assistant_prefill(accepts), "{accepts}");
        }
    }

    #[test]
    fn the_newest_claude_models_refuse_temperature() {
        assert!(!accepts_temperature("claude-opus-4-7"));
        assert!(!accepts_temperature("anthropic.claude-sonnet-5-v1:0"));
        assert!(accepts_temperature("claude-sonnet-4-6"));
        assert!(accepts_temperature("codestral-2508"));
    }

    #[test]
    fn gpt_5_takes_max_completion_tokens() {
        assert!(wants_max_completion_tokens("gpt-5"));
        assert!(wants_max_completion_tokens("openai/GPT-5.1-mini"));
        assert!(!wants_max_completion_tokens("gpt-5-chat-latest"));
        assert!(!wants_max_completion_tokens("gpt-4o"));
        assert!(!wants_max_completion_tokens("openai/gpt-oss-20b"));
    }
}
