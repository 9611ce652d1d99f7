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
    /// `files` in precedence order: when two plugins claim one provider name, the first wins
    /// (the earlier directory, then the earlier file name), the same way on every reload.
    fn from_files(files: Vec<(PathBuf, LoadedPlugin)>) -> Self {
        let mut by_provider = HashMap::new();
        for (path, plugin) in &files {
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
        Snapshot { by_file: files.into_iter().collect(), by_provider }
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

    /// The loaded files in path order, each with the provider names another file's plugin
    /// won from it (see [`Snapshot::from_files`]).
    pub(crate) fn files(&self) -> Vec<(&Path, &LoadedPlugin, Vec<&str>)> {
        self.by_file
            .iter()
            .map(|(path, plugin)| {
                let lost = plugin
                    .identity()
                    .providers
                    .iter()
                    .filter(|provider| {
                        self.by_provider.get(*provider).is_some_and(|won| won.digest() != plugin.digest())
                    })
                    .map(String::as_str)
                    .collect();
                (path.as_path(), plugin, lost)
            })
            .collect()
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
    /// Of those, how many came from the cache of compiled components.
    pub(crate) from_cache: usize,
    /// Files whose new contents were rejected; the previous version, if any, stays published.
    pub rejected: Vec<(PathBuf, PluginError)>,
    /// Files that disappeared; their plugins were unloaded.
    pub(crate) unloaded: Vec<PathBuf>,
}

/// Loaded plugins, published through an atomic pointer swap.
pub struct PluginRegistry {
    runtime: Arc<PluginRuntime>,
    /// Searched in order; an earlier directory's plugin wins a provider name.
    dirs: Vec<PathBuf>,
    current: ArcSwap<Snapshot>,
    /// Serialises reloads so two never race to publish.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// An empty registry over `dirs`; call [`PluginRegistry::reload`] to load what is there.
    pub(crate) fn new(runtime: Arc<PluginRuntime>, dirs: Vec<PathBuf>) -> Self {
        PluginRegistry {
            runtime,
            dirs,
            current: ArcSwap::from_pointee(Snapshot::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rescan the directories: compile new and changed `*.wasm` files, keep the last good version
    /// of any file that fails, unload deleted files, then publish the result in one swap.
    pub async fn reload(&self) -> ReloadReport {
        let _serialised = self.reloading.lock().await;
        let previous = self.snapshot();
        let mut report = ReloadReport::default();
        let mut next = Vec::new();
        for path in self.dirs.iter().flat_map(|dir| plugin_files(dir)) {
            let old = previous.by_file.get(&path);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    keep_or_reject(&mut next, &mut report, path, old, PluginError::Invalid(e.to_string()));
                    continue;
                }
            };
            if let Some(unchanged) = old.filter(|old| old.digest() == super::runtime::sha256_hex(&bytes)) {
                next.push((path, unchanged.clone()));
                continue;
            }
            match self.runtime.load(bytes).await {
                Ok(plugin) => {
                    let id = plugin.identity();
                    tracing::info!(
                        file = %path.display(), plugin = %id.name, version = %id.version,
                        providers = %id.providers.join(","), from_cache = plugin.from_cache(), "plugin loaded"
                    );
                    report.from_cache += usize::from(plugin.from_cache());
                    report.loaded.push(path.clone());
                    next.push((path, plugin));
                }
                Err(error) => keep_or_reject(&mut next, &mut report, path, old, error),
            }
        }
        for path in previous.by_file.keys().filter(|p| !next.iter().any(|(kept, _)| kept == *p)) {
            tracing::info!(file = %path.display(), "plugin file removed; plugin unloaded");
            report.unloaded.push(path.clone());
        }
        self.runtime.retain_cached(&next.iter().map(|(_, plugin)| plugin.digest()).collect::<Vec<_>>());
        self.current.store(Arc::new(Snapshot::from_files(next)));
        report
    }
}

fn keep_or_reject(
    next: &mut Vec<(PathBuf, LoadedPlugin)>,
    report: &mut ReloadReport,
    path: PathBuf,
    old: Option<&LoadedPlugin>,
    error: PluginError,
) {
    match old {
        Some(old) => {
            tracing::warn!(file = %path.display(), error = %error, kept_version = %old.identity().version,
                "plugin file rejected; keeping the version already loaded");
            next.push((path.clone(), old.clone()));
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
