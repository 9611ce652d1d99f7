//! The doctor's first step: the settings load and validate, which came from where, and which
//! `AIGW_*` variables aigw ignores.

use super::{Section, Step};
use crate::config::Config;
use crate::config::sources::{Source, sources};
use std::path::Path;

/// Validate the settings as `aigw serve` would; `None` when they are not valid.
pub(super) fn check(file: Option<&Path>, env: &[(String, String)], dev: bool) -> (Section, Option<Config>) {
    let mut section = Section::new("Settings");
    let found = sources(file, env);
    let config = match Config::load(file, env.iter().cloned(), dev) {
        Ok(config) => config,
        Err(error) => {
            let origin = found.set.iter().find(|set| set.variable == error.setting).map(|set| describe(&set.source));
            let fix = match origin {
                _ if error.setting == "--config" => "correct the settings file named above".to_string(),
                Some(origin) => format!("correct {} where it is set: {origin}", error.setting),
                None => {
                    format!("set {} as the message says (for example in the Deployment's ConfigMap)", error.setting)
                }
            };
            section.push(Step::fail(error.to_string(), fix));
            return (section, None);
        }
    };
    let from_env = found.set.iter().filter(|set| set.source == Source::Environment).count();
    let from_file = found.set.len() - from_env;
    let mut summary = format!("valid: {from_env} set in the environment");
    if let Some(file) = file {
        summary.push_str(&format!(", {from_file} in {}", file.display()));
    }
    summary.push_str(&format!(", {} at their defaults", found.defaults));
    let width = found.set.iter().map(|set| set.variable.len()).max().unwrap_or(0);
    let mut step = Step::ok(summary);
    for set in &found.set {
        step = step.detail(format!("{:<width$}  {}  ({})", set.variable, set.shown, describe(&set.source)));
    }
    let (typos, unread): (Vec<_>, Vec<_>) = found.ignored.iter().partition(|ignored| ignored.did_you_mean.is_some());
    if !unread.is_empty() {
        let names: Vec<&str> = unread.iter().map(|ignored| ignored.variable.as_str()).collect();
        step = step.detail(format!("not read by aigw (GitLab's gateway may read them): {}", names.join(", ")));
    }
    section.push(step);
    for typo in typos {
        let meant = typo.did_you_mean.as_deref().unwrap_or_default();
        section.push(Step::warn(
            format!("{} is not an aigw setting, so it is ignored", typo.variable),
            format!("did you mean {meant}? Rename it, or unset it"),
        ));
    }
    if config.bypass_auth {
        section.push(Step::warn(
            "AIGW_AUTH__BYPASS_EXTERNAL is true: authentication is off, anyone who reaches the gateway can use it",
            "unset it everywhere but an isolated test set-up",
        ));
    }
    (section, Some(config))
}

fn describe(source: &Source) -> String {
    match source {
        Source::Environment => "environment".to_string(),
        Source::File(path) => format!("file {}", path.display()),
    }
}
