//! The doctor's loading steps: each plugin directory's components compile and say what they serve,
//! and the prompt registry (built in, the operator's, GitLab's) loads, as at start-up.

use super::{Section, Step};
use crate::config::Config;
use crate::plugins::PluginRegistry;
use crate::prompts::PromptRegistry;
use std::sync::Arc;

/// What loaded, for the model step.
pub(super) struct Loaded {
    /// The plugins, as the gateway would serve them.
    pub(super) registry: Arc<PluginRegistry>,
    /// The prompts.
    pub(super) prompts: PromptRegistry,
}

/// Load the plugins and the prompts; `None` when either fails to load at all.
pub(super) async fn check(config: &Config) -> (Section, Section, Option<Loaded>) {
    let (plugins, registry) = plugins(config).await;
    let mut prompts = Section::new("Prompts");
    let loaded = match PromptRegistry::load(&config.prompts) {
        Ok(registry) => {
            let mut sources = vec!["built in".to_string()];
            if let Some(dir) = &config.prompts.dir {
                sources.push(format!("AIGW_PROMPTS__DIR {}", dir.display()));
            }
            if let Some(dir) = &config.prompts.gitlab_dir {
                let ids = registry.gitlab_ids().map_or(0, |ids| ids.len());
                sources.push(format!("GitLab's registry {} ({ids} prompt ids)", dir.display()));
            }
            let families: Vec<&str> = registry.families().names().collect();
            prompts.push(
                Step::ok(format!("loaded: {}; {} model families", sources.join(", "), families.len()))
                    .detail(format!("families: {}", families.join(", "))),
            );
            Some(registry)
        }
        Err(error) => {
            prompts.push(Step::fail(
                format!("the prompts do not load: {error}"),
                "correct or remove the file the message names; the gateway does not start without its prompts",
            ));
            None
        }
    };
    let loaded = registry.zip(loaded).map(|(registry, prompts)| Loaded { registry, prompts });
    (plugins, prompts, loaded)
}

async fn plugins(config: &Config) -> (Section, Option<Arc<PluginRegistry>>) {
    let dirs = std::env::join_paths(&config.plugins.dirs).unwrap_or_default();
    let mut section = Section::new(format!("Plugins (AIGW_PLUGINS__DIR {})", dirs.to_string_lossy()));
    let missing: Vec<_> = config.plugins.dirs.iter().filter(|dir| !dir.is_dir()).collect();
    for dir in &missing {
        section.push(Step::fail(
            format!("{} is not a directory", dir.display()),
            "create it, or correct AIGW_PLUGINS__DIR (`make build` fills target/plugins; the image carries \
             /opt/aigw/plugins); the gateway does not start without it",
        ));
    }
    if !missing.is_empty() {
        return (section, None);
    }
    let runtime = match crate::plugin_runtime(config) {
        Ok(runtime) => runtime,
        Err(error) => {
            section.push(Step::fail(
                format!("the plugin runtime cannot start: {error}"),
                "check AIGW_PLUGINS__MAX_CONCURRENT, AIGW_PLUGINS__MEMORY_LIMIT_MB and AIGW_PLUGINS__CACHE_DIR",
            ));
            return (section, None);
        }
    };
    let registry = Arc::new(PluginRegistry::new(runtime, config.plugins.dirs.clone()));
    let report = registry.reload().await;
    let snapshot = registry.snapshot();
    for (path, plugin, lost) in snapshot.files() {
        let identity = plugin.identity();
        let cached = if plugin.from_cache() { ", compiled code from the cache" } else { "" };
        section.push(
            Step::ok(format!(
                "{} {}: serves {}{}",
                identity.name,
                identity.version,
                identity.providers.join(", "),
                // Loaded and serving, but built before some interface existed.
                match identity.missing() {
                    None => String::new(),
                    Some(missing) =>
                        format!(" (built for aigw:plugin@{}: {missing} until rebuilt)", identity.wit_version),
                }
            ))
            .detail(format!("{}{cached}", path.display())),
        );
        if !lost.is_empty() {
            section.push(Step::warn(
                format!("{}: {} also served by another plugin, which wins", path.display(), lost.join(", ")),
                "the earlier directory in AIGW_PLUGINS__DIR (then the earlier file name) serves a provider: remove \
                 the copy that should not",
            ));
        }
    }
    for (path, error) in &report.rejected {
        section.push(Step::fail(
            format!("{} does not load: {error}", path.display()),
            format!(
                "rebuild it for aigw:plugin@{} or remove it; the gateway serves the other plugins without it \
                 (`aigw plugin check {}` says the same)",
                crate::plugins::runtime::WIT_VERSION,
                path.display()
            ),
        ));
    }
    if snapshot.is_empty() && report.rejected.is_empty() {
        section.push(Step::fail(
            "no plugin: the gateway can serve no model",
            "put the provider components (*.wasm) into a directory of AIGW_PLUGINS__DIR",
        ));
    }
    if let Some(dir) = &config.plugins.cache_dir {
        section.push(Step::ok(format!(
            "compiled-plugin cache {}: {} of {} loaded from it",
            dir.display(),
            report.from_cache,
            report.loaded.len()
        )));
    }
    (section, Some(registry))
}
