//! Provider plugins: the Wasm runtime that sandboxes them and the registry that routes to them
//! (reloaded by [`crate::watch::DirWatcher`]).

mod bindings;
mod cache;
mod epoch;
pub(crate) mod lease;
pub(crate) mod registry;
pub(crate) mod runtime;

pub use bindings::types as wit;
pub use bindings::{chat, embeddings};
pub use lease::PluginLease;
pub use registry::{PluginRegistry, Snapshot};
pub use runtime::{LoadedPlugin, PluginRuntime, PluginSession, SandboxLimits, SlotPermit};

/// Why a plugin could not be loaded or a plugin call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file is not a WebAssembly component this host can run.
    #[error("not a loadable component: {0}")]
    Invalid(String),
    /// The component loaded, but its `info()` is unusable.
    #[error("plugin info rejected: {0}")]
    BadInfo(String),
    /// No loaded plugin serves the requested provider name.
    #[error("no plugin serves provider '{provider}' (loaded: {loaded})")]
    UnknownProvider {
        /// The provider name asked for.
        provider: String,
        /// Comma-separated provider names currently served.
        loaded: String,
    },
    /// Every sandbox slot is in use.
    #[error("all plugin sandboxes are busy")]
    Capacity,
    /// The plugin trapped (a bug or a deliberate abort in the guest).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past its epoch deadline.
    #[error("plugin call exceeded its {0:?} deadline")]
    Deadline(std::time::Duration),
    /// The guest tried to grow its memory past the per-store cap.
    #[error("plugin exceeded its {0}-byte memory cap")]
    MemoryLimit(usize),
    /// The directory for compiled plugins cannot be made or written (at start only).
    #[error("AIGW_PLUGINS__CACHE_DIR {}: {source}", dir.display())]
    Cache {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin was built against a WIT version without embeddings (0.2.0).
    #[error(
        "plugin {plugin} cannot embed: it was built against aigw:plugin@{wit_version}, which has no embeddings; \
         rebuild it against aigw:plugin@{}",
        runtime::WIT_VERSION
    )]
    NoEmbeddings {
        /// The plugin's name.
        plugin: String,
        /// The version it was built against.
        wit_version: &'static str,
    },
    /// The plugin was built against a WIT version without tool calling (before 0.4.0), and the
    /// request needs it.
    #[error(
        "plugin {plugin} cannot carry this conversation (tools, tool results or fields beyond text): it was built \
         against aigw:plugin@{wit_version}, which has no tool calling; rebuild it against aigw:plugin@{}",
        runtime::WIT_VERSION
    )]
    NoChat {
        /// The plugin's name.
        plugin: String,
        /// The version it was built against.
        wit_version: &'static str,
    },
    /// The plugin understood the input and refused it: a typed domain error.
    #[error("{}", describe(.0))]
    Guest(wit::PluginError),
}

/// A plugin's typed error as a sentence (the generated `Display` is the debug form).
pub(crate) fn describe(error: &wit::PluginError) -> String {
    match error {
        wit::PluginError::InvalidInput(m) => format!("invalid input: {m}"),
        wit::PluginError::Unsupported(m) => format!("unsupported: {m}"),
        wit::PluginError::MalformedResponse(m) => format!("malformed model server answer: {m}"),
    }
}
