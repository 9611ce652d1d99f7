//! The set of loaded plugins, swapped atomically on reload; requests pin the snapshot they start with.

use super::{LoadedPlugin, PluginError, PluginRuntime};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An immutable view of the loaded plugins. In-flight requests hold their own clone of the plugin
/// they resolved, so a swap never changes a request halfway through.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_file: BTreeMap<PathBuf, LoadedPlugin>,
    by_provider: HashMap<String, LoadedPlugin>,
}

impl Snapshot {
    fn from_files(by_file: BTreeMap<PathBuf, LoadedPlugin>) -> Self {
        let mut by_provider = HashMap::new();
        // Files are visited in name order, so when two plugins claim one provider name the
        // first file name wins, the same way on every reload.
        for (path, plugin) in &by_file {
            for provider in &plugin.identity().providers {
                if let Some(existing) = by_provider.get(provider) {
                    let existing: &LoadedPlugin = existing;
                    tracing::warn!(
                        provider = %provider,
                        file = %path.display(),
                        kept = %existing.identity().name,
                        "provider already served by another plugin; ignoring this claim"
                    );
                    continue;
                }
                by_provider.insert(provider.clone(), plugin.clone());
            }
        }
        Snapshot { by_file, by_provider }
    }

    /// The plugin serving `provider`, or an error naming the providers that are loaded.
    pub fn resolve(&self, provider: &str) -> Result<LoadedPlugin, PluginError> {
        self.by_provider.get(provider).cloned().ok_or_else(|| PluginError::UnknownProvider {
            provider: provider.to_string(),
            loaded: self.provider_names().join(", "),
        })
    }

    /// Served provider names, sorted.
    pub fn provider_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_provider.keys().cloned().collect();
        names.sort();
        names
    }

    /// True when no plugin is loaded.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }
}

/// What one reload did, file by file.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Files compiled and published (new or changed).
    pub(crate) loaded: Vec<PathBuf>,
    /// Files whose new contents were rejected; the previous version, if any, stays published.
    pub rejected: Vec<(PathBuf, PluginError)>,
    /// Files that disappeared; their plugins were unloaded.
    pub(crate) unloaded: Vec<PathBuf>,
}

/// Loaded plugins, published through an atomic pointer swap.
pub struct PluginRegistry {
    runtime: Arc<PluginRuntime>,
    dir: PathBuf,
    current: ArcSwap<Snapshot>,
    /// Serialises reloads so two never race to publish.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// An empty registry over `dir`; call [`PluginRegistry::reload`] to load what is there.
    pub(crate) fn new(runtime: Arc<PluginRuntime>, dir: PathBuf) -> Self {
        PluginRegistry {
            runtime,
            dir,
            current: ArcSwap::from_pointee(Snapshot::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rescan the directory: compile new and changed `*.wasm` files, keep the last good version of
    /// any file that fails, unload deleted files, then publish the result in one swap.
    pub async fn reload(&self) -> ReloadReport {
        let _serialised = self.reloading.lock().await;
        let previous = self.snapshot();
        let mut report = ReloadReport::default();
        let mut next = BTreeMap::new();
        for path in plugin_files(&self.dir) {
            let old = previous.by_file.get(&path);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    keep_or_reject(&mut next, &mut report, path, old, PluginError::Invalid(e.to_string()));
                    continue;
                }
            };
            if let Some(unchanged) = old.filter(|old| old.digest() == super::runtime::sha256_hex(&bytes)) {
                next.insert(path, unchanged.clone());
                continue;
            }
            match self.runtime.load(bytes).await {
                Ok(plugin) => {
                    let id = plugin.identity();
                    tracing::info!(
                        file = %path.display(), plugin = %id.name, version = %id.version,
                        providers = %id.providers.join(","), "plugin loaded"
                    );
                    report.loaded.push(path.clone());
                    next.insert(path, plugin);
                }
                Err(error) => keep_or_reject(&mut next, &mut report, path, old, error),
            }
        }
        for path in previous.by_file.keys().filter(|p| !next.contains_key(*p)) {
            tracing::info!(file = %path.display(), "plugin file removed; plugin unloaded");
            report.unloaded.push(path.clone());
        }
        self.current.store(Arc::new(Snapshot::from_files(next)));
        report
    }
}

fn keep_or_reject(
    next: &mut BTreeMap<PathBuf, LoadedPlugin>,
    report: &mut ReloadReport,
    path: PathBuf,
    old: Option<&LoadedPlugin>,
    error: PluginError,
) {
    match old {
        Some(old) => {
            tracing::warn!(file = %path.display(), error = %error, kept_version = %old.identity().version,
                "plugin file rejected; keeping the version already loaded");
            next.insert(path.clone(), old.clone());
        }
        None => tracing::warn!(file = %path.display(), error = %error, "plugin file rejected"),
    }
    report.rejected.push((path, error));
}

/// `*.wasm` files directly in `dir`, in name order. Hidden files are skipped so that writing a
/// `.name.wasm.tmp` and renaming it into place is the safe way to deploy.
fn plugin_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "plugins directory cannot be read");
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.') && name.ends_with(".wasm") && path.is_file()
        })
        .collect();
    files.sort();
    files
}
