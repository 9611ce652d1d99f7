//! The prompt registry: versioned prompt files (Jinja templates plus parameters) per model family,
//! rendered by the host into the canonical model request's messages and sampling.

mod trim;

pub use trim::trim_to_budget;

use crate::plugins::wit;
use serde::Deserialize;
use std::collections::HashMap;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_prompts.rs"));
}

/// Model families GitLab sends as `model_name`. Families without a template of their own for a
/// task use the task's `base` prompt.
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
    /// The family is not one the gateway knows.
    #[error("model family '{family}' is not supported for {task}; supported: {}", FAMILIES.join(", "))]
    UnsupportedFamily {
        /// What was asked.
        family: String,
        /// The task.
        task: &'static str,
    },
    /// No prompt with this id.
    #[error("prompt '{0}' not found")]
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

/// A prompt version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split('.').map(|p| p.parse::<u64>());
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) => Ok(Version(a, b, c)),
            _ => Err(format!("{text:?} is not a version like 1.0.0")),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A version constraint: caret (same major, or same minor below 1.0), tilde (same minor), exact.
#[derive(Debug, Clone, Copy)]
enum Constraint {
    Caret(Version),
    Tilde(Version),
    Exact(Version),
}

impl Constraint {
    fn parse(text: &str) -> Option<Self> {
        let (kind, rest): (fn(Version) -> Self, &str) = match text.as_bytes().first()? {
            b'^' => (Constraint::Caret, &text[1..]),
            b'~' => (Constraint::Tilde, &text[1..]),
            b'=' => (Constraint::Exact, &text[1..]),
            _ => (Constraint::Exact, text),
        };
        rest.trim().parse().ok().map(kind)
    }

    fn matches(self, v: Version) -> bool {
        match self {
            Constraint::Exact(want) => v == want,
            Constraint::Tilde(want) => v >= want && (v.0, v.1) == (want.0, want.1),
            Constraint::Caret(want) if want.0 > 0 => v >= want && v.0 == want.0,
            Constraint::Caret(want) => v >= want && (v.0, v.1) == (want.0, want.1),
        }
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Constraint::Caret(v) => write!(f, "^{v}"),
            Constraint::Tilde(v) => write!(f, "~{v}"),
            Constraint::Exact(v) => write!(f, "{v}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile {
    #[serde(default)]
    description: String,
    /// Scope (unit primitive) a caller needs to use the prompt through `/v*/prompts`; absent means
    /// any authenticated caller.
    unit_primitive: Option<String>,
    #[serde(default)]
    params: Params,
    budget: Option<Budget>,
    messages: Vec<MessageFile>,
}

/// Default sampling parameters of a prompt.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Token limit of the answer.
    pub max_tokens: Option<u32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Vec<String>,
}

/// How much code context a completion prompt may carry.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Prefix plus suffix, in characters.
    pub max_prompt_chars: usize,
    /// Share of the budget reserved for the suffix (0.0–1.0).
    pub suffix_share: f32,
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
    pub id: String,
    /// Version.
    pub version: Version,
    /// What it is for.
    pub description: String,
    /// Scope needed to call it by id; `None`: any authenticated caller.
    pub unit_primitive: Option<String>,
    /// Default sampling.
    pub params: Params,
    /// Context budget, for completion prompts.
    pub budget: Option<Budget>,
    /// (role, template name in the environment) per message.
    messages: Vec<(wit::Role, String)>,
}

impl Prompt {
    /// The prompt's sampling defaults as the canonical model request carries them.
    pub fn sampling(&self) -> wit::Sampling {
        wit::Sampling {
            max_tokens: self.params.max_tokens,
            temperature: self.params.temperature,
            top_p: self.params.top_p,
            stop: self.params.stop.clone(),
        }
    }
}

/// All prompts, every version, with their compiled templates.
pub struct PromptRegistry {
    env: minijinja::Environment<'static>,
    prompts: HashMap<String, Vec<Prompt>>,
}

impl std::fmt::Debug for PromptRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptRegistry").field("prompts", &self.prompts.len()).finish()
    }
}

impl PromptRegistry {
    /// The prompts built into the binary.
    pub fn embedded() -> Result<Self, PromptError> {
        Self::from_files(embedded::EMBEDDED.iter().map(|(path, text)| (path.to_string(), text.to_string())))
    }

    /// The embedded prompts plus the operator's `*.toml` files under `dir`; a file with the same
    /// id and version as an embedded one replaces it.
    pub fn embedded_with_dir(dir: &std::path::Path) -> Result<Self, PromptError> {
        let mut files: std::collections::BTreeMap<String, String> =
            embedded::EMBEDDED.iter().map(|(path, text)| (path.to_string(), text.to_string())).collect();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            let entries = std::fs::read_dir(&current).map_err(|e| PromptError::BadFile {
                file: current.display().to_string(),
                problem: format!("cannot read the prompts directory: {e}"),
            })?;
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    let relative = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| PromptError::BadFile { file: relative.clone(), problem: e.to_string() })?;
                    files.insert(relative, text);
                }
            }
        }
        Self::from_files(files)
    }

    /// Build a registry from `(relative path, contents)` pairs; the path is `<id>/<version>.toml`.
    pub fn from_files(files: impl IntoIterator<Item = (String, String)>) -> Result<Self, PromptError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let mut prompts: HashMap<String, Vec<Prompt>> = HashMap::new();
        for (path, text) in files {
            let bad = |problem: String| PromptError::BadFile { file: path.clone(), problem };
            let normalized = path.replace('\\', "/");
            let (id, file_name) =
                normalized.rsplit_once('/').ok_or_else(|| bad("expected <prompt id>/<version>.toml".into()))?;
            let version: Version = file_name.trim_end_matches(".toml").parse().map_err(bad)?;
            let file: PromptFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let mut messages = Vec::with_capacity(file.messages.len());
            for (index, message) in file.messages.into_iter().enumerate() {
                let name = format!("{id}@{version}#{index}");
                env.add_template_owned(name.clone(), message.content).map_err(|e| bad(e.to_string()))?;
                messages.push((message.role.into(), name));
            }
            if messages.is_empty() {
                return Err(bad("a prompt needs at least one message".into()));
            }
            prompts.entry(id.to_string()).or_default().push(Prompt {
                id: id.to_string(),
                version,
                description: file.description,
                unit_primitive: file.unit_primitive,
                params: file.params,
                budget: file.budget,
                messages,
            });
        }
        for versions in prompts.values_mut() {
            versions.sort_by_key(|p| p.version);
        }
        Ok(PromptRegistry { env, prompts })
    }

    /// Highest version of prompt `id`.
    pub fn latest(&self, id: &str) -> Result<&Prompt, PromptError> {
        self.prompts.get(id).and_then(|versions| versions.last()).ok_or_else(|| PromptError::NotFound(id.to_string()))
    }

    /// The highest version of `id` matching `constraint` (`^1.2.0`, `~1.2.0`, `1.2.0`, `*`;
    /// `None` means the highest). A malformed constraint is a render error (422).
    pub fn matching(&self, id: &str, constraint: Option<&str>) -> Result<&Prompt, PromptError> {
        let versions = self.prompts.get(id).ok_or_else(|| PromptError::NotFound(id.to_string()))?;
        let constraint = match constraint.map(str::trim).filter(|c| !c.is_empty() && *c != "*") {
            None => return versions.last().ok_or_else(|| PromptError::NotFound(id.to_string())),
            Some(text) => Constraint::parse(text).ok_or_else(|| {
                PromptError::BadVersion(format!("{text:?} is not a version constraint such as ^1.0.0"))
            })?,
        };
        versions
            .iter()
            .rev()
            .find(|p| constraint.matches(p.version))
            .ok_or_else(|| PromptError::BadVersion(format!("no version of '{id}' matches {constraint}")))
    }

    /// The code completion prompt for `family`: its own, else `code_completions/base`.
    pub fn code_completion(&self, family: &str) -> Result<&Prompt, PromptError> {
        if !FAMILIES.contains(&family) {
            return Err(PromptError::UnsupportedFamily { family: family.to_string(), task: "code completion" });
        }
        self.latest(&format!("code_completions/{family}")).or_else(|_| self.latest("code_completions/base"))
    }

    /// The code generation prompt for `family`: its own, else `code_generations/base`.
    pub fn code_generation(&self, family: &str) -> Result<&Prompt, PromptError> {
        if !FAMILIES.contains(&family) {
            return Err(PromptError::UnsupportedFamily { family: family.to_string(), task: "code generation" });
        }
        self.latest(&format!("code_generations/{family}")).or_else(|_| self.latest("code_generations/base"))
    }

    /// Render a prompt's messages with `variables`.
    pub fn render(&self, prompt: &Prompt, variables: &minijinja::Value) -> Result<Vec<wit::Message>, PromptError> {
        let render_error = |e: minijinja::Error| PromptError::Render { id: prompt.id.clone(), problem: e.to_string() };
        prompt
            .messages
            .iter()
            .map(|(role, name)| {
                let template = self.env.get_template(name).map_err(render_error)?;
                Ok(wit::Message { role: *role, content: template.render(variables).map_err(render_error)? })
            })
            .collect()
    }
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
            ("qwen", "<|fim_prefix|>A<|fim_suffix|>B<|fim_middle|>"),
        ];
        for (family, expected) in cases {
            let prompt = registry.code_completion(family).unwrap();
            assert_eq!(prompt.id, format!("code_completions/{family}"));
            let messages = registry.render(prompt, &completion_vars("A", "B")).unwrap();
            assert_eq!(messages.len(), 1, "{family}");
            assert_eq!(messages[0].content, expected, "{family}");
        }
        assert_eq!(registry.code_completion("codestral").unwrap().params.temperature, Some(0.32));
        assert_eq!(registry.code_completion("codegemma").unwrap().params.stop.len(), 4);
        assert_eq!(registry.code_completion("qwen").unwrap().params.max_tokens, Some(48));
        assert!(registry.code_completion("qwen").unwrap().params.stop.contains(&"\n\n".to_string()));
        for family in FAMILIES {
            assert!(registry.code_completion(family).is_ok(), "{family} has a completion prompt");
            assert!(registry.code_generation(family).is_ok(), "{family} has a generation prompt");
        }
    }

    #[test]
    fn other_known_families_fall_back_to_base() {
        let registry = PromptRegistry::embedded().unwrap();
        let prompt = registry.code_completion("llama3").unwrap();
        assert_eq!(prompt.id, "code_completions/base");
        let messages = registry.render(prompt, &completion_vars("x = ", "\nprint(x)")).unwrap();
        assert!(matches!(messages[0].role, wit::Role::System));
        assert!(messages[1].content.contains("x = <CURSOR>\nprint(x)"));
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
        assert_eq!(registry.matching("p", None).unwrap().version, Version(2, 0, 0));
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
        assert_eq!(registry.latest("p").unwrap().version, Version(1, 10, 0));
    }
}
