//! Debounced directory watching: runs a reload once changes under a directory have settled.

use notify::{RecursiveMode, Watcher};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Keeps a filesystem watch alive; dropping it stops watching.
pub(crate) struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher").finish_non_exhaustive()
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DirWatcher {
    /// Watch `dir` and call `reload` once no event has arrived for `debounce`. A short debounce
    /// compiles half-written files (which are then rejected and retried); a long one delays
    /// deployments. Reloads never overlap: the next one waits for the previous to finish.
    pub(crate) fn start<F, Fut>(
        dir: &Path,
        recursive: bool,
        debounce: Duration,
        reload: F,
    ) -> Result<Self, notify::Error>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let changed = Arc::new(Notify::new());
        let signal = Arc::clone(&changed);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.kind.is_access() => {}
            Ok(_) => signal.notify_one(),
            Err(error) => tracing::warn!(%error, "directory watch error"),
        })?;
        let mode = if recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        watcher.watch(dir, mode)?;
        let task = tokio::spawn(async move {
            loop {
                changed.notified().await;
                while tokio::time::timeout(debounce, changed.notified()).await.is_ok() {}
                reload().await;
            }
        });
        Ok(DirWatcher { _watcher: watcher, task })
    }
}
