//! The models file (`AIGW_MODELS__FILE`, TOML): its shape, checked field by field into a
//! [`ModelCatalog`], with each provider credential read from its variable or file.

use super::{Allowed, ClientKey, ModelCatalog, NamedModel, Secret};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why the models file cannot be used; it names the entry and the field.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct ModelsError {
    path: PathBuf,
    problem: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    gateway_urls: Vec<String>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    identifier: String,
    endpoint: Option<String>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    sha256: String,
    models: Vec<String>,
    networks: Option<Vec<String>>,
}

/// Names clients and logs use: letters, digits and `-_.:/@+`, at most 128 characters.
fn is_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+".contains(&b))
}

pub(super) fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<ModelCatalog, ModelsError> {
    let fail = |problem: String| ModelsError { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let gateway_urls = raw
        .gateway_urls
        .iter()
        .map(|url| {
            crate::upstream::endpoint::parse(url)
                .map(|uri| uri.to_string().trim_end_matches('/').to_string())
                .map_err(|why| fail(format!("gateway_urls: {url:?} is not usable: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut models = HashMap::new();
    let mut order = Vec::new();
    for raw in raw.models {
        let model = named_model(raw, base, env).map_err(fail)?;
        if models.contains_key(&model.name) {
            return Err(fail(format!("models: {:?} is named twice", model.name)));
        }
        order.push(model.name.clone());
        models.insert(model.name.clone(), model);
    }
    let mut keys: Vec<ClientKey> = Vec::new();
    for raw in raw.keys {
        let key = client_key(raw, &models).map_err(fail)?;
        if keys.iter().any(|other| other.id == key.id) {
            return Err(fail(format!("keys: the id {:?} is used twice", key.id)));
        }
        if keys.iter().any(|other| other.digest == key.digest) {
            return Err(fail(format!("keys: {:?} has the same sha256 as another key", key.id)));
        }
        keys.push(key);
    }
    Ok(ModelCatalog { models, order, keys, gateway_urls, source: Some(path.to_path_buf()) })
}

fn named_model(raw: RawModel, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<NamedModel, String> {
    let entry = format!("models {:?}", raw.name);
    if !is_name(&raw.name) {
        return Err(format!("{entry}: a name is letters, digits and -_.:/@+ (at most 128)"));
    }
    let (provider, model) = raw
        .identifier
        .split_once('/')
        .filter(|(provider, model)| !provider.is_empty() && !model.is_empty())
        .ok_or_else(|| format!("{entry}: identifier {:?} must be <provider>/<model>", raw.identifier))?;
    let endpoint = raw
        .endpoint
        .as_deref()
        .map(|endpoint| {
            crate::upstream::endpoint::parse(endpoint)
                .map_err(|why| format!("{entry}: endpoint {endpoint:?} is not usable: {why}"))
        })
        .transpose()?;
    let (api_key, credential_source) = match (&raw.api_key_env, &raw.api_key_file) {
        (Some(_), Some(_)) => return Err(format!("{entry}: set api_key_env or api_key_file, not both")),
        (Some(variable), None) => {
            let value = env(variable).ok_or_else(|| format!("{entry}: the variable {variable} is not set"))?;
            (value, format!("environment variable {variable}"))
        }
        (None, Some(file)) => {
            let file = base.join(file);
            let value = std::fs::read_to_string(&file)
                .map_err(|e| format!("{entry}: cannot read api_key_file {}: {e}", file.display()))?;
            (value.trim_end_matches(['\r', '\n']).to_string(), format!("file {}", file.display()))
        }
        (None, None) => (String::new(), "none".to_string()),
    };
    // It travels in a header.
    if !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{entry}: the API key may hold printable ASCII characters only"));
    }
    Ok(NamedModel {
        name: raw.name,
        provider: provider.to_string(),
        model: model.to_string(),
        endpoint,
        api_key: Secret(api_key),
        credential_source,
    })
}

fn client_key(raw: RawKey, models: &HashMap<String, NamedModel>) -> Result<ClientKey, String> {
    let entry = format!("keys {:?}", raw.id);
    if !is_name(&raw.id) {
        return Err(format!("{entry}: an id is letters, digits and -_.:/@+ (at most 128)"));
    }
    let digest = decode_sha256(&raw.sha256).ok_or_else(|| {
        format!("{entry}: sha256 must be 64 hex digits, the SHA-256 of the key (`aigw key new` prints one)")
    })?;
    let allowed = if raw.models.iter().any(|name| name == "*") {
        Allowed::All
    } else {
        if let Some(unknown) = raw.models.iter().find(|name| !models.contains_key(name.as_str())) {
            return Err(format!("{entry}: no model is named {unknown:?}"));
        }
        Allowed::Only(raw.models)
    };
    let networks = raw
        .networks
        .map(|networks| crate::config::parse_allowlist(&format!("{entry} networks"), &networks.join(",")))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(ClientKey { id: raw.id, digest, models: allowed, networks })
}

fn decode_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<ModelCatalog, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("key.txt"), "file-secret\n").unwrap();
        load(&path, &|_| None).map_err(|e| e.to_string())
    }

    const DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn a_key_file_is_read_relative_to_the_models_file() {
        let catalog = load_text(
            "[[models]]\nname = \"m\"\nidentifier = \"anthropic/claude-sonnet-4-5\"\napi_key_file = \"key.txt\"\n",
        )
        .unwrap();
        let model = catalog.models().find(|model| model.name == "m").unwrap();
        assert_eq!(model.api_key.expose(), "file-secret");
        assert!(model.credential_source.starts_with("file ") && model.endpoint.is_none());
    }

    #[test]
    fn every_bad_entry_names_itself_and_the_field() {
        let cases = [
            ("[[models]]\nname = \"m\"\nidentifier = \"nope\"\n", "identifier \"nope\""),
            ("[[models]]\nname = \"a b\"\nidentifier = \"x/y\"\n", "models \"a b\""),
            ("[[models]]\nname = \"m\"\nidentifier = \"x/y\"\nendpoint = \"ftp://h\"\n", "endpoint \"ftp://h\""),
            ("[[models]]\nname = \"m\"\nidentifier = \"x/y\"\napi_key_env = \"UNSET\"\n", "UNSET is not set"),
            (
                "[[models]]\nname = \"m\"\nidentifier = \"x/y\"\n[[models]]\nname = \"m\"\nidentifier = \"x/z\"\n",
                "named twice",
            ),
            ("[[keys]]\nid = \"k\"\nsha256 = \"abc\"\nmodels = [\"*\"]\n", "64 hex digits"),
            (
                &format!("[[keys]]\nid = \"k\"\nsha256 = \"{DIGEST}\"\nmodels = [\"ghost\"]\n"),
                "no model is named \"ghost\"",
            ),
            (
                &format!(
                    "[[keys]]\nid = \"k\"\nsha256 = \"{DIGEST}\"\nmodels = [\"*\"]\nnetworks = [\"10.0.0.0/33\"]\n"
                ),
                "networks",
            ),
            ("gateway_urls = [\"not a url\"]\n", "gateway_urls"),
            ("[[model]]\nname = \"m\"\n", "unknown field"),
        ];
        for (text, expected) in cases {
            let error = load_text(text).map(|_| ()).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
