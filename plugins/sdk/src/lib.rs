//! What every aigw provider plugin shares: the bindings of `wit/provider.wit`, the export macro,
//! error helpers and the OpenAI chat wire format several providers speak.
//!
//! A plugin keeps its translation in a plain-Rust module, unit-tested natively, with ten
//! functions (`info`, `build_request`, `parse_response`, `parse_event`,
//! `build_embeddings_request`, `parse_embeddings_response`, `answers`, `build_chat_request`,
//! `parse_chat_response`, `parse_chat_event`), and exports it with [`provider!`]:
//!
//! ```ignore
//! pub mod translate; // fn info() -> PluginInfo, fn build_request(&ModelRequest) -> …, …
//! aigw_plugin_sdk::provider!(translate);
//! ```
//!
//! A provider without an embeddings API answers [`no_embeddings`] from both embeddings functions.
//! A provider that carries text only serves `chat` through [`text_chat`]; one that speaks
//! OpenAI's Chat Completions uses [`openai_chat`].
//!
//! A plugin that needs more than delegation implements [`Guest`] itself and uses
//! [`export_provider!`].

#![allow(unsafe_code, reason = "wit-bindgen's generated ABI glue is unsafe code")]

pub mod model_rules;
pub mod openai;
pub mod openai_chat;
pub mod openai_embeddings;
pub mod text_chat;

/// The generated bindings. In a module of their own: the exported macros must not land next to
/// the generated `use` of the same name at the crate root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "provider",
        pub_export_macro: true,
        export_macro_name: "export_provider",
        default_bindings_module: "aigw_plugin_sdk::bindings",
    });
}

/// The WIT types, for plugins and for native callers (tests, benchmarks) that build inputs.
pub use bindings::aigw::plugin::types;
/// The chat interface's types and its `Guest` trait (0.4.0).
pub use bindings::exports::aigw::plugin::chat;
/// The embeddings interface's types and its `Guest` trait (0.3.0).
pub use bindings::exports::aigw::plugin::embeddings;
pub use bindings::{Guest, export_provider};

use types::{FinishReason, PluginError, StreamChunk};

/// Implement the `provider` world by delegating to a translation module and export it. The
/// module provides `info() -> PluginInfo`, `build_request(&ModelRequest)`,
/// `parse_response(&[u8])`, `parse_event(Option<&str>, &[u8])`,
/// `build_embeddings_request(&EmbeddingsRequest)`, `parse_embeddings_response(&[u8])`,
/// `answers() -> AnswerShape`, `build_chat_request(&ChatRequest)`, `parse_chat_response(&[u8])`
/// and `parse_chat_event(Option<&str>, &[u8])`.
#[macro_export]
macro_rules! provider {
    ($translate:ident) => {
        // Exported from Wasm builds only: interface exports have symbol names with `:` and `@`
        // (`aigw:plugin/embeddings@0.3.0#…`) that a native linker refuses, and a native build
        // (unit tests, benchmarks) uses the translation module directly.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct ExportedProvider;

            impl $crate::Guest for ExportedProvider {
                fn info() -> $crate::types::PluginInfo {
                    $translate::info()
                }

                fn build_request(
                    request: $crate::types::ModelRequest,
                ) -> Result<$crate::types::UpstreamRequest, $crate::types::PluginError> {
                    $translate::build_request(&request)
                }

                fn parse_response(body: Vec<u8>) -> Result<$crate::types::Completion, $crate::types::PluginError> {
                    $translate::parse_response(&body)
                }

                fn parse_event(
                    event: Option<String>,
                    data: Vec<u8>,
                ) -> Result<$crate::types::StreamChunk, $crate::types::PluginError> {
                    $translate::parse_event(event.as_deref(), &data)
                }
            }

            impl $crate::embeddings::Guest for ExportedProvider {
                fn build_embeddings_request(
                    request: $crate::embeddings::EmbeddingsRequest,
                ) -> Result<$crate::types::UpstreamRequest, $crate::types::PluginError> {
                    $translate::build_embeddings_request(&request)
                }

                fn parse_embeddings_response(
                    body: Vec<u8>,
                ) -> Result<$crate::embeddings::EmbeddingsResult, $crate::types::PluginError> {
                    $translate::parse_embeddings_response(&body)
                }
            }

            impl $crate::chat::Guest for ExportedProvider {
                fn answers() -> $crate::chat::AnswerShape {
                    $translate::answers()
                }

                fn build_chat_request(
                    request: $crate::chat::ChatRequest,
                ) -> Result<$crate::types::UpstreamRequest, $crate::types::PluginError> {
                    $translate::build_chat_request(&request)
                }

                fn parse_chat_response(
                    body: Vec<u8>,
                ) -> Result<$crate::chat::ChatCompletion, $crate::types::PluginError> {
                    $translate::parse_chat_response(&body)
                }

                fn parse_chat_event(
                    event: Option<String>,
                    data: Vec<u8>,
                ) -> Result<$crate::chat::ChatChunk, $crate::types::PluginError> {
                    $translate::parse_chat_event(event.as_deref(), &data)
                }
            }

            $crate::export_provider!(ExportedProvider);
        };
    };
}

/// The answer of a plugin whose provider has no embeddings API: `api` names it.
pub fn no_embeddings(api: &str) -> PluginError {
    PluginError::Unsupported(format!("{api} has no embeddings API; serve embeddings with another provider"))
}

/// A plugin's identity: pass `env!("CARGO_PKG_NAME")` and `env!("CARGO_PKG_VERSION")`.
pub fn plugin_info(
    name: &str,
    version: &str,
    providers: &[&str],
    framing: types::Framing,
    default_endpoint: Option<&str>,
) -> types::PluginInfo {
    types::PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        providers: providers.iter().map(|p| p.to_string()).collect(),
        framing,
        default_endpoint: default_endpoint.map(str::to_string),
    }
}

/// The model server's answer could not be understood.
pub fn malformed(what: impl std::fmt::Display) -> PluginError {
    PluginError::MalformedResponse(what.to_string())
}

/// The canonical request cannot be expressed for this provider.
pub fn invalid(what: impl std::fmt::Display) -> PluginError {
    PluginError::InvalidInput(what.to_string())
}

/// The provider does not support what was asked.
pub fn unsupported(what: impl std::fmt::Display) -> PluginError {
    PluginError::Unsupported(what.to_string())
}

/// Encode a request body as JSON.
pub fn to_json(body: &impl serde::Serialize) -> Result<Vec<u8>, PluginError> {
    serde_json::to_vec(body).map_err(|e| invalid(format!("cannot encode the request: {e}")))
}

/// A stream event that carries nothing (keep-alives, bookkeeping events).
pub fn empty_chunk() -> StreamChunk {
    StreamChunk { text: String::new(), finish_reason: None, usage: None, done: false }
}

/// A stream event that ends the stream.
pub fn done_chunk() -> StreamChunk {
    StreamChunk { done: true, ..empty_chunk() }
}

/// Map a provider's stop reason: `stop_words` mean a natural stop, `length_words` the token
/// limit, anything else is passed on verbatim.
pub fn finish_reason(reason: &str, stop_words: &[&str], length_words: &[&str]) -> FinishReason {
    if stop_words.contains(&reason) {
        FinishReason::Stop
    } else if length_words.contains(&reason) {
        FinishReason::Length
    } else {
        FinishReason::Other(reason.to_string())
    }
}

/// A conversation split the way APIs with a separate system prompt want it (Anthropic Messages,
/// Bedrock Converse).
#[derive(Debug)]
pub struct SystemAndTurns<'a> {
    /// The system messages' texts, in order.
    pub system: Vec<&'a str>,
    /// The user and assistant turns (role name, text), in order, starting with the user.
    pub turns: Vec<(&'static str, &'a str)>,
}

/// Split `messages` into system texts and turns; the turns must start with the user. `api` names
/// the API in the error.
pub fn system_and_turns<'a>(messages: &'a [types::Message], api: &str) -> Result<SystemAndTurns<'a>, PluginError> {
    let mut system = Vec::new();
    let mut turns = Vec::with_capacity(messages.len());
    for message in messages {
        match message.role {
            types::Role::System => system.push(message.content.as_str()),
            role => turns.push((role_name(role), message.content.as_str())),
        }
    }
    if turns.first().is_none_or(|(role, _)| *role != "user") {
        return Err(invalid(format!("the {api} needs a conversation that starts with the user")));
    }
    Ok(SystemAndTurns { system, turns })
}

/// The role name most chat APIs use.
pub fn role_name(role: types::Role) -> &'static str {
    match role {
        types::Role::System => "system",
        types::Role::User => "user",
        types::Role::Assistant => "assistant",
    }
}
