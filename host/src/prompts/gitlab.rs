//! GitLab's own prompt registry, read as GitLab's gateway reads it (`AIGW_PROMPTS__GITLAB_DIR`):
//! `<prompt id>/<folder>/<version>.yml` under `definitions/`, the family lists and default
//! parameters of `model_selection/models.yml`, Jinja includes relative to the definitions root,
//! and the tool-output security block GitLab puts in front of a prompt's first system message.
//!
//! Nothing of GitLab's is built into aigw: the operator points this at the directory their GitLab
//! AI gateway image or source already has.

use super::{Origin, Params, Prompt, PromptError, Version, parse_version, pick_version, walk};
use crate::plugins::wit;
use serde_yaml_ng::Value as Yaml;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// The template GitLab renders its tool-output security block from, relative to the root.
const SECURITY_BLOCK: &str = "common/tool_output_security/1.0.0.jinja";

/// Where `models.yml` may be, relative to the definitions directory: inside it, or where GitLab
/// keeps it (`ai_gateway/model_selection/` beside `ai_gateway/prompts/definitions/`), or one
/// level up as in a copy of the two directories side by side.
const MODELS_FILE_CANDIDATES: [&str; 4] =
    ["model_selection/models.yml", "models.yml", "../model_selection/models.yml", "../../model_selection/models.yml"];

/// Prompts GitLab builds with a template of their own rather than from `prompt_template` as it
/// stands; they get no security block (GitLab's `prompt_template_factories`).
const OWN_TEMPLATE_FACTORIES: [&str; 1] = ["chat/react"];

/// One `models.yml` entry that matters here: the folders to look in, and the sampling defaults
/// that a prompt file's `model.params` override.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelEntry {
    family: Vec<String>,
    params: Params,
}

/// GitLab's registry, loaded.
pub(crate) struct GitlabPrompts {
    env: minijinja::Environment<'static>,
    /// `<prompt id>/<folder>` → its versions, lowest first.
    folders: HashMap<String, Vec<Prompt>>,
    /// Every prompt id that has at least one folder.
    ids: BTreeSet<String>,
    /// `gitlab_identifier` → entry.
    models: HashMap<String, ModelEntry>,
}

impl std::fmt::Debug for GitlabPrompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitlabPrompts").field("prompts", &self.ids.len()).field("models", &self.models.len()).finish()
    }
}

fn bad(file: &str, problem: impl Into<String>) -> PromptError {
    PromptError::BadFile { file: file.to_string(), problem: problem.into() }
}

/// A number as PyYAML reads one: YAML 1.1 allows `_` between digits (`8_192`), which YAML 1.2
/// parsers read as a string.
fn yaml_number(value: &Yaml) -> Option<f64> {
    match value {
        Yaml::Number(number) => number.as_f64(),
        Yaml::String(text) => {
            let digits = text.replace('_', "");
            let plain = !text.starts_with('_') && !text.ends_with('_') && !text.contains("__");
            if plain && digits.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+') {
                digits.parse().ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The sampling parameters of a `params` mapping (a prompt file's `model.params`, or a
/// `models.yml` entry's): what reaches the model. The rest (`model`, `max_retries`,
/// `custom_llm_provider`, …) says how GitLab's model library is set up, not what it sends.
fn sampling_params(params: Option<&Yaml>, file: &str) -> Result<Params, PromptError> {
    let mut out = Params::default();
    let Some(params) = params else {
        return Ok(out);
    };
    let number = |key: &str| -> Result<Option<f64>, PromptError> {
        match params.get(key) {
            None | Some(Yaml::Null) => Ok(None),
            Some(value) => yaml_number(value)
                .map(Some)
                .ok_or_else(|| bad(file, format!("`{key}` must be a number, not {value:?}"))),
        }
    };
    out.temperature = number("temperature")?.map(|t| t as f32);
    out.top_p = number("top_p")?.map(|t| t as f32);
    out.max_tokens = match number("max_tokens")? {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX) => Some(n as u32),
        Some(n) => return Err(bad(file, format!("`max_tokens` must be a whole number, not {n}"))),
        None => None,
    };
    Ok(out)
}

/// The text of a YAML or Jinja error with its line, as `line N: …`.
fn with_line(line: Option<usize>, problem: impl std::fmt::Display) -> String {
    match line {
        Some(line) => format!("line {line}: {problem}"),
        None => problem.to_string(),
    }
}

/// A YAML error; its text says the line and column.
fn yaml_error(error: &serde_yaml_ng::Error) -> String {
    match error.location() {
        Some(_) => error.to_string(),
        None => format!("{error} (no line known)"),
    }
}

/// The templates a template includes by a literal name (what LangChain looks into for the
/// variables a prompt needs).
fn included_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        rest = &rest[at + 2..];
        let tag = rest.trim_start_matches(['-', '+']).trim_start();
        if let Some(after) = tag.strip_prefix("include") {
            let after = after.trim_start();
            if let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"')
                && let Some(end) = after[1..].find(quote)
            {
                names.push(after[1..1 + end].to_string());
            }
        }
    }
    names
}

impl GitlabPrompts {
    /// Read GitLab's `definitions` directory at `root`, and its `models.yml`.
    pub(crate) fn load(root: &Path) -> Result<Self, PromptError> {
        if !root.is_dir() {
            return Err(bad(
                &root.display().to_string(),
                "AIGW_PROMPTS__GITLAB_DIR must name GitLab's prompt definitions directory (ai_gateway/prompts/definitions)",
            ));
        }
        let models = load_models(root)?;
        // Every file but a prompt definition may be included (`.jinja` partials, `.xml` lists);
        // one that is not text cannot be, and is left out. A definition must be read.
        let mut files = Vec::new();
        for (relative, path) in walk(root)? {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if relative.ends_with(".yml") => return Err(bad(&relative, e.to_string())),
                Err(_) => continue,
            };
            files.push((relative, text));
        }
        Self::from_files(models, &files)
    }

    /// Build the registry from `models.yml`'s text and the definitions' (no directory: the fuzz
    /// targets' way in).
    pub(crate) fn from_texts(models_yml: &str, files: &[(String, String)]) -> Result<Self, PromptError> {
        Self::from_files(parse_models(models_yml, "models.yml")?, files)
    }

    /// Build the registry from its files' texts, as (path relative to `definitions`, text), and
    /// the models `models.yml` lists.
    pub(crate) fn from_files(
        models: HashMap<String, ModelEntry>,
        files: &[(String, String)],
    ) -> Result<Self, PromptError> {
        let mut env = minijinja::Environment::new();
        // As GitLab's Jinja environment: one trailing newline of a template is dropped, and an
        // undefined value renders empty (LangChain has checked the inputs beforehand).
        env.set_keep_trailing_newline(false);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        // Jinja2 escapes nothing unless told to; minijinja would escape the output of `.xml`
        // templates. And a value prints as Python's `str()` prints it.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_formatter(|out, _, value| {
            if !value.is_undefined() {
                out.write_str(&python_str(value)).map_err(minijinja::Error::from)?;
            }
            Ok(())
        });
        add_gitlab_filters(&mut env);
        for (relative, text) in files {
            if relative.ends_with(".yml") {
                continue;
            }
            env.add_template_owned(relative.clone(), text.clone())
                .map_err(|e| bad(relative, with_line(e.line(), e)))?;
        }
        let mut registry = GitlabPrompts { env, folders: HashMap::new(), ids: BTreeSet::new(), models };
        for (relative, text) in files {
            if !relative.ends_with(".yml") {
                continue;
            }
            let prompt = registry.add_file(relative, text)?;
            let folder = prompt.id.clone();
            let (id, _) = folder.rsplit_once('/').unwrap_or_default();
            registry.ids.insert(id.to_string());
            registry.folders.entry(folder).or_default().push(prompt);
        }
        for versions in registry.folders.values_mut() {
            versions.sort_by(|a, b| a.version.cmp(&b.version));
        }
        Ok(registry)
    }

    /// Parse one `<prompt id>/<folder>/<version>.yml` and compile its templates.
    fn add_file(&mut self, relative: &str, text: &str) -> Result<Prompt, PromptError> {
        let layout = "expected <prompt id>/<folder>/<version>.yml";
        let (folder, file_name) = relative.rsplit_once('/').ok_or_else(|| bad(relative, layout))?;
        let (id, _) = folder.rsplit_once('/').ok_or_else(|| bad(relative, layout))?;
        let version: Version = parse_version(file_name.trim_end_matches(".yml")).map_err(|e| bad(relative, e))?;
        let file: Yaml = serde_yaml_ng::from_str(text).map_err(|e| bad(relative, yaml_error(&e)))?;
        let name = match file.get("name") {
            Some(Yaml::String(name)) => name.clone(),
            _ => return Err(bad(relative, "`name` (a string) is missing")),
        };
        let unit_primitives = match file.get("unit_primitive") {
            None | Some(Yaml::Null) => Vec::new(),
            Some(Yaml::String(scope)) => vec![scope.clone()],
            Some(Yaml::Sequence(scopes)) => scopes.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
            Some(other) => return Err(bad(relative, format!("`unit_primitive` must be a string, not {other:?}"))),
        };
        let mut params = sampling_params(file.get("model").and_then(|m| m.get("params")), relative)?;
        params.stop = match file.get("params").and_then(|p| p.get("stop")) {
            None | Some(Yaml::Null) => Vec::new(),
            Some(Yaml::Sequence(stops)) => stops
                .iter()
                .map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad(relative, "`params.stop` lists strings")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad(relative, "`params.stop` must be a list of strings")),
        };
        let Some(Yaml::Mapping(template)) = file.get("prompt_template") else {
            return Err(bad(relative, "`prompt_template` (role: template) is missing"));
        };
        let mut messages = Vec::new();
        let mut required = BTreeSet::new();
        let mut unsupported = None;
        for (index, (role, source)) in template.iter().enumerate() {
            let (Some(role), Some(source)) = (role.as_str(), source.as_str()) else {
                return Err(bad(relative, "`prompt_template` maps a role to a template string"));
            };
            let role = match role {
                "user" => wit::Role::User,
                "assistant" => wit::Role::Assistant,
                system if system.starts_with("system") => wit::Role::System,
                other => {
                    // `placeholder` stands for a message list the caller passes (agents' history);
                    // the classic endpoints never use such prompts.
                    unsupported = Some(format!("its `{other}` messages are not supported by aigw"));
                    continue;
                }
            };
            let template_name = format!("{relative}#{index}");
            self.env
                .add_template_owned(template_name.clone(), source.to_string())
                .map_err(|e| bad(relative, with_line(e.line(), format!("prompt_template.{role:?}: {e}"))))?;
            // LangChain refuses a call that lacks a variable of the template or of a template it
            // includes directly; deeper ones render empty.
            let compiled = self.env.get_template(&template_name).map_err(|e| bad(relative, e.to_string()))?;
            required.extend(compiled.undeclared_variables(false));
            for included in included_names(source) {
                let template = self
                    .env
                    .get_template(&included)
                    .map_err(|_| bad(relative, format!("includes '{included}', which is not in the directory")))?;
                required.extend(template.undeclared_variables(false));
            }
            messages.push((role, template_name));
        }
        let generation = unit_primitives.iter().any(|s| s == "generate_code");
        Ok(Prompt {
            id: folder.to_string(),
            name,
            version,
            open: false,
            gateway_tokens: !generation,
            params,
            budget: None,
            messages,
            unit_primitives,
            // GitLab's registries before the block had no template for it.
            guarded: self.env.get_template(SECURITY_BLOCK).is_ok() && !OWN_TEMPLATE_FACTORIES.contains(&id),
            origin: Origin::Gitlab { required: required.into_iter().collect(), unsupported },
            template_tokens: std::sync::OnceLock::new(),
        })
    }

    /// Whether GitLab's registry has prompt `id`.
    pub(crate) fn has(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Prompt `id` for the model GitLab knows as `model_name`, as GitLab picks it: the first
    /// folder of the model's family list, then `base`; then the highest version in that folder
    /// that `constraint` (default `^1.0.0`) allows. A model `models.yml` does not list looks in
    /// the folder of its own name.
    pub(crate) fn select(&self, id: &str, model_name: &str, constraint: Option<&str>) -> Result<&Prompt, PromptError> {
        let own_name = [model_name.to_string()];
        let family = self.models.get(model_name).map_or(&own_name[..], |m| m.family.as_slice());
        let folder = family
            .iter()
            .map(String::as_str)
            .chain(["base"])
            .map(|folder| format!("{id}/{folder}"))
            .find(|folder| self.folders.contains_key(folder))
            .ok_or_else(|| PromptError::NotFound(id.to_string()))?;
        pick_version(&self.folders[&folder], Some(constraint.unwrap_or("^1.0.0")))
    }

    /// The sampling defaults `models.yml` gives `model_name` (under a prompt file's own), if it
    /// lists the model.
    pub(crate) fn model_params(&self, model_name: &str) -> Option<&Params> {
        self.models.get(model_name).map(|m| &m.params)
    }

    /// The Jinja environment the prompts' templates live in.
    pub(crate) fn env(&self) -> &minijinja::Environment<'static> {
        &self.env
    }

    /// The security block with `suffix` in its tags: 16 random hex digits per request, as GitLab
    /// draws them, which an injected text cannot guess, so it cannot close the block's tags.
    pub(crate) fn security_block(&self, suffix: &str) -> Result<String, minijinja::Error> {
        self.env.get_template(SECURITY_BLOCK)?.render(minijinja::context! { suffix => suffix })
    }

    /// `size` of the security block's template as written (0 if there is none).
    pub(crate) fn security_block_size(&self, size: &dyn Fn(&str) -> usize) -> usize {
        self.env.get_template(SECURITY_BLOCK).map_or(0, |template| size(template.source()))
    }

    /// Every prompt id it has, in order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(String::as_str)
    }
}

/// A value as Python's `str()` writes it, which is what Jinja2 prints: `None`, `True`, lists and
/// dicts with the `repr()` of their items (`['Pipelines', 'Vulnerabilities']`).
fn python_str(value: &minijinja::Value) -> String {
    match value.as_str() {
        Some(text) => text.to_string(),
        None => python_repr(value),
    }
}

/// A value as Python's `repr()` writes it.
fn python_repr(value: &minijinja::Value) -> String {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::String => python_quote(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = value.try_iter().into_iter().flatten().map(|item| python_repr(&item)).collect();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = value
                .try_iter()
                .into_iter()
                .flatten()
                .map(|key| {
                    let item = value.get_item(&key).unwrap_or_default();
                    format!("{}: {}", python_repr(&key), python_repr(&item))
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        _ => value.to_string(),
    }
}

/// A string in Python's `repr()` quotes: single, unless it holds a single quote and no double.
fn python_quote(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// GitLab's extra Jinja filters: `split` (Python's `str.split`) and `parse_json`.
fn add_gitlab_filters(env: &mut minijinja::Environment<'static>) {
    env.add_filter("split", |text: String, separator: Option<String>| -> Vec<String> {
        match separator {
            Some(separator) if !separator.is_empty() => text.split(separator.as_str()).map(str::to_string).collect(),
            _ => text.split_whitespace().map(str::to_string).collect(),
        }
    });
    env.add_filter("parse_json", |text: String| -> Result<minijinja::Value, minijinja::Error> {
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|value| minijinja::Value::from_serialize(&value))
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
    });
}

/// Find and read `models.yml`.
fn load_models(root: &Path) -> Result<HashMap<String, ModelEntry>, PromptError> {
    let path = MODELS_FILE_CANDIDATES.iter().map(|candidate| root.join(candidate)).find(|path| path.is_file());
    let Some(path) = path else {
        return Err(bad(
            &root.display().to_string(),
            format!(
                "GitLab's model_selection/models.yml is not beside or inside it (looked for {})",
                MODELS_FILE_CANDIDATES.join(", ")
            ),
        ));
    };
    let file = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&file, e.to_string()))?;
    parse_models(&text, &file)
}

fn parse_models(text: &str, file: &str) -> Result<HashMap<String, ModelEntry>, PromptError> {
    let document: Yaml = serde_yaml_ng::from_str(text).map_err(|e| bad(file, yaml_error(&e)))?;
    let Some(Yaml::Sequence(entries)) = document.get("models") else {
        return Err(bad(file, "`models` (a list) is missing"));
    };
    let mut models = HashMap::new();
    for entry in entries {
        let Some(identifier) = entry.get("gitlab_identifier").and_then(Yaml::as_str) else {
            return Err(bad(file, format!("a model without `gitlab_identifier`: {:?}", entry.get("name"))));
        };
        let family = match entry.get("family") {
            Some(Yaml::Sequence(names)) => names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        let params = sampling_params(entry.get("params"), file)?;
        models.insert(identifier.to_string(), ModelEntry { family, params });
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_pyyaml_reads_them() {
        assert_eq!(yaml_number(&Yaml::String("8_192".into())), Some(8192.0));
        assert_eq!(yaml_number(&serde_yaml_ng::from_str("0.32").unwrap()), Some(0.32));
        assert_eq!(yaml_number(&Yaml::String("_8".into())), None);
        assert_eq!(yaml_number(&Yaml::String("high".into())), None);
    }

    #[test]
    fn values_print_as_python_prints_them() {
        let value = |v: serde_json::Value| python_str(&minijinja::Value::from_serialize(&v));
        assert_eq!(value(serde_json::json!(["Pipelines", "Vulnerabilities"])), "['Pipelines', 'Vulnerabilities']");
        assert_eq!(value(serde_json::json!(null)), "None");
        assert_eq!(value(serde_json::json!([true, false, 1, "it's", "a\nb"])), "[True, False, 1, \"it's\", 'a\\nb']");
        assert_eq!(value(serde_json::json!({"a": [1]})), "{'a': [1]}");
        assert_eq!(value(serde_json::json!("plain")), "plain");
    }

    #[test]
    fn includes_are_found_by_their_literal_names() {
        let source = "{% include 'a/1.0.0.jinja' %}\n{%- include \"b/c.jinja\" -%}{% if x %}{% endif %}";
        assert_eq!(included_names(source), ["a/1.0.0.jinja", "b/c.jinja"]);
    }

    #[test]
    fn model_entries_give_families_and_sampling_defaults() {
        let text = "models:\n  - name: A\n    gitlab_identifier: alpha\n    family:\n      - alpha\n      - beta\n    \
                    params:\n      model: alpha\n      temperature: 0.0\n      max_tokens: 4_096\n      max_retries: 1\n  \
                    - name: G\n    gitlab_identifier: general\n";
        let models = parse_models(text, "models.yml").unwrap();
        assert_eq!(models["alpha"].family, ["alpha", "beta"]);
        assert_eq!(models["alpha"].params.max_tokens, Some(4096));
        assert_eq!(models["alpha"].params.temperature, Some(0.0));
        assert!(models["general"].family.is_empty() && models["general"].params.max_tokens.is_none());
        let error = parse_models("models:\n  - name: x\n", "models.yml").unwrap_err();
        assert!(error.to_string().contains("gitlab_identifier"), "{error}");
        let error = parse_models("models: [\n", "models.yml").unwrap_err();
        assert!(error.to_string().contains("line "), "{error}");
    }
}
