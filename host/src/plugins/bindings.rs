//! The one `bindgen!` of the host: Rust types and call stubs for the `provider` world.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "provider",
    exports: { default: async },
});

pub use self::aigw::plugin::types;
