//! The prompt registry: versioned prompt files (Jinja templates plus parameters) per model family,
//! rendered by the host into the canonical model request's messages and sampling.

mod family;
mod gitlab;
mod tokens;
mod trim;
mod version;

pub(crate) use family::{FAMILIES_FILE, Families};
pub(crate) use trim::{FittedCode, fit_conversation};
pub(crate) use version::{Constraint, Version, parse_version};

use crate::plugins::wit;
use serde::Deserialize;
use std::collections::HashMap;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_prompts.rs"));
}

/// Prompt registry failures.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// A prompt file is malformed (start-up or reload).
    #[error("prompt file {file}: {problem}")]
    BadFile {
        /// The file, relative to the prompts root.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The family is not one the registry lists.
    #[error("model family '{family}' is not supported for {task}; supported: {supported}")]
    UnsupportedFamily {
        /// What was asked.
        family: String,
        /// The task.
        task: &'static str,
        /// The families the registry lists, comma-separated.
        supported: String,
    },
    /// No prompt with this id.
    #[error("Failed to load prompt definition for '{0}': no such prompt in the registry")]
    NotFound(String),
    /// A version constraint is malformed or matches nothing.
    #[error("{0}")]
    BadVersion(String),
    /// Rendering failed (a missing variable, for instance).
    #[error("prompt '{id}' could not be rendered: {problem}")]
    Render {
        /// The prompt id.
        id: String,
        /// What went wrong.
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile {
    /// What answers that used the prompt name as their model (`model.name`, as GitLab's
    /// registry names its prompts); the id when not given. Never inherited.
    name: Option<String>,
    /// For the file's readers; parsed (so that its type is checked), never used.
    #[serde(default)]
    #[expect(dead_code, reason = "documentation inside the data file")]
    description: String,
    /// A prompt id whose highest stable version supplies what this file leaves out: messages,
    /// each sampling parameter, the budget, the unit primitive. A family's file then says only
    /// how that family differs from `base`.
    extends: Option<String>,
    /// Scope(s) a caller needs to use the prompt through `/v*/prompts`: one, or a list of which
    /// any one will do. A prompt with none is refused by id unless it is `open`.
    unit_primitive: Option<Scopes>,
    /// Any authenticated caller may use it by id (GitLab's "Test connection" prompt only). Never
    /// inherited: a prompt is opened by its own file or not at all.
    #[serde(default)]
    open: bool,
    /// Whether tokens this gateway issued for IDE direct access may use it by id (default yes;
    /// generation prompts say no, as `/v2/code/generations` refuses those tokens).
    gateway_tokens: Option<bool>,
    /// Whether aigw's content guard (`common/content_guard`) goes in front of the first system
    /// message, as GitLab puts its tool-output security block in front of its prompts'
    /// (default yes; inherited). The ReAct prompt says no, as GitLab's has no block either.
    guard: Option<bool>,
    #[serde(default)]
    params: ParamsFile,
    budget: Option<Budget>,
    #[serde(default)]
    messages: Vec<MessageFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scopes {
    One(String),
    AnyOf(Vec<String>),
}

impl From<Scopes> for Vec<String> {
    fn from(scopes: Scopes) -> Self {
        match scopes {
            Scopes::One(scope) => vec![scope],
            Scopes::AnyOf(scopes) => scopes,
        }
    }
}

/// Sampling parameters as a file states them: each one optional, so that an extending file can
/// override one and inherit the rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamsFile {
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    top_p: Option<f32>,
    stop: Option<Vec<String>>,
    /// Parameters not to inherit, so that the family's default (or, without one, the model
    /// server's) applies: GitLab's `gpt` prompts send no temperature where `base` sets one.
    #[serde(default)]
    unset: Vec<ParamName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ParamName {
    Temperature,
    MaxTokens,
    TopP,
}

impl ParamsFile {
    fn over(self, inherited: &Params) -> Params {
        let kept = |name: ParamName| !self.unset.contains(&name);
        Params {
            temperature: self.temperature.or(inherited.temperature.filter(|_| kept(ParamName::Temperature))),
            max_tokens: self.max_tokens.or(inherited.max_tokens.filter(|_| kept(ParamName::MaxTokens))),
            top_p: self.top_p.or(inherited.top_p.filter(|_| kept(ParamName::TopP))),
            stop: self.stop.unwrap_or_else(|| inherited.stop.clone()),
        }
    }
}

/// Default sampling parameters of a prompt.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    /// Sampling temperature.
    pub(crate) temperature: Option<f32>,
    /// Token limit of the answer.
    pub(crate) max_tokens: Option<u32>,
    /// Nucleus sampling.
    pub(crate) top_p: Option<f32>,
    /// Stop sequences.
    pub(crate) stop: Vec<String>,
}

impl Params {
    /// These parameters, with `defaults`' for those they leave unset; the stop sequences are
    /// always these.
    fn or(&self, defaults: &Params) -> Params {
        Params {
            temperature: self.temperature.or(defaults.temperature),
            max_tokens: self.max_tokens.or(defaults.max_tokens),
            top_p: self.top_p.or(defaults.top_p),
            stop: self.stop.clone(),
        }
    }

    /// As the canonical model request carries them.
    fn sampling(&self) -> wit::Sampling {
        wit::Sampling {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: self.stop.clone(),
        }
    }
}

/// How the caller's code shares a code prompt's token budget.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Budget {
    /// At most this many tokens of code, below what the family's context window leaves.
    pub(crate) max_prompt_tokens: Option<usize>,
    /// Share of the budget reserved for the suffix (0.0–1.0).
    pub(crate) suffix_share: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageFile {
    role: RoleName,
    content: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    System,
    User,
    Assistant,
}

impl From<RoleName> for wit::Role {
    fn from(role: RoleName) -> Self {
        match role {
            RoleName::System => wit::Role::System,
            RoleName::User => wit::Role::User,
            RoleName::Assistant => wit::Role::Assistant,
        }
    }
}

/// One version of one prompt.
#[derive(Debug)]
pub struct Prompt {
    /// Id, e.g. `code_completions/codestral`.
    pub(crate) id: String,
    /// Display name, which answers give as `model.name`.
    pub(crate) name: String,
    /// Version.
    pub(crate) version: Version,
    /// Scopes of which a caller needs one to call it by id; empty: nobody, unless `open`.
    pub(crate) unit_primitives: Vec<String>,
    /// Any authenticated caller may call it by id.
    pub(crate) open: bool,
    /// Tokens this gateway issued may call it by id.
    pub(crate) gateway_tokens: bool,
    /// Default sampling.
    pub(crate) params: Params,
    /// Context budget, for code prompts.
    pub(crate) budget: Option<Budget>,
    /// (role, template name in the environment) per message.
    messages: Vec<(wit::Role, String)>,
    /// Whether a content guard goes in front of its first system message when it is rendered:
    /// GitLab's security block for GitLab's prompts, aigw's `common/content_guard` for the others.
    pub(crate) guarded: bool,
    /// Where the prompt came from, which decides how it is rendered.
    pub(crate) origin: Origin,
    /// How many tokens its own text is (its templates and guard), counted the first time a
    /// budget needs it.
    template_tokens: std::sync::OnceLock<usize>,
}

/// Where a prompt came from.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// aigw's own prompts, built into the binary.
    BuiltIn,
    /// The operator's `AIGW_PROMPTS__DIR`.
    Operator,
    /// GitLab's registry (`AIGW_PROMPTS__GITLAB_DIR`), rendered as GitLab's gateway renders it.
    Gitlab {
        /// The variables a call must supply (LangChain refuses a call without one of them).
        required: Vec<String>,
        /// Why aigw cannot render it, if it cannot (a role it does not support).
        unsupported: Option<String>,
    },
}

impl Prompt {
    /// Whether it is one of GitLab's (`AIGW_PROMPTS__GITLAB_DIR`).
    pub(crate) fn is_gitlab(&self) -> bool {
        matches!(self.origin, Origin::Gitlab { .. })
    }

    /// The prompt's sampling defaults as the canonical model request carries them.
    pub(crate) fn sampling(&self) -> wit::Sampling {
        self.params.sampling()
    }
}

/// Load GitLab's registry from `models.yml`'s text and its definitions' texts, as
/// `AIGW_PROMPTS__GITLAB_DIR` would be loaded (for the fuzz targets, which have no directory).
pub(crate) fn load_gitlab_texts(models_yml: &str, files: &[(String, String)]) -> Result<(), PromptError> {
    gitlab::GitlabPrompts::from_texts(models_yml, files).map(drop)
}

/// All prompts, every version, with their compiled templates, and the model families.
pub struct PromptRegistry {
    env: minijinja::Environment<'static>,
    prompts: HashMap<String, Vec<Prompt>>,
    families: Families,
    /// GitLab's registry, when the operator named it.
    gitlab: Option<gitlab::GitlabPrompts>,
}

/// Where the prompts come from, besides the built-in ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PromptSources {
    /// The operator's own prompt files (`AIGW_PROMPTS__DIR`); they win over every other source.
    pub(crate) dir: Option<std::path::PathBuf>,
    /// GitLab's `definitions` directory (`AIGW_PROMPTS__GITLAB_DIR`); it wins over the built-in
    /// prompts for every prompt id it has.
    pub(crate) gitlab_dir: Option<std::path::PathBuf>,
}

/// The prompt whose text is aigw's content guard (rendered with `suffix`), which goes in front
/// of the first system message of every prompt that does not say `guard = false`.
const CONTENT_GUARD: &str = "common/content_guard";

/// GitLab's id of the prompt for each of aigw's code prompt ids.
const GITLAB_IDS: [(&str, &str); 2] =
    [("code_completions", "code_suggestions/completions"), ("code_generations", "code_suggestions/generations")];

impl std::fmt::Debug for PromptRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let families: Vec<&str> = self.families.names().collect();
        f.debug_struct("PromptRegistry")
            .field("prompts", &self.prompts.len())
            .field("families", &families)
            .field("gitlab", &self.gitlab)
            .finish()
    }
}

/// A parsed file waiting to become a [`Prompt`].
struct Pending {
    path: String,
    origin: Origin,
    id: String,
    version: Version,
    file: PromptFile,
}

impl PromptRegistry {
    /// The prompts built into the binary.
    pub fn embedded() -> Result<Self, PromptError> {
        Self::load(&PromptSources::default())
    }

    /// The built-in prompts, the operator's `*.toml` files under `sources.dir` (a file with the
    /// same id and version as a built-in one replaces it, and a `families.toml` adds its
    /// families), and GitLab's registry under `sources.gitlab_dir`.
    pub(crate) fn load(sources: &PromptSources) -> Result<Self, PromptError> {
        let mut files: Vec<(String, String, Origin)> = embedded::EMBEDDED
            .iter()
            .map(|(path, text)| (path.to_string(), text.to_string(), Origin::BuiltIn))
            .collect();
        if let Some(dir) = &sources.dir {
            files.extend(operator_files(dir)?.into_iter().map(|(path, text)| (path, text, Origin::Operator)));
        }
        let mut registry = Self::from_sources(files)?;
        if let Some(dir) = &sources.gitlab_dir {
            registry.gitlab = Some(gitlab::GitlabPrompts::load(dir)?);
        }
        Ok(registry)
    }

    /// Build a registry from `(relative path, contents)` pairs: `<id>/<version>.toml` prompt
    /// files (a later pair with the same path replaces an earlier one) and `families.toml`
    /// family lists (each adds to those before it).
    pub(crate) fn from_files(files: impl IntoIterator<Item = (String, String)>) -> Result<Self, PromptError> {
        Self::from_sources(files.into_iter().map(|(path, text)| (path, text, Origin::BuiltIn)))
    }

    /// [`PromptRegistry::from_files`], each file with where it came from.
    fn from_sources(files: impl IntoIterator<Item = (String, String, Origin)>) -> Result<Self, PromptError> {
        let mut families = Families::default();
        let mut prompt_files = std::collections::BTreeMap::new();
        for (path, text, origin) in files {
            if path == FAMILIES_FILE {
                families.merge(&text).map_err(|problem| PromptError::BadFile { file: path.clone(), problem })?;
            } else {
                prompt_files.insert(path, (text, origin));
            }
        }
        let mut parsed = Vec::new();
        for (path, (text, origin)) in prompt_files {
            let bad = |problem: String| PromptError::BadFile { file: path.clone(), problem };
            let normalized = path.replace('\\', "/");
            let (id, file_name) =
                normalized.rsplit_once('/').ok_or_else(|| bad("expected <prompt id>/<version>.toml".into()))?;
            let version = parse_version(file_name.trim_end_matches(".toml")).map_err(bad)?;
            let file: PromptFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
            if file.extends.is_none() && file.messages.is_empty() {
                return Err(bad(
                    "a prompt needs at least one message, or `extends` naming a prompt that has them".into()
                ));
            }
            parsed.push(Pending { id: id.to_string(), version, file, path, origin });
        }
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let mut registry = PromptRegistry { env, prompts: HashMap::new(), families, gitlab: None };
        // Bases first, so that every extending file finds the finished prompt it builds on.
        let (extending, bases): (Vec<_>, Vec<_>) = parsed.into_iter().partition(|p| p.file.extends.is_some());
        let extending_ids: std::collections::HashSet<&str> = extending.iter().map(|p| p.id.as_str()).collect();
        if let Some(chained) =
            extending.iter().find(|p| p.file.extends.as_deref().is_some_and(|e| extending_ids.contains(e)))
        {
            return Err(PromptError::BadFile {
                file: chained.path.clone(),
                problem: format!(
                    "extends '{}', which extends another prompt itself; extend a prompt that stands alone",
                    chained.file.extends.as_deref().unwrap_or_default()
                ),
            });
        }
        for pending in bases.into_iter().chain(extending) {
            let prompt = registry.build(pending)?;
            registry.prompts.entry(prompt.id.clone()).or_default().push(prompt);
        }
        for versions in registry.prompts.values_mut() {
            versions.sort_by(|a, b| a.version.cmp(&b.version));
        }
        let mut closed: Vec<&str> = registry
            .prompts
            .iter()
            .filter(|(id, versions)| {
                id.as_str() != CONTENT_GUARD && versions.iter().any(|p| !p.open && p.unit_primitives.is_empty())
            })
            .map(|(id, _)| id.as_str())
            .collect();
        if !closed.is_empty() {
            closed.sort_unstable();
            tracing::warn!(
                prompts = %closed.join(","),
                "prompts without unit_primitive (and not open) are refused when called by id"
            );
        }
        Ok(registry)
    }

    /// Compile one file's templates and settle what it inherits.
    fn build(&mut self, pending: Pending) -> Result<Prompt, PromptError> {
        let Pending { path, id, version, file, origin } = pending;
        let bad = |problem: String| PromptError::BadFile { file: path.clone(), problem };
        let parent = match &file.extends {
            None => None,
            Some(parent_id) => {
                let parent = self
                    .latest(parent_id)
                    .map_err(|_| bad(format!("extends '{parent_id}', which has no stable version")))?;
                Some(parent)
            }
        };
        let params = file.params.over(parent.map(|p| &p.params).unwrap_or(&Params::default()));
        let budget = file.budget.or(parent.and_then(|p| p.budget));
        let unit_primitives = match file.unit_primitive {
            Some(scopes) => scopes.into(),
            None => parent.map(|p| p.unit_primitives.clone()).unwrap_or_default(),
        };
        if file.open && !unit_primitives.is_empty() {
            return Err(
                bad("`open` and `unit_primitive` exclude each other: a prompt is open to all, or gated".into()),
            );
        }
        let gateway_tokens = file.gateway_tokens.or(parent.map(|p| p.gateway_tokens)).unwrap_or(true);
        let guarded = file.guard.or(parent.map(|p| p.guarded)).unwrap_or(true) && id != CONTENT_GUARD;
        let inherited_messages = parent.map(|p| p.messages.clone()).unwrap_or_default();
        let mut messages = Vec::with_capacity(file.messages.len());
        for (index, message) in file.messages.into_iter().enumerate() {
            let name = format!("{id}@{version}#{index}");
            self.env.add_template_owned(name.clone(), message.content).map_err(|e| bad(e.to_string()))?;
            messages.push((message.role.into(), name));
        }
        if messages.is_empty() {
            messages = inherited_messages;
        }
        let name = file.name.unwrap_or_else(|| id.clone());
        Ok(Prompt {
            id,
            name,
            version,
            unit_primitives,
            open: file.open,
            gateway_tokens,
            params,
            budget,
            messages,
            guarded,
            origin,
            template_tokens: std::sync::OnceLock::new(),
        })
    }

    /// Highest stable version of prompt `id`.
    pub(crate) fn latest(&self, id: &str) -> Result<&Prompt, PromptError> {
        self.matching(id, None)
    }

    /// The highest version of `id` matching `constraint` (`^1.2.0`, `~1.2.0`, `1.2.0`,
    /// `1.3.0-dev`, `*`; `None` means the highest stable). A malformed constraint, or one that
    /// matches nothing, is a `BadVersion` (400).
    pub(crate) fn matching(&self, id: &str, constraint: Option<&str>) -> Result<&Prompt, PromptError> {
        let versions = self.prompts.get(id).ok_or_else(|| PromptError::NotFound(id.to_string()))?;
        pick_version(versions, constraint)
    }

    /// Prompt `id` for model `family`. The operator's own files win, then GitLab's registry for
    /// an id it has, then the built-in prompts. Among the operator's and the built-in ones the
    /// lookup is `<id>/<family>`, else `<id>/base`, else `<id>` itself; in GitLab's, GitLab's
    /// own rule (the family list of `models.yml`, then `base`). Then the version `constraint`
    /// picks among the folder's versions.
    pub(crate) fn for_family(&self, id: &str, family: &str, constraint: Option<&str>) -> Result<&Prompt, PromptError> {
        // GitLab's ids of the code prompts (`code_suggestions/generations`, which Rails sends
        // as `prompt_id`) are also served by aigw's own code prompts of the same family: the
        // versions an operator put under GitLab's id join those of aigw's prompt.
        let own_id = GITLAB_IDS.iter().find(|(_, theirs)| *theirs == id).map_or(id, |(ours, _)| ours);
        let mut folders: Vec<&str> =
            [self.own_folder(id, family), self.own_folder(own_id, family)].into_iter().flatten().collect();
        folders.dedup();
        // The versions of both folders together, the one under the id asked for first.
        let own = || match folders.as_slice() {
            [] => Err(PromptError::NotFound(id.to_string())),
            _ => pick_version(folders.iter().flat_map(|folder| &self.prompts[*folder]), constraint),
        };
        let operators = |folder: &&str| self.prompts[*folder].iter().any(|p| matches!(p.origin, Origin::Operator));
        if folders.iter().any(operators) {
            return own();
        }
        let gitlab_id = GITLAB_IDS.iter().find(|(ours, _)| *ours == id).map_or(id, |(_, theirs)| theirs);
        if let Some(gitlab) = self.gitlab.as_ref().filter(|gitlab| gitlab.has(gitlab_id)) {
            return gitlab.select(gitlab_id, family, constraint);
        }
        own()
    }

    /// Which of aigw's (built-in or operator) folders serves `id` for `family`: the family's
    /// own, then those it falls back to, then `base`, then `id` itself.
    fn own_folder(&self, id: &str, family: &str) -> Option<&str> {
        let fallbacks = self.families.get(family).map(|f| f.falls_back_to.as_slice()).unwrap_or_default();
        std::iter::once(family)
            .chain(fallbacks.iter().map(String::as_str))
            .chain(["base"])
            .map(|folder| format!("{id}/{folder}"))
            .chain([id.to_string()])
            .find_map(|c| self.prompts.get_key_value(&c).map(|(key, _)| key.as_str()))
    }

    /// The code completion prompt for `family`: its own, else `code_completions/base` (GitLab's
    /// `code_suggestions/completions` when its registry is loaded).
    pub fn code_completion(&self, family: &str) -> Result<&Prompt, PromptError> {
        self.code_prompt("code_completions", "code completion", family)
    }

    /// The code generation prompt for `family`: its own, else `code_generations/base` (GitLab's
    /// `code_suggestions/generations` when its registry is loaded).
    pub(crate) fn code_generation(&self, family: &str) -> Result<&Prompt, PromptError> {
        self.code_prompt("code_generations", "code generation", family)
    }

    /// The code generation prompt of aigw's own (or the operator's) for `family`, never
    /// GitLab's: for the legacy v2 forms, whose prompts GitLab's gateway builds in code.
    pub(crate) fn own_code_generation(&self, family: &str) -> Result<&Prompt, PromptError> {
        self.check_code_family(family, "code generation")?;
        let id = "code_generations";
        let found = self.own_folder(id, family).ok_or_else(|| PromptError::NotFound(id.to_string()))?;
        self.matching(found, None)
    }

    /// Code endpoints accept only the listed families (GitLab answers 422 for others).
    fn code_prompt(&self, id: &str, task: &'static str, family: &str) -> Result<&Prompt, PromptError> {
        self.check_code_family(family, task)?;
        self.for_family(id, family, None)
    }

    fn check_code_family(&self, family: &str, task: &'static str) -> Result<(), PromptError> {
        if self.families.get(family).is_none() {
            let supported = self.families.names().collect::<Vec<_>>().join(", ");
            return Err(PromptError::UnsupportedFamily { family: family.to_string(), task, supported });
        }
        Ok(())
    }

    /// The model families, from the registry's `families.toml` files.
    pub(crate) fn families(&self) -> &Families {
        &self.families
    }

    /// The prompt ids GitLab's registry serves, when it is loaded.
    pub(crate) fn gitlab_ids(&self) -> Option<Vec<&str>> {
        self.gitlab.as_ref().map(|gitlab| gitlab.ids().collect())
    }

    /// The sampling a call of `prompt` for model `family` carries: the prompt's own over the
    /// family's defaults (for one of GitLab's, the file's `model.params` over the `models.yml`
    /// entry's; for aigw's, over `families.toml`'s), and the prompt's stop sequences.
    /// Parameters neither sets are not sent, as in GitLab's gateway.
    pub(crate) fn sampling(&self, prompt: &Prompt, family: &str) -> wit::Sampling {
        let defaults = match (&prompt.origin, &self.gitlab) {
            (Origin::Gitlab { .. }, Some(gitlab)) => gitlab.model_params(family),
            (Origin::Gitlab { .. }, None) => None,
            _ => self.families.get(family).map(|f| &f.params),
        };
        match defaults {
            Some(defaults) => prompt.params.or(defaults).sampling(),
            None => prompt.sampling(),
        }
    }

    /// The caller's code for a call of `prompt` for `family`, cut to the tokens it may take:
    /// the family's context window less the answer's `max_tokens` and the prompt's own text
    /// (templates and guard), and no more than the prompt's `max_prompt_tokens` (see
    /// [`trim::fit_code`] for how prefix, suffix and context share them). GitLab's gateway gives
    /// the caller's code the whole window; a model server refuses a prompt that leaves no room
    /// for the answer (vLLM: 400, "maximum context length").
    pub(crate) fn fit_code<'a>(
        &self,
        prompt: &Prompt,
        family: &str,
        sampling: &wit::Sampling,
        (prefix, suffix, context): (&'a str, &'a str, &'a str),
        suffix_share: f32,
    ) -> FittedCode<'a> {
        let room = self.conversation_budget(family, sampling);
        let cap = prompt.budget.and_then(|b| b.max_prompt_tokens).unwrap_or(usize::MAX);
        // A token is at least one byte, so code and templates that fit in bytes fit in tokens:
        // most requests are never counted, and the vocabulary (about 30 MiB) is loaded only
        // once one must be.
        let own_bytes = self.template_bytes(prompt);
        if prefix.len() + suffix.len() + context.len() + own_bytes <= room.min(cap) {
            return FittedCode { prefix, suffix, context };
        }
        let own = *prompt.template_tokens.get_or_init(|| self.template_tokens(prompt));
        let budget = room.saturating_sub(own).min(cap);
        trim::fit_code(prefix, suffix, context, budget, suffix_share)
    }

    /// The bytes of `prompt`'s templates as written and of its guard's.
    fn template_bytes(&self, prompt: &Prompt) -> usize {
        self.template_sizes(prompt, &|source| source.len())
    }

    /// The tokens of `prompt`'s templates as written (the tags count too, which errs on the
    /// safe side) and of its guard's.
    fn template_tokens(&self, prompt: &Prompt) -> usize {
        self.template_sizes(prompt, &tokens::count)
    }

    /// `size` summed over `prompt`'s templates and its guard's.
    fn template_sizes(&self, prompt: &Prompt, size: &dyn Fn(&str) -> usize) -> usize {
        let env = self.env_of(prompt);
        let of = |name: &str| env.get_template(name).map_or(0, |t| size(t.source()));
        let own: usize = prompt.messages.iter().map(|(_, name)| of(name)).sum();
        let guard = match (&prompt.origin, &self.gitlab) {
            _ if !prompt.guarded => 0,
            (Origin::Gitlab { .. }, Some(gitlab)) => gitlab.security_block_size(size),
            (Origin::Gitlab { .. }, None) => 0,
            _ => self.latest(CONTENT_GUARD).map_or(0, |guard| self.template_sizes(guard, size)),
        };
        own + guard
    }

    /// The tokens a whole prompt for `family` may take: its context window less the answer's
    /// `max_tokens`, but never less than half the window (GitLab's ReAct prompt asks 8,192
    /// tokens of answer, more than CodeGemma's whole window: a prompt cut to nothing would be no
    /// better than one the server refuses).
    pub(crate) fn conversation_budget(&self, family: &str, sampling: &wit::Sampling) -> usize {
        let window = self.families.context_tokens(family);
        window - (sampling.max_tokens.unwrap_or(0) as usize).min(window / 2)
    }

    /// Render a prompt's messages with `variables`. One of GitLab's prompts is rendered as
    /// GitLab's gateway renders it: a missing variable is refused, and the security block (with
    /// a new suffix) goes in front of the first system message.
    pub fn render(&self, prompt: &Prompt, variables: &minijinja::Value) -> Result<Vec<wit::Message>, PromptError> {
        self.render_in(prompt, variables, None)
    }

    /// [`PromptRegistry::render`], with the content guard's tags the same for every request of
    /// `scope` (a file a user is typing in): the prompt then starts with the same text at every
    /// keystroke, which a model server's prefix cache can reuse. The tags stay unknowable to
    /// whoever wrote the material (a keyed hash of the scope under a secret drawn at start) and
    /// differ between users and files.
    pub(crate) fn render_in(
        &self,
        prompt: &Prompt,
        variables: &minijinja::Value,
        scope: Option<u64>,
    ) -> Result<Vec<wit::Message>, PromptError> {
        let render_error = |e: minijinja::Error| PromptError::Render { id: prompt.id.clone(), problem: e.to_string() };
        if let Origin::Gitlab { required, unsupported } = &prompt.origin {
            if let Some(problem) = unsupported {
                return Err(PromptError::Render { id: prompt.id.clone(), problem: problem.clone() });
            }
            let missing: Vec<String> = required
                .iter()
                .filter(|name| variables.get_attr(name).map_or(true, |value| value.is_undefined()))
                .map(|name| format!("'{name}'"))
                .collect();
            if !missing.is_empty() {
                let problem = format!("missing variables {{{}}}", missing.join(", "));
                return Err(PromptError::Render { id: prompt.id.clone(), problem });
            }
        }
        let env = self.env_of(prompt);
        let mut messages = prompt
            .messages
            .iter()
            .map(|(role, name)| {
                let template = env.get_template(name).map_err(render_error)?;
                Ok(wit::Message { role: *role, content: template.render(variables).map_err(render_error)? })
            })
            .collect::<Result<Vec<_>, PromptError>>()?;
        if prompt.guarded
            && let Some(system) = messages.iter_mut().find(|m| matches!(m.role, wit::Role::System))
            && let Some(guard) = self.guard_for(prompt, scope).map_err(render_error)?
        {
            system.content = format!("{guard}\n\n{}", system.content);
        }
        Ok(messages)
    }

    /// The content guard for one call of `prompt`, with a fresh random suffix in its tags (so
    /// that text passed through cannot close them): GitLab's security block for GitLab's
    /// prompts, aigw's `common/content_guard` for the others; `None` when there is none.
    fn guard_for(&self, prompt: &Prompt, scope: Option<u64>) -> Result<Option<String>, minijinja::Error> {
        let suffix = format!("{:016x}", scope.map_or_else(rand::random::<u64>, guard_suffix));
        match (&prompt.origin, &self.gitlab) {
            (Origin::Gitlab { .. }, Some(gitlab)) => gitlab.security_block(&suffix).map(Some),
            (Origin::Gitlab { .. }, None) => Ok(None),
            _ => {
                let Some((_, template)) = self.latest(CONTENT_GUARD).ok().and_then(|guard| guard.messages.first())
                else {
                    return Ok(None);
                };
                self.env.get_template(template)?.render(minijinja::context! { suffix => suffix }).map(Some)
            }
        }
    }

    /// The Jinja environment `prompt`'s templates live in: GitLab's for GitLab's prompts.
    fn env_of(&self, prompt: &Prompt) -> &minijinja::Environment<'static> {
        match (&prompt.origin, &self.gitlab) {
            (Origin::Gitlab { .. }, Some(gitlab)) => gitlab.env(),
            _ => &self.env,
        }
    }

    /// Render the template `prompt` has for `role` alone (the first, if it has several), or
    /// `None` when it has none: for prompts that are rendered a turn at a time, as GitLab's
    /// ReAct prompt is. No security block, and no check of the variables (GitLab renders these
    /// templates directly, without LangChain).
    pub(crate) fn render_role(
        &self,
        prompt: &Prompt,
        role: wit::Role,
        variables: &minijinja::Value,
    ) -> Result<Option<String>, PromptError> {
        let render_error = |e: minijinja::Error| PromptError::Render { id: prompt.id.clone(), problem: e.to_string() };
        let env = self.env_of(prompt);
        let Some((_, name)) = prompt.messages.iter().find(|(r, _)| *r == role) else {
            return Ok(None);
        };
        let template = env.get_template(name).map_err(render_error)?;
        template.render(variables).map(Some).map_err(render_error)
    }
}

/// The highest of `versions` (sorted, lowest first) matching `constraint`; GitLab's texts for
/// the two ways that fails, which Rails passes on: the query, and the versions there are as a
/// Python list.
fn pick_version<'a, I>(versions: I, constraint: Option<&str>) -> Result<&'a Prompt, PromptError>
where
    I: IntoIterator<Item = &'a Prompt>,
    I::IntoIter: Clone,
{
    let versions = versions.into_iter();
    let available = || {
        let mut names: Vec<String> = versions.clone().map(|p| format!("'{}'", p.version)).collect();
        names.sort();
        names.dedup();
        format!("[{}]", names.join(", "))
    };
    let text = constraint.unwrap_or("*");
    let constraint = Constraint::parse(text).ok_or_else(|| {
        PromptError::BadVersion(format!(
            "Version '{text}' is not a valid PEP 440 constraint and no exact match found (available: {})",
            available()
        ))
    })?;
    // The first of equal versions wins: callers list the folder that takes precedence first.
    versions
        .clone()
        .filter(|p| constraint.matches(&p.version))
        .reduce(|best, p| if p.version > best.version { p } else { best })
        .ok_or_else(|| PromptError::BadVersion(format!("No version matching '{text}' (available: {})", available())))
}

/// The operator's `*.toml` files under `dir`, as (path relative to `dir`, contents).
fn operator_files(dir: &std::path::Path) -> Result<Vec<(String, String)>, PromptError> {
    walk(dir)?
        .into_iter()
        .filter(|(_, path)| path.extension().is_some_and(|e| e == "toml"))
        .map(|(relative, path)| {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| PromptError::BadFile { file: relative.clone(), problem: e.to_string() })?;
            Ok((relative, text))
        })
        .collect()
}

/// Every file under `root`, as (path relative to `root` with `/`, full path), sorted by path.
/// An entry that cannot be read (gone while the walk ran) is left out; a directory that cannot
/// be read is an error.
fn walk(root: &std::path::Path) -> Result<Vec<(String, std::path::PathBuf)>, PromptError> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| PromptError::BadFile {
            file: current.display().to_string(),
            problem: format!("cannot read the prompts directory: {e}"),
        })?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                files.push((relative, path));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The content guard's suffix for `scope`: a keyed hash under a secret drawn once per process.
fn guard_suffix(scope: u64) -> u64 {
    use sha2::Digest;
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(rand::random);
    let digest = sha2::Sha256::new().chain_update(secret).chain_update(scope.to_le_bytes()).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion_vars(prefix: &str, suffix: &str) -> minijinja::Value {
        minijinja::context! { prefix => prefix, suffix => suffix, language => "python", file_name => "a.py" }
    }

    #[test]
    fn embedded_prompts_load_and_render_fim_formats() {
        let registry = PromptRegistry::embedded().unwrap();
        let cases = [
            ("codestral", "<s>[SUFFIX]B[PREFIX]A"),
            ("mistral", "<s>[SUFFIX]B[PREFIX]A"),
            ("mixtral", "<s>[SUFFIX]B[PREFIX]A"),
            ("codegemma", "<|fim_prefix|>A<|fim_suffix|>B<|fim_middle|>"),
            ("codellama", "<PRE> A <SUF> B <MID>"),
            ("deepseekcoder", "<｜fim▁begin｜>A<｜fim▁hole｜>B<｜fim▁end｜>"),
        ];
        for (family, expected) in cases {
            let prompt = registry.code_completion(family).unwrap();
            // Mixtral falls back to Mistral's prompt, as GitLab's family list has it.
            let folder = if family == "mixtral" { "mistral" } else { family };
            assert_eq!(prompt.id, format!("code_completions/{folder}"));
            let messages = registry.render(prompt, &completion_vars("A", "B")).unwrap();
            let (fim, instructions) = messages.split_last().unwrap();
            assert_eq!(fim.content, expected, "{family}");
            // The Mistral family's prompts have a system message, as GitLab's do, and with it the
            // content guard; the bare fill-in-the-middle prompts have neither.
            let with_system = ["codestral", "mistral", "mixtral"].contains(&family);
            assert_eq!(instructions.len(), usize::from(with_system), "{family}");
            if let Some(system) = instructions.first() {
                assert!(matches!(system.role, wit::Role::System) && system.content.starts_with("<content_policy_"));
            }
        }
        // A file's completions share their guard's tags (a model server's prefix cache reuses
        // the prompt's start); other files, and requests without a scope, get tags of their own.
        let codestral = registry.code_completion("codestral").unwrap();
        let guard_of =
            |scope| registry.render_in(codestral, &completion_vars("A", "B"), scope).unwrap()[0].content.clone();
        assert_eq!(guard_of(Some(7)), guard_of(Some(7)));
        assert_ne!(guard_of(Some(7)), guard_of(Some(8)));
        assert_ne!(guard_of(None), guard_of(None));
        assert!(guard_of(Some(7)).starts_with("<content_policy_"));
        assert_eq!(registry.code_completion("codestral").unwrap().params.temperature, Some(0.32));
        assert_eq!(registry.code_completion("codegemma").unwrap().params.stop.len(), 4);
        // Qwen (Qwen3-Coder Instruct, Qwen3.6) completes as chat with the base prompt, as GitLab's
        // current gateway prompts it: its fill-in-the-middle tokens inside a chat turn are not
        // what an instruction-tuned Qwen was trained on.
        assert_eq!(registry.code_completion("qwen").unwrap().id, "code_completions/base");
        assert_eq!(registry.families().names().count(), 12);
        for family in registry.families().names() {
            assert!(registry.code_completion(family).is_ok(), "{family} has a completion prompt");
            assert!(registry.code_generation(family).is_ok(), "{family} has a generation prompt");
        }
    }

    #[test]
    fn instruction_families_get_a_system_message_and_a_placeholder() {
        let registry = PromptRegistry::embedded().unwrap();
        let prompt = registry.code_completion("llama3").unwrap();
        assert_eq!(prompt.id, "code_completions/llama3");
        let messages = registry.render(prompt, &completion_vars("x = ", "\nprint(x)")).unwrap();
        assert!(matches!(messages[0].role, wit::Role::System));
        assert!(messages[1].content.contains("x = <CURSOR>\nprint(x)"));
        let gpt = registry.render(registry.code_completion("gpt").unwrap(), &completion_vars("A", "B")).unwrap();
        assert!(gpt[1].content.ends_with("<|prefix|>A<|suffix|>B"), "{}", gpt[1].content);
    }

    /// Sample values for every variable aigw's own prompts read.
    fn every_variable() -> minijinja::Value {
        let inputs = serde_json::json!({"diff": "+fn a() {}", "mr_title": "Add a", "notes_content": "LGTM"});
        let base = minijinja::context! {
            prefix => "def add(a, b):\n    ", suffix => "\n", language => "Python", file_name => "a.py",
            input => "Explain", selected_text => "x = 1", language_info => "", file_content => "",
            file_content_reuse => "", libraries => Vec::<String>::new(), job_log => "npm ERR! 404",
            vulnerability => "SQL injection", inputs => &inputs,
        };
        minijinja::context! { ..minijinja::Value::from_serialize(&inputs), ..base }
    }

    #[test]
    fn every_family_and_feature_renders_with_its_structure() {
        let registry = PromptRegistry::embedded().unwrap();
        // Every feature the registry has: a folder with a `base` prompt, or a prompt of its own
        // (`model_configuration/check`); not the guard, nor the ReAct prompt, which is rendered a
        // turn at a time (the agent's tests render it).
        let families: Vec<&str> = registry.families().names().collect();
        let mut features: Vec<&str> = registry
            .prompts
            .keys()
            .map(|id| match id.rsplit_once('/') {
                Some((feature, last)) if last == "base" || families.contains(&last) => feature,
                _ => id.as_str(),
            })
            .filter(|feature| ![CONTENT_GUARD, "chat/react"].contains(feature))
            .collect();
        features.sort_unstable();
        features.dedup();
        assert!(features.len() >= 14, "{features:?}");
        features.push("code_suggestions/generations");
        let mut suffixes = std::collections::HashSet::new();
        for feature in features {
            for family in registry.families().names() {
                let prompt = registry.for_family(feature, family, None).unwrap();
                let messages = registry
                    .render(prompt, &every_variable())
                    .unwrap_or_else(|e| panic!("{feature} for {family} ({}): {e}", prompt.id));
                assert!(
                    matches!(messages.last().unwrap().role, wit::Role::User),
                    "{feature}/{family}: ends on the user"
                );
                assert!(messages.iter().all(|m| !m.content.trim().is_empty()), "{feature}/{family}: no empty message");
                if let Some(system) = messages.iter().find(|m| matches!(m.role, wit::Role::System)) {
                    // The guard leads the system message, with a suffix of its own each call.
                    let tag = system.content.split_once('>').map(|(tag, _)| tag).unwrap_or_default();
                    let suffix = tag.strip_prefix("<content_policy_").unwrap_or_else(|| panic!("{feature}: {tag}"));
                    assert!(suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
                    assert!(system.content.contains(&format!("</content_policy_{suffix}>\n\n")));
                    suffixes.insert(suffix.to_string());
                }
                let sampling = registry.sampling(prompt, family);
                assert!(sampling.max_tokens.is_some() || family == "gpt", "{feature}/{family} limits its answer");
            }
        }
        assert!(suffixes.len() > 100, "a new suffix per call: {}", suffixes.len());
    }

    #[test]
    fn sampling_is_the_prompts_over_the_familys() {
        let registry = PromptRegistry::embedded().unwrap();
        let sampling = |id: &str, family: &str| {
            let prompt = registry.for_family(id, family, None).unwrap();
            let s = registry.sampling(prompt, family);
            (s.temperature, s.max_tokens, s.stop)
        };
        let observation = vec!["Observation:".to_string()];
        assert_eq!(sampling("chat/react", "llama3"), (Some(0.1), Some(4096), observation.clone()));
        assert_eq!(sampling("chat/react", "qwen"), (Some(0.1), Some(8192), observation.clone()));
        assert_eq!(sampling("chat/react", "gpt"), (None, Some(8192), observation), "no temperature for gpt");
        assert_eq!(sampling("chat/explain_code", "mistral"), (Some(0.0), Some(2048), vec![]));
        assert_eq!(sampling("chat/explain_code", "gemini"), (Some(1.0), Some(2048), vec![]));
        assert_eq!(sampling("chat/explain_code", "gpt"), (None, Some(2048), vec![]));
        assert_eq!(sampling("chat/fix_code", "codestral"), (Some(0.3), Some(2048), vec![]));
        assert_eq!(sampling("chat/explain_vulnerability", "codestral").0, Some(0.0), "codestral falls back to mistral");
        assert_eq!(sampling("generate_commit_message", "qwen"), (Some(0.0), Some(8192), vec![]));
        assert_eq!(sampling("model_configuration/check", "mistral"), (Some(0.0), Some(16), vec![]));
        assert_eq!(sampling("code_generations", "mixtral"), (Some(0.0), Some(4096), vec![]));
        assert_eq!(sampling("code_completions", "gpt"), (None, Some(64), vec![]));
        let react = registry.for_family("chat/react", "mistral", None).unwrap();
        assert_eq!(react.id, "chat/react/base");
        assert!(!react.guarded, "no guard in front of the ReAct prompt, as GitLab has none there");
    }

    #[test]
    fn extending_files_inherit_what_they_leave_out() {
        let files = [
            (
                "t/base/1.0.0.toml",
                "unit_primitive = \"duo_chat\"\n[params]\ntemperature = 0.5\nmax_tokens = 100\nstop = [\"x\"]\n[budget]\nmax_prompt_tokens = 10\nsuffix_share = 0.1\n[[messages]]\nrole = \"user\"\ncontent = \"hello {{ name }}\"",
            ),
            ("t/base/1.1.0-dev.toml", "[[messages]]\nrole = \"user\"\ncontent = \"unreleased\""),
            ("t/fast/1.0.0.toml", "extends = \"t/base\"\n[params]\nmax_tokens = 20"),
        ];
        let registry = PromptRegistry::from_files(files.map(|(p, t)| (p.to_string(), t.to_string()))).unwrap();
        let fast = registry.for_family("t", "fast", None).unwrap();
        assert_eq!(fast.params.max_tokens, Some(20));
        assert_eq!(fast.params.temperature, Some(0.5));
        assert_eq!(fast.params.stop, ["x"]);
        assert_eq!(fast.budget.unwrap().max_prompt_tokens, Some(10));
        assert_eq!(fast.unit_primitives, ["duo_chat"]);
        let rendered = registry.render(fast, &minijinja::context! { name => "you" }).unwrap();
        assert_eq!(rendered[0].content, "hello you", "the stable base's messages, not the pre-release's");
        // A family without a file of its own gets base; an id that is a leaf is served as itself.
        assert_eq!(registry.for_family("t", "slow", None).unwrap().id, "t/base");
        assert_eq!(registry.for_family("t/fast", "slow", None).unwrap().id, "t/fast");
        assert!(matches!(registry.for_family("u", "fast", None), Err(PromptError::NotFound(id)) if id == "u"));
        assert_eq!(registry.for_family("t", "slow", Some("1.1.0-dev")).unwrap().version.to_string(), "1.1.0-dev");

        let chained = [
            ("a/1.0.0.toml", "[[messages]]\nrole = \"user\"\ncontent = \"a\""),
            ("b/1.0.0.toml", "extends = \"a\""),
            ("c/1.0.0.toml", "extends = \"b\""),
        ];
        let error = PromptRegistry::from_files(chained.map(|(p, t)| (p.to_string(), t.to_string()))).unwrap_err();
        assert!(error.to_string().contains("c/1.0.0.toml") && error.to_string().contains("stands alone"), "{error}");
        let orphan = [("b/1.0.0.toml", "extends = \"nowhere\"")];
        let error = PromptRegistry::from_files(orphan.map(|(p, t)| (p.to_string(), t.to_string()))).unwrap_err();
        assert!(error.to_string().contains("'nowhere'"), "{error}");
        let empty = [("b/1.0.0.toml", "description = \"nothing\"")];
        assert!(PromptRegistry::from_files(empty.map(|(p, t)| (p.to_string(), t.to_string()))).is_err());
    }

    #[test]
    fn without_a_constraint_the_highest_stable_version_serves() {
        let file = |v: &str| (format!("p/{v}.toml"), "[[messages]]\nrole = \"user\"\ncontent = \"x\"".to_string());
        let registry = PromptRegistry::from_files(["1.0.0", "1.0.1", "1.1.0-dev", "2.0.0-rc.1"].map(file)).unwrap();
        assert_eq!(registry.latest("p").unwrap().version.to_string(), "1.0.1");
        assert_eq!(registry.matching("p", Some("^1.0.0")).unwrap().version.to_string(), "1.0.1");
        assert_eq!(registry.matching("p", Some("2.0.0-rc.1")).unwrap().version.to_string(), "2.0.0-rc.1");
        assert!(matches!(registry.matching("p", Some("^2.0.0")), Err(PromptError::BadVersion(_))));
    }

    #[test]
    fn chat_sub_feature_prompts_render_what_gitlab_sends() {
        let registry = PromptRegistry::embedded().unwrap();
        let slash = minijinja::context! {
            input => "Explain the loop", selected_text => "for x in xs: pass", language_info => "The code is Python.",
            file_content => "", file_content_reuse => "", libraries => ["requests (2.32)"],
        };
        for id in ["chat/explain_code", "chat/write_tests", "chat/refactor_code", "chat/fix_code"] {
            let prompt = registry.for_family(id, "codellama", Some("^1.0.0")).unwrap();
            assert_eq!(prompt.id, format!("{id}/base"));
            assert!(prompt.unit_primitives.iter().any(|s| s == "duo_chat"), "{id}");
            let text: String = registry.render(prompt, &slash).unwrap().into_iter().map(|m| m.content).collect();
            assert!(text.contains("<selected_code>\nfor x in xs: pass\n</selected_code>"), "{id}: {text}");
            assert!(text.contains("Explain the loop") && text.contains("The code is Python."), "{id}: {text}");
            let missing = registry.render(prompt, &minijinja::context! { input => "only this" });
            assert!(matches!(missing, Err(PromptError::Render { .. })), "{id} needs selected_text");
        }
        let fix: String = registry
            .render(registry.for_family("chat/fix_code", "base", None).unwrap(), &slash)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert!(fix.contains("requests (2.32)"), "{fix}");

        let job = registry.for_family("chat/troubleshoot_job", "llama3", None).unwrap();
        for log in
            [minijinja::context! { job_log => "npm ERR! 404" }, minijinja::context! { selected_text => "npm ERR! 404" }]
        {
            let text = registry.render(job, &log).unwrap()[1].content.clone();
            assert!(text.contains("<job_log>\nnpm ERR! 404\n</job_log>"), "{text}");
        }
        assert!(registry.render(job, &minijinja::context! {}).is_err(), "a job log is required");

        let inputs = serde_json::json!({"diff": "+fn a() {}", "mr_title": "Add a"});
        let variables = minijinja::context! { inputs => &inputs, ..minijinja::Value::from_serialize(&inputs) };
        for id in [
            "generate_commit_message",
            "summarize_new_merge_request",
            "review_merge_request",
            "summarize_review",
            "chat/explain_vulnerability",
        ] {
            let prompt = registry.for_family(id, "gpt", Some("^1.0.0")).unwrap();
            let text = registry.render(prompt, &variables).unwrap()[1].content.clone();
            assert_eq!(text, "<diff>\n+fn a() {}\n</diff>\n<mr_title>\nAdd a\n</mr_title>\n", "{id}");
            assert!(!prompt.unit_primitives.is_empty(), "{id} is gated");
        }
        let by_id = registry.for_family("code_suggestions/generations", "codestral", None).unwrap();
        assert_eq!(by_id.id, "code_generations/codestral", "GitLab's id, aigw's prompt for the family");
        assert_eq!(
            (by_id.unit_primitives.as_slice(), by_id.params.max_tokens),
            (&["generate_code".to_string()][..], Some(256))
        );
    }

    #[test]
    fn every_builtin_prompt_is_gated_and_only_test_connection_is_open() {
        let registry = PromptRegistry::embedded().unwrap();
        for (id, versions) in &registry.prompts {
            for prompt in versions {
                if id == CONTENT_GUARD {
                    assert!(!prompt.open && prompt.unit_primitives.is_empty(), "the guard is nobody's to call");
                    continue;
                }
                let gated = !prompt.unit_primitives.is_empty();
                assert!(gated != prompt.open, "{id}: gated or open, exactly one");
                assert_eq!(prompt.open, id == "model_configuration/check", "{id}");
                let generation = id.starts_with("code_generations");
                assert_eq!(prompt.gateway_tokens, !generation, "{id}: gateway tokens only where completion is");
            }
        }
    }

    #[test]
    fn open_and_gated_at_once_is_refused() {
        let file = "open = true\nunit_primitive = \"duo_chat\"\n[[messages]]\nrole = \"user\"\ncontent = \"hi\"";
        let err = PromptRegistry::from_files([("p/1.0.0.toml".to_string(), file.to_string())]).unwrap_err();
        assert!(err.to_string().contains("exclude each other"), "{err}");
        let extending = [
            ("open/1.0.0.toml".to_string(), "open = true\n[[messages]]\nrole = \"user\"\ncontent = \"hi\"".to_string()),
            ("child/1.0.0.toml".to_string(), "extends = \"open\"".to_string()),
        ];
        let registry = PromptRegistry::from_files(extending).unwrap();
        assert!(!registry.latest("child").unwrap().open, "openness is never inherited");
    }

    #[test]
    fn unknown_family_is_unsupported() {
        let registry = PromptRegistry::embedded().unwrap();
        assert!(matches!(registry.code_completion("gpt-j"), Err(PromptError::UnsupportedFamily { .. })));
    }

    #[test]
    fn missing_variable_is_a_render_error() {
        let registry = PromptRegistry::embedded().unwrap();
        let prompt = registry.code_completion("codestral").unwrap();
        let err = registry.render(prompt, &minijinja::context! { prefix => "a" }).unwrap_err();
        assert!(matches!(err, PromptError::Render { .. }));
    }

    #[test]
    fn version_constraints_pick_the_highest_match() {
        let file = |v: &str| (format!("p/{v}.toml"), "[[messages]]\nrole = \"user\"\ncontent = \"x\"".to_string());
        let registry =
            PromptRegistry::from_files(["1.0.0", "1.2.0", "1.2.5", "2.0.0", "0.3.1", "0.4.0"].map(file)).unwrap();
        let pick = |c: &str| registry.matching("p", Some(c)).map(|p| p.version.to_string());
        assert_eq!(pick("^1.0.0").unwrap(), "1.2.5");
        assert_eq!(pick("~1.2.0").unwrap(), "1.2.5");
        assert_eq!(pick("1.2.0").unwrap(), "1.2.0");
        assert_eq!(pick("^0.3.0").unwrap(), "0.3.1");
        assert_eq!(pick("*").unwrap(), "2.0.0");
        assert_eq!(registry.matching("p", None).unwrap().version, Version::new(2, 0, 0));
        assert!(matches!(pick("^3.0.0"), Err(PromptError::BadVersion(_))));
        assert!(matches!(pick("latest please"), Err(PromptError::BadVersion(_))));
        assert!(matches!(registry.matching("q", None), Err(PromptError::NotFound(_))));
    }

    #[test]
    fn highest_version_wins() {
        let registry = PromptRegistry::from_files([
            ("p/1.2.0.toml".to_string(), "[[messages]]\nrole = \"user\"\ncontent = \"old\"".to_string()),
            ("p/1.10.0.toml".to_string(), "[[messages]]\nrole = \"user\"\ncontent = \"new\"".to_string()),
        ])
        .unwrap();
        assert_eq!(registry.latest("p").unwrap().version, Version::new(1, 10, 0));
    }
}
