//! The scopes (GitLab's unit primitives) that gate aigw's endpoints, by name, and what each
//! endpoint requires of a caller.

use std::borrow::Cow;

/// Code completion.
pub(crate) const COMPLETE_CODE: &str = "complete_code";
/// Code generation.
pub(crate) const GENERATE_CODE: &str = "generate_code";
/// Both code suggestion features, as older instances grant them.
pub(crate) const CODE_SUGGESTIONS: &str = "code_suggestions";
/// Duo Chat, every feature.
pub(crate) const DUO_CHAT: &str = "duo_chat";
/// Duo Chat's classic ReAct agent.
pub(crate) const DUO_CLASSIC_CHAT: &str = "duo_classic_chat";
/// Semantic code search's embeddings.
pub(crate) const GENERATE_EMBEDDINGS_CODEBASE: &str = "generate_embeddings_codebase";

/// What a caller must hold to use an endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Requirement {
    /// Scopes of which any one is enough.
    pub(crate) any_of: Cow<'static, [&'static str]>,
    /// Refused to the tokens this gateway issues for IDE direct access, as GitLab refuses them.
    pub(crate) instance_tokens_only: bool,
    /// The feature the 403 names: `Unauthorized to access <feature>`.
    pub(crate) feature: &'static str,
}

impl Requirement {
    const fn new(any_of: &'static [&'static str], instance_tokens_only: bool, feature: &'static str) -> Self {
        Requirement { any_of: Cow::Borrowed(any_of), instance_tokens_only, feature }
    }
}

/// `/v2/code/completions` and a v3/v4 `code_editor_completion`.
pub(crate) const CODE_COMPLETION: Requirement =
    Requirement::new(&[COMPLETE_CODE, CODE_SUGGESTIONS], false, "code suggestions");

/// `/v2/code/generations` and a v3/v4 `code_editor_generation`.
pub(crate) const CODE_GENERATION: Requirement =
    Requirement::new(&[GENERATE_CODE, CODE_SUGGESTIONS], true, "code generations");

/// `/v2/chat/agent`.
pub(crate) const CHAT_AGENT: Requirement = Requirement::new(&[DUO_CLASSIC_CHAT, DUO_CHAT], false, "duo chat");

/// `/v1/embeddings/code_embeddings*`: only GitLab itself indexes and searches, so only its
/// instance tokens.
pub(crate) const CODE_EMBEDDINGS: Requirement =
    Requirement::new(&[GENERATE_EMBEDDINGS_CODEBASE], true, "code embeddings");

/// `/v1/code/user_access_token`: an instance token with a completion scope, the only scopes a
/// minted token may carry.
pub(crate) const USER_ACCESS_TOKEN: Requirement =
    Requirement::new(&[COMPLETE_CODE, CODE_SUGGESTIONS], true, "user access token");

/// `/v1/chat/{invokable}`: Duo Chat, or the invokable's own scope.
pub(crate) fn one_shot_chat(invokable: &'static str) -> Requirement {
    Requirement { any_of: Cow::Owned(vec![DUO_CHAT, invokable]), instance_tokens_only: false, feature: "duo chat" }
}
