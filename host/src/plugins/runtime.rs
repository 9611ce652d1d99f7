//! The Wasm sandbox: one engine, components compiled once, a fresh store per request with a memory
//! cap and a per-call deadline.
//!
//! A fresh store costs an instantiation before the request's first plugin call and a teardown
//! after its last. Both are moved off the request's path: when a request is done, its store is
//! dropped and a new one instantiated for the next request of that plugin, after the answer has
//! been written (see [`LoadedPlugin::retire`]). The store a request gets is still one that no
//! request has touched: instantiated, then left alone until a request takes it.

use super::bindings::{ProviderCore, ProviderCoreIndices, chat, embeddings};
use super::cache::{CompiledCache, Lookup};
use super::epoch::{Alive, EpochTicker};
use super::{PluginError, wit};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// Resource limits applied to every plugin store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Linear memory a single store may grow to, in bytes. Past it, growth fails and the guest
    /// (a Rust guest aborts on allocation failure) traps: that request fails, no other.
    pub memory_bytes: usize,
    /// Wall time one plugin call may run. Checked at epoch ticks (`deadline / 10` apart), so a
    /// runaway call is stopped within about 110 % of the deadline, yielding to other tasks at
    /// every tick meanwhile.
    pub call_deadline: Duration,
    /// Plugin stores that may exist at once (pooling allocator slots). One store lives for one
    /// gateway request, streams included; past this, requests get 503.
    pub max_concurrent: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits { memory_bytes: 64 << 20, call_deadline: Duration::from_millis(100), max_concurrent: 1024 }
    }
}

/// Bytes a plugin may print to stdout or stderr per request; more makes its writes fail.
const GUEST_OUTPUT_CAPACITY: usize = 16 << 10;

/// The shared Wasm engine and the inert WASI environment every plugin runs in.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: SandboxLimits,
    /// Bounds every call in time; counts the stores alive (each request holds at most one,
    /// none while it waits).
    ticker: Arc<EpochTicker>,
    /// One permit per pool slot. A request holds one for its whole life, even while it holds no
    /// store (an idle stream), so a permit holder always finds a free slot.
    slots: Arc<tokio::sync::Semaphore>,
    /// Machine code compiled by earlier runs (`AIGW_PLUGINS__CACHE_DIR`), when set.
    cache: Option<CompiledCache>,
    /// Stores instantiated ahead and not yet taken, across all plugins (at most [`READY_STORES`]).
    ready: Arc<AtomicUsize>,
}

/// Stores kept instantiated ahead of requests, across all plugins; the pooling allocator has this
/// many slots beyond `max_concurrent`, so a ready store never takes a request's place.
const READY_STORES: u32 = 16;

/// Stores kept ready for one plugin. At concurrency 1 one would do; a few more let a burst of
/// requests find stores ready while the requests before them are still being torn down.
const READY_PER_PLUGIN: usize = 4;

/// How the runtime's engine is set up beyond the sandbox limits.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuntimeOptions {
    /// wasmtime writes `/tmp/perf-<pid>.map` as it compiles, so that `perf report` names each
    /// plugin function (`wasm[0]::function[73]`, or its own name when the component keeps a
    /// name section) instead of a bare JIT address.
    pub(crate) perf_map: bool,
    /// Where compiled components are kept between runs.
    pub(crate) cache_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl PluginRuntime {
    /// Build the engine (Cranelift, pooling allocator, epoch interruption) and the WASI linker.
    pub fn new(limits: SandboxLimits) -> Result<Arc<Self>, PluginError> {
        Self::with_options(limits, RuntimeOptions::default())
    }

    /// As [`PluginRuntime::new`], with a perf map or a cache of compiled components.
    pub(crate) fn with_options(limits: SandboxLimits, options: RuntimeOptions) -> Result<Arc<Self>, PluginError> {
        let mut pool = PoolingAllocationConfig::new();
        let slots = limits.max_concurrent.max(1).saturating_add(READY_STORES);
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            .max_memory_size(limits.memory_bytes)
            // Keep recycled slots' pages resident and reset only the dirty ones (pagemap scan,
            // Linux 6.7+): page faults on the guest heap and the fiber stack otherwise dominate a
            // fresh store's round trip (`aigw-bench plugin` guards it).
            .linear_memory_keep_resident(4 << 20)
            .async_stack_keep_resident(128 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .table_keep_resident(64 << 10);
        // `max_unused_warm_slots` stays at its default (100). At 0, warm slots are reused least
        // recently used first, which saves memory per open stream but costs CPU per completion
        // at concurrency 64 (colder slots), and CPU is the scarcer budget (`aigw-bench gateway`,
        // "RSS per open stream" and "CPU µs/req", weighs the two).
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if options.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
        let ticker = EpochTicker::start(&engine, tick_period(limits.call_deadline))
            .map_err(|e| PluginError::Invalid(format!("cannot start the epoch ticker: {e}")))?;
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent as usize));
        let cache = match &options.cache_dir {
            Some(dir) => Some(
                CompiledCache::open(dir, &engine).map_err(|source| PluginError::Cache { dir: dir.clone(), source })?,
            ),
            None => None,
        };
        Ok(Arc::new(PluginRuntime { engine, linker, limits, ticker, slots, cache, ready: Arc::default() }))
    }

    /// Slots held by requests (each request in flight holds one, waiting or not).
    pub(crate) fn slots_in_use(&self) -> usize {
        (self.limits.max_concurrent as usize).saturating_sub(self.slots.available_permits())
    }

    /// Stores alive (requests whose plugin is working, or that have not waited long yet).
    pub(crate) fn stores_alive(&self) -> usize {
        self.ticker.stores_alive()
    }

    /// Stores instantiated ahead and not yet taken by a request, across plugins.
    pub(crate) fn stores_ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether the epoch ticker sleeps because no store has been alive for a while (an idle
    /// gateway wakes no thread); the next store wakes it.
    pub fn epoch_ticker_asleep(&self) -> bool {
        self.ticker.asleep()
    }

    /// Compile and validate a component: a binary component exporting the `provider` world whose
    /// `info()` is sane. Compilation (Cranelift) runs on the blocking pool, off the async workers.
    pub async fn load(self: &Arc<Self>, bytes: Vec<u8>) -> Result<LoadedPlugin, PluginError> {
        check_component_header(&bytes)?;
        let runtime = Arc::clone(self);
        let Compiled { pre, core, embeddings, chat, wit_version, digest, imports, cached } =
            tokio::task::spawn_blocking(move || runtime.compile(&bytes))
                .await
                .map_err(|e| PluginError::Invalid(format!("compilation did not finish: {e}")))??;
        let mut plugin = LoadedPlugin {
            runtime: Arc::clone(self),
            pre,
            core,
            info: Arc::new(PluginIdentity::placeholder()),
            digest: digest.into(),
            imports: Arc::new(imports),
            cached,
            ready: Arc::new(ReadyStores { held: Mutex::default(), places: Arc::clone(&self.ready) }),
        };
        let info = plugin.call_info().await?;
        let answer_shape = match &chat {
            Some(chat) => Some(plugin.call_answer_shape(chat).await?),
            None => None,
        };
        let exports = LaterExports { embeddings, chat, answer_shape };
        plugin.info = Arc::new(PluginIdentity::validate(info, wit_version, exports)?);
        Ok(plugin)
    }

    fn compile(&self, bytes: &[u8]) -> Result<Compiled, PluginError> {
        let invalid = |e: wasmtime::Error| PluginError::Invalid(format!("{e:#}"));
        let digest = sha256_hex(bytes);
        let (component, cached) = match self.cache.as_ref().map(|cache| cache.get(&self.engine, &digest)) {
            Some(Lookup::Hit(component)) => (component, true),
            lookup => {
                if let Some(Lookup::Rejected(why)) = lookup {
                    tracing::warn!(%digest, %why, "precompiled plugin ignored; compiling it again");
                }
                let component = Component::new(&self.engine, bytes).map_err(invalid)?;
                (component, false)
            }
        };
        let imports: Vec<String> =
            component.component_type().imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        if let Some(network) = imports.iter().find(|name| NETWORK_IMPORTS.iter().any(|p| name.starts_with(p))) {
            return Err(PluginError::Invalid(format!(
                "the component imports {network}: plugins get no network, the host does all I/O"
            )));
        }
        let wit_version = wit_version_of(&imports)?;
        let pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        let core = ProviderCoreIndices::new(&pre).map_err(|e| {
            PluginError::Invalid(format!(
                "the component does not export the aigw:plugin@{wit_version} provider world: {e:#}"
            ))
        })?;
        // Each interface is required from the version that added it on.
        let embeddings = later_export(EmbeddingsExport::find(&pre, wit_version), wit_version, "0.3.0", "embeddings")?;
        let chat = later_export(chat::GuestIndices::new(&pre), wit_version, "0.4.0", "chat")?;
        // Cached only once it has passed the import checks: a component refused here is never
        // written, so it is compiled (and refused) again, not loaded, next time.
        if let Some(cache) = self.cache.as_ref().filter(|_| !cached) {
            cache.put(&digest, &component);
        }
        Ok(Compiled { pre, core, embeddings, chat, wit_version, digest, imports, cached })
    }

    /// Drop cached compilations of components no longer loaded (see [`CompiledCache::retain`]).
    pub(crate) fn retain_cached(&self, digests: &[&str]) {
        if let Some(cache) = &self.cache {
            cache.retain(digests);
        }
    }

    fn new_store(&self) -> Store<GuestState> {
        let stdout = MemoryOutputPipe::new(GUEST_OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(GUEST_OUTPUT_CAPACITY);
        // Deny by default: no preopened directories, no environment or arguments, no sockets or
        // name lookups, and frozen clocks so a plugin cannot observe time either.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap { cap: self.limits.memory_bytes, hit: false },
            output: [(stdout, 0), (stderr, 0)],
            call_started: Instant::now(),
            deadline: self.limits.call_deadline,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // A new store's deadline is epoch 0, long past: without this, the component's start-up
        // code would hit it at once and yield to the scheduler on every instantiation.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            if state.call_started.elapsed() >= state.deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Let other tasks on this worker thread run while a slow call continues.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// The version of `wit/provider.wit` this host is built against.
pub(crate) const WIT_VERSION: &str = "0.4.0";

/// The earlier versions whose components still load, newest first: they serve what their
/// version has (0.3.0 everything but tool calling, 0.2.0 neither embeddings nor tools).
pub(crate) const EARLIER_WIT_VERSIONS: [&str; 2] = ["0.3.0", "0.2.0"];

/// An interface export that versions from `since` on must have: absent from an earlier
/// component, it is `None`; absent from a later one, the component is refused.
fn later_export<T>(
    found: wasmtime::Result<T>,
    wit_version: &str,
    since: &str,
    interface: &str,
) -> Result<Option<T>, PluginError> {
    match found {
        Ok(indices) => Ok(Some(indices)),
        Err(_) if version_before(wit_version, since) => Ok(None),
        Err(e) => Err(PluginError::Invalid(format!(
            "the component does not export aigw:plugin/{interface}@{wit_version}: {e:#}"
        ))),
    }
}

/// Where a component's `embeddings` functions are. Found by the interface name of the version
/// the component was built against (`aigw:plugin/embeddings@0.3.0` in a 0.3.0 component): the
/// component model tells 0.x minor versions apart by name, and the interface is the same in every
/// version since, so the host's types fit any of them.
#[derive(Clone)]
struct EmbeddingsExport {
    build: wasmtime::component::ComponentExportIndex,
    parse: wasmtime::component::ComponentExportIndex,
}

impl EmbeddingsExport {
    fn find(pre: &InstancePre<GuestState>, wit_version: &str) -> wasmtime::Result<Self> {
        let component = pre.component();
        let name = format!("aigw:plugin/embeddings@{wit_version}");
        let missing = |what: &str| wasmtime::Error::msg(format!("no export {what}"));
        let interface = component.get_export_index(None, name.as_str()).ok_or_else(|| missing(&name))?;
        let function = |function: &str| {
            component.get_export_index(Some(&interface), function).ok_or_else(|| missing(&format!("{name}#{function}")))
        };
        Ok(EmbeddingsExport {
            build: function("build-embeddings-request")?,
            parse: function("parse-embeddings-response")?,
        })
    }
}

/// The `embeddings` functions of one instance.
struct EmbeddingsFuncs {
    build: wasmtime::component::TypedFunc<
        (&'static embeddings::EmbeddingsRequest,),
        (Result<wit::UpstreamRequest, wit::PluginError>,),
    >,
    parse: wasmtime::component::TypedFunc<(&'static [u8],), (Result<embeddings::EmbeddingsResult, wit::PluginError>,)>,
}

/// Whether `version` is older than `than` (both `0.<minor>.0`, as every accepted version is).
fn version_before(version: &str, than: &str) -> bool {
    let minor = |v: &str| v.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    minor(version) < minor(than)
}

/// The `aigw:plugin` version a component was built against, read from the interfaces it
/// imports (its types); refused unless this host speaks it. A component that imports none
/// uses no shared type and is taken as the current version.
fn wit_version_of(imports: &[String]) -> Result<&'static str, PluginError> {
    let Some(import) = imports.iter().find(|name| name.starts_with("aigw:plugin/")) else {
        return Ok(WIT_VERSION);
    };
    std::iter::once(WIT_VERSION)
        .chain(EARLIER_WIT_VERSIONS)
        .find(|version| import.strip_suffix(version).is_some_and(|rest| rest.ends_with('@')))
        .ok_or_else(|| {
            PluginError::Invalid(format!(
                "the component was built against {import}; this gateway speaks aigw:plugin@{WIT_VERSION} \
                 (and loads {}): rebuild it against this gateway's wit/provider.wit",
                EARLIER_WIT_VERSIONS.join(", ")
            ))
        })
}

/// Import prefixes refused at load time. The sandbox would answer them with PermissionDenied
/// anyway; refusing says plainly to the plugin author that translation must not do I/O.
const NETWORK_IMPORTS: [&str; 2] = ["wasi:sockets/", "wasi:http/"];

/// A compiled component before its `info()` has been checked.
struct Compiled {
    pre: InstancePre<GuestState>,
    core: ProviderCoreIndices,
    embeddings: Option<EmbeddingsExport>,
    chat: Option<chat::GuestIndices>,
    wit_version: &'static str,
    digest: String,
    imports: Vec<String>,
    cached: bool,
}

fn tick_period(deadline: Duration) -> Duration {
    (deadline / 10).max(Duration::from_millis(1))
}

/// Rejects what is not a binary component before Cranelift sees it: text (WAT is never
/// accepted), core modules, truncated files.
fn check_component_header(bytes: &[u8]) -> Result<(), PluginError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    match bytes.get(..8) {
        Some(head) if &head[..4] == MAGIC && head[6..8] == [1, 0] => Ok(()),
        Some(head) if &head[..4] == MAGIC => Err(PluginError::Invalid(
            "this is a core Wasm module, not a component: build with `cargo component build` or \
             `--target wasm32-wasip2`"
                .into(),
        )),
        _ => Err(PluginError::Invalid("not a WebAssembly binary".into())),
    }
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// `bytes` as lower-case hexadecimal.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A clock stuck at zero: plugins are pure functions and must not depend on time.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Enforces the per-store memory cap and remembers whether it was hit, so the resulting trap is
/// reported as a memory-limit failure rather than a generic one.
struct MemoryCap {
    cap: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Per-store state: the inert WASI context and the sandbox bookkeeping.
struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    /// stdout and stderr, each with how many bytes were already forwarded to the log.
    output: [(MemoryOutputPipe, usize); 2],
    call_started: Instant,
    deadline: Duration,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// What a plugin says it is, validated.
#[derive(Clone)]
pub struct PluginIdentity {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Provider names served.
    pub providers: Vec<String>,
    /// Stream framing.
    pub framing: wit::Framing,
    /// Endpoint used when the model configuration names none (may contain `{aws-region}`).
    pub(crate) default_endpoint: Option<String>,
    /// The `aigw:plugin` version the component was built against.
    pub wit_version: &'static str,
    /// The exports of later versions it has.
    exports: LaterExports,
}

/// The interfaces added after 0.2.0 that a component exports, found at load.
#[derive(Clone, Default)]
struct LaterExports {
    /// `embeddings` (0.3.0 on).
    embeddings: Option<EmbeddingsExport>,
    /// `chat` (0.4.0 on).
    chat: Option<chat::GuestIndices>,
    /// What its `chat` answers look like, as `answers` said at load.
    answer_shape: Option<chat::AnswerShape>,
}

impl std::fmt::Debug for PluginIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginIdentity")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("providers", &self.providers)
            .field("framing", &self.framing)
            .field("default_endpoint", &self.default_endpoint)
            .field("wit_version", &self.wit_version)
            .field("can_embed", &self.can_embed())
            .field("can_chat", &self.can_chat())
            .field("answers_as_openai", &self.answers_as_openai())
            .finish()
    }
}

impl PluginIdentity {
    fn placeholder() -> Self {
        PluginIdentity {
            name: "(loading)".into(),
            version: String::new(),
            providers: Vec::new(),
            framing: wit::Framing::Sse,
            default_endpoint: None,
            wit_version: WIT_VERSION,
            exports: LaterExports::default(),
        }
    }

    /// Whether the plugin exports embeddings (a 0.2.0 component does not). One that does may
    /// still answer that its provider has none.
    pub fn can_embed(&self) -> bool {
        self.exports.embeddings.is_some()
    }

    /// Whether the plugin exports `chat`, which carries tools (0.4.0 on). One that does may
    /// still answer that its provider cannot call tools.
    pub fn can_chat(&self) -> bool {
        self.exports.chat.is_some()
    }

    /// What the component cannot do because it was built against an earlier contract, for
    /// operators: `None` when it has everything this host offers.
    pub fn missing(&self) -> Option<&'static str> {
        match (self.can_embed(), self.can_chat()) {
            (true, true) => None,
            (true, false) => Some("no tool calling"),
            (false, _) => Some("no embeddings or tool calling"),
        }
    }

    /// Whether the plugin's `chat` answers are OpenAI's objects and chunks, which an OpenAI
    /// client may be sent as they came.
    pub fn answers_as_openai(&self) -> bool {
        matches!(self.exports.answer_shape, Some(chat::AnswerShape::Openai))
    }

    fn validate(info: wit::PluginInfo, wit_version: &'static str, exports: LaterExports) -> Result<Self, PluginError> {
        let token_ok = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        };
        if !token_ok(&info.name) {
            return Err(PluginError::BadInfo(format!("invalid plugin name {:?}", info.name)));
        }
        if !token_ok(&info.version) {
            return Err(PluginError::BadInfo(format!("invalid plugin version {:?}", info.version)));
        }
        if info.providers.is_empty() {
            return Err(PluginError::BadInfo("the plugin serves no provider".into()));
        }
        if let Some(bad) = info.providers.iter().find(|p| !token_ok(p) || p.contains('/')) {
            return Err(PluginError::BadInfo(format!("invalid provider name {bad:?}")));
        }
        if let Some(endpoint) = &info.default_endpoint {
            let example = endpoint.replace("{aws-region}", "us-east-1");
            let usable = (example.starts_with("http://") || example.starts_with("https://"))
                && example.len() <= 255
                && example.parse::<http::Uri>().is_ok_and(|uri| uri.query().is_none());
            if !usable {
                return Err(PluginError::BadInfo(format!("invalid default endpoint {endpoint:?}")));
            }
        }
        Ok(PluginIdentity {
            name: info.name,
            version: info.version,
            providers: info.providers,
            framing: info.framing,
            default_endpoint: info.default_endpoint,
            wit_version,
            exports,
        })
    }
}

/// A compiled, validated plugin: cheap to clone, instantiated afresh for every request.
#[derive(Clone)]
pub struct LoadedPlugin {
    runtime: Arc<PluginRuntime>,
    pre: InstancePre<GuestState>,
    core: ProviderCoreIndices,
    info: Arc<PluginIdentity>,
    /// Shared, so that a clone (one per request, see [`LoadedPlugin::retire`]) allocates nothing.
    digest: Arc<str>,
    imports: Arc<Vec<String>>,
    /// Loaded from the cache of compiled components rather than compiled.
    cached: bool,
    /// Stores of this plugin instantiated ahead, untouched, for the next requests.
    ready: Arc<ReadyStores>,
}

/// An instantiated store and what calling into it needs.
struct Sandbox {
    store: Store<GuestState>,
    instance: Instance,
    core: ProviderCore,
}

/// One plugin's stores instantiated ahead, counted against the runtime's [`READY_STORES`]
/// places; dropped with the last handle on the plugin (a hot reload frees them).
struct ReadyStores {
    held: Mutex<Held>,
    /// The runtime's count of ready stores, across plugins.
    places: Arc<AtomicUsize>,
}

/// A plugin's ready stores, and the places claimed for stores being instantiated.
#[derive(Default)]
struct Held {
    stores: Vec<Sandbox>,
    claimed: usize,
}

impl ReadyStores {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Option<Sandbox> {
        let taken = self.held().stores.pop();
        if taken.is_some() {
            self.places.fetch_sub(1, Ordering::Relaxed);
        }
        taken
    }

    /// Claim a place for one more ready store, if this plugin and the runtime have room.
    fn claim(&self) -> bool {
        let mut held = self.held();
        let room = held.stores.len() + held.claimed < READY_PER_PLUGIN
            && self
                .places
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < READY_STORES as usize).then_some(n + 1))
                .is_ok();
        held.claimed += usize::from(room);
        room
    }

    /// Fill a claimed place (or give it back when instantiation failed).
    fn fill(&self, made: Option<Sandbox>) {
        let mut held = self.held();
        held.claimed -= 1;
        match made {
            Some(sandbox) => held.stores.push(sandbox),
            None => {
                self.places.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for ReadyStores {
    fn drop(&mut self) {
        let held = self.held().stores.len();
        self.places.fetch_sub(held, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("info", &self.info).field("digest", &self.digest).finish()
    }
}

impl LoadedPlugin {
    /// Name, version, providers and framing, as validated at load time.
    pub fn identity(&self) -> &PluginIdentity {
        &self.info
    }

    /// Whether its machine code came from `AIGW_PLUGINS__CACHE_DIR` instead of a compile.
    pub fn from_cache(&self) -> bool {
        self.cached
    }

    /// SHA-256 of the component bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Interfaces the component imports (all satisfied by the inert WASI environment).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// A fresh sandbox for one request: new store, new instance, nothing shared with any other.
    /// Fails with [`PluginError::Capacity`] when every slot is taken.
    pub async fn session(&self) -> Result<PluginSession, PluginError> {
        let permit = Arc::clone(&self.runtime.slots).try_acquire_owned().map_err(|_| PluginError::Capacity)?;
        self.session_in(SlotPermit { _held: permit }).await
    }

    /// A fresh sandbox in a slot the caller already holds (see [`PluginSession::release`]): one
    /// instantiated ahead if there is one, else instantiated now.
    pub(crate) async fn session_in(&self, permit: SlotPermit) -> Result<PluginSession, PluginError> {
        // Counted (and the epoch ticker awake) before any guest code runs, start-up included.
        let alive = Alive::new(&self.runtime.ticker);
        let sandbox = match self.ready.take() {
            Some(sandbox) => sandbox,
            None => self.instantiate().await?,
        };
        let Sandbox { store, instance, core } = sandbox;
        Ok(PluginSession { store, instance, core, chat: None, info: Arc::clone(&self.info), _alive: alive, permit })
    }

    /// A new store with the component instantiated in it; the caller holds an [`Alive`].
    async fn instantiate(&self) -> Result<Sandbox, PluginError> {
        let mut store = self.runtime.new_store();
        let instance = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
                PluginError::Capacity
            } else {
                PluginError::Trap(format!("{e:#}"))
            }
        })?;
        let core = self.core.load(&mut store, &instance).map_err(|e| PluginError::Trap(format!("{e:#}")))?;
        Ok(Sandbox { store, instance, core })
    }

    /// A request is done with `session`: tear it down and instantiate a store for the next
    /// request, in a task of its own, so both happen after the request's answer is written
    /// rather than before. Outside a Tokio runtime the session is simply dropped.
    pub(crate) fn retire(&self, session: PluginSession) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let plugin = self.clone();
        runtime.spawn(async move {
            // The store goes back to the pool and its slot is freed before the next is taken.
            drop(session);
            plugin.replenish().await;
        });
    }

    /// Instantiate one store ahead, unless this plugin has enough ready or all ready places are
    /// taken.
    async fn replenish(&self) {
        if !self.ready.claim() {
            return;
        }
        let alive = Alive::new(&self.runtime.ticker);
        let made = self.instantiate().await;
        drop(alive);
        if let Err(error) = &made {
            tracing::warn!(plugin = %self.info.name, %error, "cannot instantiate a store ahead");
        }
        self.ready.fill(made.ok());
    }

    async fn call_info(&self) -> Result<wit::PluginInfo, PluginError> {
        let mut session = self.session().await?;
        session.begin_call();
        let result = session.core.call_info(&mut session.store).await;
        session.finish(result)
    }

    async fn call_answer_shape(&self, indices: &chat::GuestIndices) -> Result<chat::AnswerShape, PluginError> {
        let mut session = self.session().await?;
        let exports =
            indices.load(&mut session.store, &session.instance).map_err(|e| PluginError::Trap(format!("{e:#}")))?;
        session.begin_call();
        let result = exports.call_answers(&mut session.store).await;
        session.finish(result)
    }
}

/// A claim on one sandbox slot, held by a request that has no store at the moment.
#[derive(Debug)]
pub struct SlotPermit {
    _held: tokio::sync::OwnedSemaphorePermit,
}

/// One request's sandbox. Dropping it frees the store and returns its slot to the pool.
pub struct PluginSession {
    // Field order is drop order: the store goes back to the pool before the permit is released.
    store: Store<GuestState>,
    instance: Instance,
    core: ProviderCore,
    /// The `chat` export once a call has looked it up.
    chat: Option<chat::Guest>,
    info: Arc<PluginIdentity>,
    _alive: Alive,
    permit: SlotPermit,
}

impl std::fmt::Debug for PluginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSession").field("plugin", &self.info.name).finish_non_exhaustive()
    }
}

impl PluginSession {
    /// The plugin this sandbox runs.
    pub fn identity(&self) -> &PluginIdentity {
        &self.info
    }

    /// Free the store (its memory goes back to the pool) but keep the slot, for a request that
    /// will need a fresh store later.
    pub(crate) fn release(self) -> SlotPermit {
        self.permit
    }

    /// `build-request`: canonical model request → upstream HTTP request.
    pub async fn build_request(&mut self, request: &wit::ModelRequest) -> Result<wit::UpstreamRequest, PluginError> {
        self.begin_call();
        let result = self.core.call_build_request(&mut self.store, request).await;
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// `parse-response`: complete upstream body → completion.
    pub async fn parse_response(&mut self, body: &[u8]) -> Result<wit::Completion, PluginError> {
        self.begin_call();
        let result = self.core.call_parse_response(&mut self.store, body).await;
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// `parse-event`: one decoded stream event → stream chunk.
    pub async fn parse_event(&mut self, event: Option<&str>, data: &[u8]) -> Result<wit::StreamChunk, PluginError> {
        self.begin_call();
        let result = self.core.call_parse_event(&mut self.store, event, data).await;
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// `build-embeddings-request`: canonical embeddings request → upstream HTTP request. A 0.2.0
    /// plugin has no such export: [`PluginError::NoEmbeddings`].
    pub async fn build_embeddings_request(
        &mut self,
        request: &embeddings::EmbeddingsRequest,
    ) -> Result<wit::UpstreamRequest, PluginError> {
        let exports = self.embeddings()?;
        self.begin_call();
        let result = exports.build.call_async(&mut self.store, (request,)).await.map(|(answer,)| answer);
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// `parse-embeddings-response`: the model server's complete answer → vectors.
    pub async fn parse_embeddings_response(
        &mut self,
        body: &[u8],
    ) -> Result<embeddings::EmbeddingsResult, PluginError> {
        let exports = self.embeddings()?;
        self.begin_call();
        let result = exports.parse.call_async(&mut self.store, (body,)).await.map(|(answer,)| answer);
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// `build-chat-request`: a conversation with tools → upstream HTTP request. A plugin built
    /// before 0.4.0 has no such export: [`PluginError::NoChat`].
    pub async fn build_chat_request(
        &mut self,
        request: &chat::ChatRequest,
    ) -> Result<wit::UpstreamRequest, PluginError> {
        let exports = self.chat()?;
        self.begin_call();
        let result = exports.call_build_chat_request(&mut self.store, request).await;
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// `parse-chat-response`: complete upstream body → the conversation's next turn.
    pub async fn parse_chat_response(&mut self, body: &[u8]) -> Result<chat::ChatCompletion, PluginError> {
        let exports = self.chat()?;
        self.begin_call();
        let result = exports.call_parse_chat_response(&mut self.store, body).await;
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// `parse-chat-event`: one decoded stream event → what it adds to the turn.
    pub async fn parse_chat_event(&mut self, event: Option<&str>, data: &[u8]) -> Result<chat::ChatChunk, PluginError> {
        let exports = self.chat()?;
        self.begin_call();
        let result = exports.call_parse_chat_event(&mut self.store, event, data).await;
        self.finish(result)?.map_err(PluginError::Guest)
    }

    /// The instance's `chat` export, looked up (and its types checked) on first use and kept for
    /// the session's later calls: a stream's every piece calls it. GitLab's endpoints never pay
    /// for it.
    fn chat(&mut self) -> Result<chat::Guest, PluginError> {
        if let Some(exports) = &self.chat {
            return Ok(exports.clone());
        }
        let Some(indices) = &self.info.exports.chat else {
            return Err(PluginError::NoChat { plugin: self.info.name.clone(), wit_version: self.info.wit_version });
        };
        let exports = indices.load(&mut self.store, &self.instance).map_err(|e| PluginError::Trap(format!("{e:#}")))?;
        Ok(self.chat.insert(exports).clone())
    }

    /// The instance's `embeddings` functions, looked up on first use (chat requests never pay for
    /// them).
    fn embeddings(&mut self) -> Result<EmbeddingsFuncs, PluginError> {
        let Some(export) = &self.info.exports.embeddings else {
            return Err(PluginError::NoEmbeddings {
                plugin: self.info.name.clone(),
                wit_version: self.info.wit_version,
            });
        };
        let trap = |e: wasmtime::Error| PluginError::Trap(format!("{e:#}"));
        Ok(EmbeddingsFuncs {
            build: self.instance.get_typed_func(&mut self.store, export.build).map_err(trap)?,
            parse: self.instance.get_typed_func(&mut self.store, export.parse).map_err(trap)?,
        })
    }

    fn begin_call(&mut self) {
        self.store.data_mut().call_started = Instant::now();
        self.store.set_epoch_deadline(1);
    }

    /// Classify a call's outcome (trap, deadline, memory cap) and forward what the guest printed.
    fn finish<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, PluginError> {
        self.forward_guest_output();
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let state = self.store.data();
        if state.limiter.hit {
            return Err(PluginError::MemoryLimit(state.limiter.cap));
        }
        if matches!(error.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
            return Err(PluginError::Deadline(state.deadline));
        }
        Err(PluginError::Trap(format!("{error:#}")))
    }

    fn forward_guest_output(&mut self) {
        let state = self.store.data_mut();
        for (stream, (pipe, forwarded)) in ["stdout", "stderr"].into_iter().zip(state.output.iter_mut()) {
            let printed = pipe.contents();
            let Some(new) = printed.get(*forwarded..).filter(|new| !new.is_empty()) else {
                continue;
            };
            *forwarded = printed.len();
            for line in String::from_utf8_lossy(new).lines() {
                tracing::info!(plugin = %self.info.name, version = %self.info.version, stream, "{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn components_of_this_and_the_previous_version_load() {
        let version = |import: &str| super::wit_version_of(&[import.to_string()]).map_err(|e| e.to_string());
        assert_eq!(version("aigw:plugin/types@0.4.0"), Ok("0.4.0"));
        assert_eq!(version("aigw:plugin/types@0.3.0"), Ok("0.3.0"));
        assert_eq!(version("aigw:plugin/types@0.2.0"), Ok("0.2.0"));
        for refused in ["aigw:plugin/types@0.1.0", "aigw:plugin/types@0.5.0", "aigw:plugin/types@10.4.0"] {
            let error = version(refused).unwrap_err();
            assert!(error.contains(refused) && error.contains("aigw:plugin@0.4.0"), "{error}");
        }
        assert_eq!(super::wit_version_of(&["wasi:cli/environment@0.2.6".to_string()]).ok(), Some("0.4.0"));
    }

    #[test]
    fn an_interface_is_required_from_the_version_that_added_it() {
        let missing = || -> wasmtime::Result<()> { Err(wasmtime::Error::msg("no such export")) };
        assert!(matches!(super::later_export(missing(), "0.3.0", "0.4.0", "chat"), Ok(None)));
        assert!(matches!(super::later_export(missing(), "0.2.0", "0.3.0", "embeddings"), Ok(None)));
        let refused = super::later_export(missing(), "0.4.0", "0.4.0", "chat").map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains("aigw:plugin/chat@0.4.0"), "{refused}");
        assert!(matches!(super::later_export(Ok(()), "0.4.0", "0.3.0", "embeddings"), Ok(Some(()))));
    }

    #[test]
    fn wit_version_is_the_one_in_the_wit_file() {
        let wit = include_str!("../../../wit/provider.wit");
        assert!(wit.contains(&format!("package aigw:plugin@{};", super::WIT_VERSION)));
    }
}
