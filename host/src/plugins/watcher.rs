//! Watches the plugins directory and reloads the registry after changes settle (debounced).

use super::PluginRegistry;
use notify::{RecursiveMode, Watcher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Keeps the filesystem watch alive; dropping it stops watching.
pub struct PluginWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PluginWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginWatcher").finish_non_exhaustive()
    }
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PluginWatcher {
    /// Start watching `registry.dir()`. A reload runs once no event has arrived for `debounce`:
    /// a short debounce compiles half-written files (which are then rejected and retried), a long
    /// one delays deployments.
    pub fn start(registry: Arc<PluginRegistry>, debounce: Duration) -> Result<Self, notify::Error> {
        let changed = Arc::new(Notify::new());
        let signal = Arc::clone(&changed);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.kind.is_access() => {}
            Ok(_) => signal.notify_one(),
            Err(error) => tracing::warn!(%error, "plugins directory watch error"),
        })?;
        watcher.watch(registry.dir(), RecursiveMode::NonRecursive)?;
        let task = tokio::spawn(async move {
            loop {
                changed.notified().await;
                // Debounce: wait until the directory has been quiet for `debounce`.
                while tokio::time::timeout(debounce, changed.notified()).await.is_ok() {}
                let report = registry.reload().await;
                tracing::info!(
                    loaded = report.loaded.len(),
                    rejected = report.rejected.len(),
                    unloaded = report.unloaded.len(),
                    "plugins reloaded"
                );
            }
        });
        Ok(PluginWatcher { _watcher: watcher, task })
    }
}
