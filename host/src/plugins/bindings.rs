//! The host's bindings of `wit/provider.wit`: the `provider-core` world every accepted version
//! exports, and the interfaces later versions export beside it (`embeddings` since 0.3.0, `chat`
//! since 0.4.0).

/// Identity, chat and completion calls: the same in every WIT version the host accepts (the
/// component model matches records by structure, so a 0.2.0 component's exports fit these types).
mod core {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "provider-core",
        exports: { default: async },
    });
}

/// The `embeddings` (0.3.0) and `chat` (0.4.0) exports, over the same shared types.
mod full {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "provider",
        exports: { default: async },
        with: { "aigw:plugin/types": super::core::aigw::plugin::types },
    });
}

pub use self::core::aigw::plugin::types;
pub(super) use self::core::{ProviderCore, ProviderCoreIndices};
pub use self::full::exports::aigw::plugin::{chat, embeddings};
