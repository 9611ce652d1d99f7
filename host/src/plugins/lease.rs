//! A request's hold on a plugin sandbox: a live store while the plugin has work, only the slot
//! while the request waits on the model server.
//!
//! A request waits most of its life: for the model server's answer head, then between streamed
//! pieces. Holding a store through those waits would make memory grow with waiting requests
//! (each store keeps its guest's pages resident once it has run), and, because the pool keeps a used
//! slot's pages resident for speed, with the peak number of waiting requests ever seen. So a
//! wait longer than [`IDLE_RELEASE`] frees the store; the slot stays held, so capacity is still
//! refused up front and the request always finds a store again, a fresh one when it next needs
//! the plugin (`aigw-bench gateway`'s "RSS per open stream" guards the memory side).
//!
//! When the request ends, its store is retired: torn down, and the next request's instantiated,
//! after the answer has gone out (see [`LoadedPlugin::retire`]).

use super::PluginError;
use super::runtime::{LoadedPlugin, PluginIdentity, PluginSession, SlotPermit};
use std::future::Future;
use std::time::Duration;

/// How long a request keeps its store while it waits. Short enough that a model server's queue
/// or a slow model (tokens tens of milliseconds apart) holds slots but not stores; long enough
/// that a flowing stream (pieces microseconds to a few milliseconds apart) keeps one store.
pub(crate) const IDLE_RELEASE: Duration = Duration::from_millis(20);

/// A plugin, and the store or the slot a request holds for it.
pub struct PluginLease {
    plugin: LoadedPlugin,
    /// The live store; `None` while released.
    session: Option<PluginSession>,
    /// The slot kept while the store is released.
    slot: Option<SlotPermit>,
}

impl PluginLease {
    /// Take a slot and a fresh store for `plugin` (refused when every slot is taken).
    pub async fn new(plugin: LoadedPlugin) -> Result<Self, PluginError> {
        let session = plugin.session().await?;
        Ok(PluginLease { plugin, session: Some(session), slot: None })
    }

    /// The plugin's identity.
    pub(crate) fn identity(&self) -> &PluginIdentity {
        self.plugin.identity()
    }

    /// The live store, instantiating a fresh one in the held slot if it was released.
    pub(crate) async fn session(&mut self) -> Result<&mut PluginSession, PluginError> {
        match &mut self.session {
            Some(session) => Ok(session),
            empty => {
                let fresh = match self.slot.take() {
                    Some(slot) => self.plugin.session_in(slot).await?,
                    None => self.plugin.session().await?,
                };
                Ok(empty.insert(fresh))
            }
        }
    }

    /// Await `wait` (a model server's answer); if it takes longer than [`IDLE_RELEASE`], free the
    /// store meanwhile and keep the slot.
    pub(crate) async fn wait<T>(&mut self, wait: impl Future<Output = T>) -> T {
        if self.session.is_none() {
            return wait.await;
        }
        tokio::pin!(wait);
        match tokio::time::timeout(IDLE_RELEASE, &mut wait).await {
            Ok(done) => done,
            Err(_) => {
                self.slot = self.session.take().map(PluginSession::release);
                wait.await
            }
        }
    }
}

impl Drop for PluginLease {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.plugin.retire(session);
        }
    }
}
