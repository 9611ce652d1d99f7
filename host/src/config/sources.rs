//! Where each setting's value came from (the environment, the settings file or the default), and
//! which `AIGW_*` variables aigw does not read: what `aigw doctor` tells an operator.

use super::RawConfig;
use std::path::{Path, PathBuf};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// An `AIGW_*` environment variable (which wins over the file).
    Environment,
    /// The TOML settings file.
    File(PathBuf),
}

/// One setting that is not at its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetSetting {
    /// Its environment name, e.g. `AIGW_PLUGINS__DIR`.
    pub(crate) variable: String,
    /// The value as written, or `(set, not shown)` for a key.
    pub(crate) shown: String,
    /// Where it came from.
    pub(crate) source: Source,
}

/// An `AIGW_*` variable that is set but that aigw does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IgnoredVariable {
    /// Its name.
    pub(crate) variable: String,
    /// The setting it is one or two typing slips away from, if any.
    pub(crate) did_you_mean: Option<String>,
}

/// Every setting's origin.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    /// Settings given a value, in the order aigw lists its variables.
    pub(crate) set: Vec<SetSetting>,
    /// How many settings are at their defaults.
    pub(crate) defaults: usize,
    /// Set `AIGW_*` variables that aigw ignores (GitLab's gateway reads many more).
    pub(crate) ignored: Vec<IgnoredVariable>,
}

/// Most edits between an ignored variable and a setting for it to be reported as a likely typo.
const TYPO_DISTANCE: usize = 2;

/// Where each setting comes from, given the settings file (if any) and the environment. A file
/// that cannot be read or parsed counts as empty here: loading the settings reports why.
pub(crate) fn sources(file: Option<&Path>, env: &[(String, String)]) -> Sources {
    let table = file
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .unwrap_or_default();
    let variables = RawConfig::variables();
    let mut out = Sources::default();
    for variable in &variables {
        let from_env = env.iter().rev().find(|(name, _)| name == variable).map(|(_, value)| value.clone());
        let (value, source) = match (from_env, file.and_then(|path| file_value(&table, variable).map(|v| (v, path)))) {
            (Some(value), _) => (value, Source::Environment),
            (None, Some((value, path))) => (value, Source::File(path.to_path_buf())),
            (None, None) => {
                out.defaults += 1;
                continue;
            }
        };
        let shown = if is_secret(variable) { "(set, not shown)".to_string() } else { value };
        out.set.push(SetSetting { variable: variable.clone(), shown, source });
    }
    for (name, _) in env {
        let unknown = name.starts_with("AIGW_") && !variables.contains(name);
        if unknown && !out.ignored.iter().any(|ignored| &ignored.variable == name) {
            let did_you_mean = variables
                .iter()
                .map(|known| (strsim::levenshtein(name, known), known))
                .filter(|(distance, _)| *distance <= TYPO_DISTANCE)
                .min()
                .map(|(_, known)| known.clone());
            out.ignored.push(IgnoredVariable { variable: name.clone(), did_you_mean });
        }
    }
    out
}

/// Keys (`AIGW_SELF_SIGNED_JWT__SIGNING_KEY`, …) are never printed.
fn is_secret(variable: &str) -> bool {
    variable.ends_with("_KEY")
}

/// The file's value for `variable`: `AIGW_A__B__C` lives at `a.b.c` in the TOML file.
fn file_value(table: &toml::Table, variable: &str) -> Option<String> {
    let path = variable.strip_prefix("AIGW_")?.to_ascii_lowercase();
    let mut parts = path.split("__");
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(match value {
        toml::Value::String(text) => text.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_env as env;

    #[test]
    fn the_environment_wins_over_the_file_and_the_rest_are_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aigw.toml");
        std::fs::write(
            &file,
            "gitlab_url = \"https://file.example\"\n[plugins]\nmemory_limit_mb = 32\n[fastapi.tls]\nenabled = false\n",
        )
        .unwrap();
        let found = sources(
            Some(&file),
            &env(&[
                ("AIGW_GITLAB_URL", "https://env.example"),
                ("AIGW_EGRESS__ALLOW", "10.0.0.0/8"),
                ("HOME", "/root"),
            ]),
        );
        let named = |variable: &str| found.set.iter().find(|s| s.variable == variable).cloned();
        assert_eq!(named("AIGW_GITLAB_URL").unwrap().source, Source::Environment);
        assert_eq!(named("AIGW_GITLAB_URL").unwrap().shown, "https://env.example");
        assert_eq!(named("AIGW_PLUGINS__MEMORY_LIMIT_MB").unwrap().source, Source::File(file.clone()));
        assert_eq!(named("AIGW_PLUGINS__MEMORY_LIMIT_MB").unwrap().shown, "32");
        assert_eq!(named("AIGW_FASTAPI__TLS__ENABLED").unwrap().shown, "false");
        assert_eq!(found.set.len(), 4);
        assert_eq!(found.defaults, RawConfig::variables().len() - 4);
        assert!(found.ignored.is_empty());
    }

    #[test]
    fn keys_are_never_shown() {
        let found = sources(None, &env(&[("AIGW_SELF_SIGNED_JWT__SIGNING_KEY", "-----BEGIN PRIVATE KEY-----secret")]));
        assert_eq!(found.set[0].shown, "(set, not shown)");
        assert!(!format!("{found:?}").contains("secret"));
    }

    #[test]
    fn unread_variables_are_listed_with_the_setting_a_typo_meant() {
        let found = sources(
            None,
            &env(&[
                ("AIGW_EGRES__ALLOW", "10.0.0.0/8"),
                ("AIGW_GOOGLE_CLOUD_PLATFORM__PROJECT", "p"),
                ("AIGW_EGRES__ALLOW", "again"),
            ]),
        );
        assert_eq!(
            found.ignored,
            vec![
                IgnoredVariable {
                    variable: "AIGW_EGRES__ALLOW".into(),
                    did_you_mean: Some("AIGW_EGRESS__ALLOW".into())
                },
                IgnoredVariable { variable: "AIGW_GOOGLE_CLOUD_PLATFORM__PROJECT".into(), did_you_mean: None },
            ]
        );
    }
}
