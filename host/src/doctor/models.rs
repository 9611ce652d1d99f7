//! The models file: whether it loads, and each named model with where it is served and where
//! its credential comes from (never the credential).

use super::{Section, Step};
use crate::config::Config;
use crate::models::ModelCatalog;

/// Check `AIGW_MODELS__FILE`, reading credentials' variables from `env`.
pub(super) fn check(config: &Config, env: &[(String, String)]) -> Section {
    let Some(path) = &config.model_api.file else {
        let mut section = Section::new("Model API (AIGW_MODELS__FILE unset)");
        section.push(Step::skip(
            "no models file: the OpenAI-compatible model API (/v1/chat/completions) has no models and refuses every key",
        ));
        return section;
    };
    let mut section = Section::new(format!("Model API (AIGW_MODELS__FILE {})", path.display()));
    let lookup = |name: &str| env.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    let catalog = match ModelCatalog::load(path, &lookup, None) {
        Ok(catalog) => catalog,
        Err(error) => {
            section.push(Step::fail(
                error.to_string(),
                "fix the entry named; `aigw serve` refuses to start with this file, and a running gateway keeps \
                 its last good set",
            ));
            return section;
        }
    };
    let models = catalog.models().count();
    section.push(Step::ok(format!(
        "{} loads: {models} named model{}, {} client key{}",
        catalog.source().map(|source| source.display().to_string()).unwrap_or_default(),
        if models == 1 { "" } else { "s" },
        catalog.key_count(),
        if catalog.key_count() == 1 { "" } else { "s" },
    )));
    for model in catalog.models() {
        let endpoint = match &model.pool {
            None => "the plugin's default endpoint".to_string(),
            Some(pool) => pool.members().iter().map(|m| m.endpoint().to_string()).collect::<Vec<_>>().join(", "),
        };
        section.push(
            Step::ok(format!("{}: {}/{} at {endpoint}", model.name, model.provider, model.model))
                .detail(format!("credential: {}", model.credential_source)),
        );
    }
    if catalog.key_count() == 0 {
        section.push(Step::warn(
            "no client keys: every model API request is refused",
            "add a [[keys]] entry; `aigw key new --id NAME` prints a key and the line to add",
        ));
    }
    section
}
