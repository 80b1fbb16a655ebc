//! The `wasm` runtime: containers whose image is a WebAssembly component or module, run in
//! wasmtime inside the node agent.
//!
//! - One engine per node, with the pooling allocator (instance slots made ahead of time,
//!   copy-on-write memory images) and epoch interruption: a ticker thread advances the epoch
//!   every [`EPOCH_TICK`], and every running instance yields to the async runtime at each tick,
//!   so a spinning guest never holds a thread and a stop takes effect within a tick.
//! - Compiled code is cached on disk by image digest under a key of the engine's settings, and
//!   pre-instantiated once per image (`CommandPre` / `ProxyPre` / `InstancePre`): starting an
//!   instance is then a matter of microseconds.
//! - Three kinds of image: a WASI 0.2 component exporting `wasi:http/incoming-handler` (an HTTP
//!   function: the container listens on its port and serves each request from a fresh
//!   instance), a component exporting `wasi:cli/run` (a program that runs until it exits), and
//!   a WASI preview 1 core module with `_start`.
//! - A memory limit is a `ResourceLimiter`: growth past it fails, and the container is reported
//!   `OOMKilled`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::logs::Stream;
use crate::{BoxFuture, ContainerSpec, ExitStatus, Running, Runtime, StartError};

/// How often the epoch advances: the granularity of yielding and stopping.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The guest's view of the host, for components.
struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: crate::outbound::OutboundHttp,
    limits: MemoryLimit,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The guest's view of the host, for preview 1 modules.
struct CoreHost {
    wasi: wasmtime_wasi::p1::WasiP1Ctx,
    limits: MemoryLimit,
}

/// A memory limit that records when it was hit, so the exit is reported as OOMKilled.
#[derive(Clone)]
struct MemoryLimit {
    max: Option<usize>,
    hit: Arc<AtomicBool>,
    usage: Arc<crate::usage::Usage>,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.max.is_some_and(|max| desired > max) {
            self.hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.usage.set_memory(desired as u64);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// An image, compiled and pre-instantiated.
#[derive(Clone)]
enum Prepared {
    Http(ProxyPre<Host>),
    Command(CommandPre<Host>),
    Core(wasmtime::InstancePre<CoreHost>),
}

pub struct WasmRuntime {
    engine: Engine,
    cache_dir: PathBuf,
    engine_key: String,
    prepared: Mutex<HashMap<String, Prepared>>,
}

fn engine_config(pooling: bool) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.memory_init_cow(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(5_000)
            .total_core_instances(20_000)
            .total_memories(5_000)
            .total_tables(20_000)
            .total_stacks(5_000)
            .max_memory_size(1 << 30)
            .max_core_instances_per_component(32)
            .max_memories_per_component(8)
            .max_tables_per_module(8)
            .linear_memory_keep_resident(64 << 10)
            .table_keep_resident(16 << 10);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

impl WasmRuntime {
    /// An engine for this node; compiled code is cached under `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> anyhow::Result<WasmRuntime> {
        // The pooling allocator reserves address space up front; where that is refused
        // (a ulimit on virtual memory), fall back to allocating on demand.
        let engine = match Engine::new(&engine_config(true)) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("wasm: pooling allocator unavailable ({e}); allocating on demand");
                Engine::new(&engine_config(false))?
            }
        };
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            })?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        std::fs::create_dir_all(cache_dir.join(&engine_key))?;
        Ok(WasmRuntime {
            engine,
            cache_dir,
            engine_key,
            prepared: Mutex::new(HashMap::new()),
        })
    }

    fn cached_path(&self, digest: &str) -> PathBuf {
        self.cache_dir
            .join(&self.engine_key)
            .join(format!("{}.cwasm", digest.trim_start_matches("sha256:")))
    }

    /// The image compiled (from the disk cache when it is there) and pre-instantiated.
    async fn prepare(&self, image: &crate::images::StoredImage) -> Result<Prepared, StartError> {
        if let Some(p) = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&image.digest)
        {
            return Ok(p.clone());
        }
        let engine = self.engine.clone();
        let source = image.path.clone();
        let cached = self.cached_path(&image.digest);
        let prepared = tokio::task::spawn_blocking(move || compile(&engine, &source, &cached))
            .await
            .map_err(|e| StartError::InvalidImage(format!("compiling failed: {e}")))??;
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.digest.clone(), prepared.clone());
        Ok(prepared)
    }
}

fn invalid(e: impl std::fmt::Display) -> StartError {
    StartError::InvalidImage(e.to_string())
}

/// Compiles (or loads from the cache) and links one image.
fn compile(
    engine: &Engine,
    source: &std::path::Path,
    cached: &std::path::Path,
) -> Result<Prepared, StartError> {
    let bytes =
        std::fs::read(source).map_err(|e| invalid(format!("cannot read the image: {e}")))?;
    let is_component = bytes.get(..8) == Some(&[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);
    let is_module = bytes.get(..8) == Some(&[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
    if !is_component && !is_module {
        return Err(invalid(
            "the image is not a WebAssembly component or module",
        ));
    }
    // A cached artifact is used when it loads; one from another engine version is replaced.
    let load_cached = || -> Option<Result<Component, Module>> {
        if !cached.exists() {
            return None;
        }
        // SAFETY: wasmtime trusts precompiled code; this file is the node's own cache, written
        // whole (temp file + rename) by this function and never modified in place.
        #[allow(unsafe_code)]
        let loaded = unsafe {
            if is_component {
                Component::deserialize_file(engine, cached).map(Ok).ok()
            } else {
                Module::deserialize_file(engine, cached).map(Err).ok()
            }
        };
        loaded
    };
    let artifact = match load_cached() {
        Some(a) => a,
        None => {
            let compiled = if is_component {
                Component::new(engine, &bytes)
                    .map(Ok)
                    .map_err(|e| invalid(format!("the component does not validate: {e:#}")))?
            } else {
                Module::new(engine, &bytes)
                    .map(Err)
                    .map_err(|e| invalid(format!("the module does not validate: {e:#}")))?
            };
            let serialized = match &compiled {
                Ok(c) => c.serialize(),
                Err(m) => m.serialize(),
            };
            if let Ok(blob) = serialized {
                let tmp = cached.with_extension("tmp");
                if std::fs::write(&tmp, blob).is_ok() {
                    let _ = std::fs::rename(&tmp, cached);
                }
            }
            compiled
        }
    };
    match artifact {
        Ok(component) => {
            let mut linker: Linker<Host> = Linker::new(engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(invalid)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(invalid)?;
            let pre = linker.instantiate_pre(&component).map_err(|e| {
                invalid(format!(
                    "the component needs imports this node does not offer: {e:#}"
                ))
            })?;
            if let Ok(proxy) = ProxyPre::new(pre.clone()) {
                return Ok(Prepared::Http(proxy));
            }
            CommandPre::new(pre).map(Prepared::Command).map_err(|_| {
                invalid("the component exports neither wasi:cli/run nor wasi:http/incoming-handler")
            })
        }
        Err(module) => {
            let mut linker: wasmtime::Linker<CoreHost> = wasmtime::Linker::new(engine);
            wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut CoreHost| &mut h.wasi)
                .map_err(invalid)?;
            if module.get_export("_start").is_none() {
                return Err(invalid(
                    "the module has no _start export (it is not a WASI program)",
                ));
            }
            let pre = linker.instantiate_pre(&module).map_err(|e| {
                invalid(format!(
                    "the module needs imports this node does not offer: {e:#}"
                ))
            })?;
            Ok(Prepared::Core(pre))
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for crate::logs::LogWriter {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for crate::logs::LogWriter {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The WASI context a container's instances get: argv, environment, stdio into its log,
/// its volumes as preopened directories.
fn wasi_builder(spec: &ContainerSpec) -> Result<WasiCtxBuilder, StartError> {
    let mut b = WasiCtxBuilder::new();
    b.args(&spec.args)
        .envs(&spec.env)
        .stdout(spec.log.writer(Stream::Stdout))
        .stderr(spec.log.writer(Stream::Stderr));
    for m in &spec.mounts {
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|e| {
                StartError::Config(format!(
                    "cannot mount {} at {}: {e}",
                    m.host_path.display(),
                    m.guest_path
                ))
            })?;
    }
    Ok(b)
}

fn limit(spec: &ContainerSpec) -> MemoryLimit {
    MemoryLimit {
        max: spec.memory_limit.map(|m| m as usize),
        hit: Arc::new(AtomicBool::new(false)),
        usage: spec.usage.clone(),
    }
}

/// How long an instance with a CPU limit of `millicores` pauses after each tick it ran, so that
/// it runs `millicores`/1000 of the time (500m: one tick on, one tick off).
pub fn cpu_pause(millicores: u64) -> Duration {
    let m = millicores.clamp(1, 1000);
    EPOCH_TICK * (1000 - m) as u32 / m as u32
}

/// Every running instance yields at each epoch tick, so it never holds a thread for long; one
/// with a CPU limit also pauses in proportion (the limit enforced by epoch interruption).
fn yield_every_tick<T: Send>(store: &mut Store<T>, cpu_limit: Option<u64>) {
    match cpu_limit.filter(|m| *m < 1000) {
        Some(millicores) => {
            let pause = cpu_pause(millicores);
            store.epoch_deadline_callback(move |_| {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::time::sleep(pause)),
                ))
            });
        }
        None => store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1))),
    }
    store.set_epoch_deadline(1);
}

/// What an instance's end means for its container.
fn classify(result: wasmtime::Result<i32>, limits: &MemoryLimit) -> ExitStatus {
    if limits.hit.load(Ordering::Relaxed) {
        return ExitStatus::OomKilled;
    }
    match result {
        Ok(code) => ExitStatus::Exited(code),
        Err(e) => {
            if let Some(I32Exit(code)) = e.downcast_ref::<I32Exit>() {
                return ExitStatus::Exited(*code);
            }
            let trap = e.downcast_ref::<Trap>().copied();
            ExitStatus::Failed {
                // An abort (a Rust panic is one) is what SIGABRT would be for a process.
                exit_code: if trap.is_some() { 134 } else { 1 },
                message: format!("{e:#}"),
            }
        }
    }
}

impl WasmRuntime {
    fn start_program(
        &self,
        prepared: Prepared,
        spec: ContainerSpec,
    ) -> Result<Running, StartError> {
        let (exit_tx, exit_rx) = oneshot::channel();
        let (stop_tx, mut stop_rx) = watch::channel(None);
        let limits = limit(&spec);
        let cpu_limit = spec.cpu_limit;
        let builder = wasi_builder(&spec)?;
        let engine = self.engine.clone();
        let log = spec.log.clone();
        let usage = spec.usage.clone();
        tokio::spawn(async move {
            let run = crate::usage::Metered::new(
                run_program(
                    engine,
                    prepared,
                    builder,
                    limits.clone(),
                    cpu_limit,
                    spec.outbound.clone(),
                ),
                usage,
            );
            let result = tokio::select! {
                r = run => Some(r),
                _ = stop_rx.wait_for(|s| s.is_some()) => None,
            };
            log.finish();
            let status = match result {
                None => ExitStatus::Stopped,
                Some(r) => classify(r, &limits),
            };
            let _ = exit_tx.send(status);
        });
        Ok(Running::new(exit_rx, stop_tx))
    }
}

async fn run_program(
    engine: Engine,
    prepared: Prepared,
    mut builder: WasiCtxBuilder,
    limits: MemoryLimit,
    cpu_limit: Option<u64>,
    outbound: Option<Arc<dyn crate::outbound::Outbound>>,
) -> wasmtime::Result<i32> {
    match prepared {
        Prepared::Command(pre) => {
            let host = Host {
                wasi: builder.build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                hooks: crate::outbound::OutboundHttp(outbound),
                limits,
            };
            let mut store = Store::new(&engine, host);
            store.limiter(|h| &mut h.limits);
            yield_every_tick(&mut store, cpu_limit);
            let command = pre.instantiate_async(&mut store).await?;
            match command.wasi_cli_run().call_run(&mut store).await? {
                Ok(()) => Ok(0),
                Err(()) => Ok(1),
            }
        }
        Prepared::Core(pre) => {
            let host = CoreHost {
                wasi: builder.build_p1(),
                limits,
            };
            let mut store = Store::new(&engine, host);
            store.limiter(|h| &mut h.limits);
            yield_every_tick(&mut store, cpu_limit);
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await?;
            Ok(0)
        }
        Prepared::Http(_) => unreachable!("HTTP functions are served, not run"),
    }
}

/// Serves one HTTP request from a fresh instance.
async fn serve_request(
    engine: Engine,
    pre: ProxyPre<Host>,
    spec: Arc<ContainerSpec>,
    req: hyper::Request<hyper::body::Incoming>,
    place: Option<tokio::sync::OwnedSemaphorePermit>,
) -> anyhow::Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>> {
    use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
    let builder = wasi_builder(&spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cpu_limit = spec.cpu_limit;
    let mut b = builder;
    let host = Host {
        wasi: b.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: crate::outbound::OutboundHttp(spec.outbound.clone()),
        limits: limit(&spec),
    };
    let mut store = Store::new(&engine, host);
    store.limiter(|h| &mut h.limits);
    yield_every_tick(&mut store, cpu_limit);
    let (tx, rx) = oneshot::channel();
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(tx)?;
    spec.usage.request();
    let handle = async move {
        // The place is held until the guest is done, its response body included.
        let _place = place;
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, out)
            .await
    };
    let task = tokio::spawn(crate::usage::Metered::new(handle, spec.usage.clone()));
    match rx.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(code)) => Err(anyhow::anyhow!("the function failed the request: {code:?}")),
        Err(_) => {
            let why = match task.await {
                Ok(Ok(())) => "the function returned without a response".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => e.to_string(),
            };
            Err(anyhow::anyhow!("{why}"))
        }
    }
}

impl WasmRuntime {
    fn start_http(
        &self,
        pre: ProxyPre<Host>,
        spec: ContainerSpec,
    ) -> BoxFuture<'_, Result<Running, StartError>> {
        Box::pin(async move {
            let Some(addr) = spec.listen else {
                return Err(StartError::Config(
                    "an HTTP function needs a containerPort to listen on".into(),
                ));
            };
            let listener = crate::netns::listen(spec.netns.as_deref(), addr)
                .await
                .map_err(|e| StartError::Config(format!("cannot listen on {addr}: {e}")))?;
            // Port 0 (the node's in-process starts) gets a port of the kernel's choosing.
            let bound = listener.local_addr().unwrap_or(addr);
            let (exit_tx, exit_rx) = oneshot::channel();
            let (stop_tx, mut stop_rx) = watch::channel(None);
            let engine = self.engine.clone();
            // containerConcurrency, held by the instance itself (as Knative's queue-proxy
            // does), so that it holds however many routers send to it.
            let places = spec
                .max_concurrency
                .filter(|n| *n > 0)
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize)));
            let spec = Arc::new(spec);
            let log = spec.log.clone();
            let conn_stop = stop_rx.clone();
            tokio::spawn(async move {
                let serve = async {
                    loop {
                        let (tcp, _) = match listener.accept().await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!("wasm http: accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                        let (engine, pre, spec, places) =
                            (engine.clone(), pre.clone(), spec.clone(), places.clone());
                        let mut stopped = conn_stop.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let (engine, pre, spec, places) =
                                    (engine.clone(), pre.clone(), spec.clone(), places.clone());
                                async move {
                                    let place = match places {
                                        Some(p) => p.acquire_owned().await.ok(),
                                        None => None,
                                    };
                                    match serve_request(engine, pre, spec.clone(), req, place).await
                                    {
                                        Ok(resp) => Ok::<_, std::convert::Infallible>(resp),
                                        Err(e) => {
                                            spec.log.write(
                                                Stream::Stderr,
                                                format!("request failed: {e:#}\n").as_bytes(),
                                            );
                                            Ok(error_response(&e.to_string()))
                                        }
                                    }
                                }
                            });
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            let conn = hyper::server::conn::http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(io, service);
                            tokio::pin!(conn);
                            // The connection ends with the function: a kept-alive connection
                            // left open would go on serving this function's code to whoever
                            // reaches the address next (a pod that reuses it gets requests
                            // meant for it answered here). In-flight requests finish within
                            // the grace period.
                            let grace = tokio::select! {
                                _ = conn.as_mut() => return,
                                stop = stopped.wait_for(|s| s.is_some()) => match stop {
                                    Ok(grace) => (*grace).unwrap_or_default(),
                                    Err(_) => Duration::ZERO,
                                },
                            };
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(grace, conn).await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx.wait_for(|s| s.is_some()) => {}
                }
                log.finish();
                let _ = exit_tx.send(ExitStatus::Stopped);
            });
            Ok(Running::new(exit_rx, stop_tx).serving_on(bound))
        })
    }
}

fn error_response(
    message: &str,
) -> hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(bytes::Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    resp
}

impl WasmRuntime {
    /// Times `n` instantiations of an HTTP function's image from its pre-instantiated form,
    /// each in a fresh store with the WASI context a request gets (for benchmarks).
    pub async fn time_instantiation(
        &self,
        spec: &ContainerSpec,
        n: usize,
    ) -> Result<Vec<Duration>, StartError> {
        let Prepared::Http(pre) = self.prepare(&spec.image).await? else {
            return Err(invalid("not an HTTP function"));
        };
        let mut out = Vec::with_capacity(n);
        let cpu_limit = spec.cpu_limit;
        for _ in 0..n {
            let mut b = wasi_builder(spec)?;
            let host = Host {
                wasi: b.build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                hooks: crate::outbound::OutboundHttp(spec.outbound.clone()),
                limits: limit(spec),
            };
            let mut store = Store::new(&self.engine, host);
            store.limiter(|h| &mut h.limits);
            yield_every_tick(&mut store, cpu_limit);
            let t = std::time::Instant::now();
            pre.instantiate_async(&mut store).await.map_err(invalid)?;
            out.push(t.elapsed());
        }
        Ok(out)
    }
}

impl Runtime for WasmRuntime {
    fn handler(&self) -> &'static str {
        "wasm"
    }

    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<Running, StartError>> {
        Box::pin(async move {
            let prepared = self.prepare(&spec.image).await?;
            match prepared {
                Prepared::Http(pre) => self.start_http(pre, spec).await,
                other => self.start_program(other, spec),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limits_pause_in_proportion() {
        assert_eq!(cpu_pause(500), EPOCH_TICK);
        assert_eq!(cpu_pause(250), EPOCH_TICK * 3);
        assert_eq!(cpu_pause(1000), Duration::ZERO);
        assert_eq!(cpu_pause(0), EPOCH_TICK * 999);
    }
}
