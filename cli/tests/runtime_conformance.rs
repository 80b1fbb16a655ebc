//! The runtime conformance suite: the same test bodies run against every backend of
//! `runtime::Runtime`, so the node agent can count on the same contract whatever runs a
//! container.
//!
//! - `wasm`: `runtime::wasm::WasmRuntime`, with the example programs (`examples/`, built for
//!   wasm32-wasip2 by `common::examples()`).
//! - `oci`: `runtime::oci::OciRuntime` through the real shim (the `drover` binary, hence this
//!   file lives in the `cli` package) and libcontainer, with testkit's busybox image imported
//!   into the node's image store. NEEDS ROOT (CI runs as root): namespaces, cgroups, overlay.
//!
//! A test body takes a [`Backend`]; [`Harness`] gives it the backend's runtime and its version
//! of each test [`Program`]; [`Capabilities`] say where backends differ by design. A new
//! backend is one more `Backend` variant, its arms in `Harness`, and one `conformance!` line
//! at the end of the file.
//!
//! Run: `cargo nextest run -p cli --test runtime_conformance` (as root).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::images::{ImageKind, ImageStore, StoredImage};
use runtime::logs::{self, LogFile};
use runtime::oci::{OciConfig, OciRuntime};
use runtime::wasm::WasmRuntime;
use runtime::{ContainerSpec, ExitStatus, LinuxOptions, Running, SharedRuntime, StartError};
use tokio::sync::oneshot::error::TryRecvError;

mod common;

/// How long a start may take before the test calls it a hang (a first start compiles a Wasm
/// component, or unpacks and mounts a layer).
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long a short program may take to end.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// What the batch program writes: its arguments, an environment variable, three steps...
const BATCH_STDOUT: &[&str] = &[
    r#"batch: started with args ["a", "b"]"#,
    "batch: GREETING=hello",
    "batch: step 1",
    "batch: step 2",
    "batch: step 3",
];
/// ...and one line on stderr.
const BATCH_STDERR: &[&str] = &["batch: done"];
/// What the crashing program writes before it exits 3.
const CRASH_LINE: &str = "crash: something went wrong, exiting with 3";
/// What the memory hog writes before it reaches its limit.
const HOG_LINE: &str = "crash: holding 16 MiB";
/// The memory limit of the OOM case: the hog wants more, the batch program far less.
const MEMORY_LIMIT: u64 = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Wasm,
    Oci,
}

/// Where backends differ by design, not by defect.
#[derive(Clone, Copy, Debug)]
struct Capabilities {
    /// A stop with a grace period asks the program first (SIGTERM), so it can finish, and
    /// forces it (SIGKILL) only when the grace period ends. Without it (Wasm: WASI has no
    /// signals) every stop ends the program at once.
    graceful_stop: bool,
    /// Programs' exit codes arrive whole. Without it (WASI 0.2 components: `wasi:cli/exit`
    /// carries only success or failure) a failure is code 1.
    exact_exit_codes: bool,
}

impl Backend {
    fn capabilities(self) -> Capabilities {
        match self {
            Backend::Wasm => Capabilities {
                graceful_stop: false,
                exact_exit_codes: false,
            },
            Backend::Oci => Capabilities {
                graceful_stop: true,
                exact_exit_codes: true,
            },
        }
    }
}

/// The programs every backend provides, each doing the same thing (and writing the same
/// lines) on every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Program {
    /// Writes [`BATCH_STDOUT`] and [`BATCH_STDERR`] and exits 0.
    Batch,
    /// Writes [`CRASH_LINE`] and exits 3.
    Crash,
    /// Writes [`HOG_LINE`], then takes far more memory than [`MEMORY_LIMIT`].
    Hog,
    /// Runs until it is stopped, and ignores SIGTERM where there are signals.
    Forever,
    /// Handles SIGTERM: writes `ready` once its handler is in place, and on TERM writes
    /// `got TERM` and exits 7. Only for backends with `graceful_stop`.
    HandlesTerm,
}

/// One backend set up for one test, in a directory of its own.
struct Harness {
    backend: Backend,
    /// Starts every pod uid of the test, so its cgroups are told from other tests'.
    tag: String,
    dir: tempfile::TempDir,
    runtime: SharedRuntime,
    store: ImageStore,
    oci: Option<Arc<OciRuntime>>,
    /// The busybox image, imported at its first use.
    busybox: std::sync::OnceLock<StoredImage>,
}

impl Harness {
    fn new(backend: Backend, tag: &str) -> Harness {
        assert!(
            tag.len() <= 8 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "a tag must stay a prefix of the container ids"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        let (runtime, oci): (SharedRuntime, _) = match backend {
            Backend::Wasm => {
                let rt = WasmRuntime::new(dir.path().join("wasm-cache")).unwrap();
                (Arc::new(rt), None)
            }
            Backend::Oci => {
                let mut config = OciConfig::for_node(dir.path(), common::bin().to_path_buf());
                config.pids_limit = 64;
                let rt = OciRuntime::new(config).unwrap();
                (Arc::new(rt.clone()), Some(rt))
            }
        };
        Harness {
            backend,
            tag: tag.to_string(),
            dir,
            runtime,
            store,
            oci,
            busybox: std::sync::OnceLock::new(),
        }
    }

    /// The image a program runs from, imported into the node's store as a user would.
    fn image(&self, program: Program) -> StoredImage {
        match self.backend {
            Backend::Wasm => {
                let file = match program {
                    Program::Batch => "batch.wasm",
                    Program::Crash | Program::Hog | Program::Forever => "crash.wasm",
                    Program::HandlesTerm => panic!("a Wasm program cannot handle SIGTERM"),
                };
                let name = file.trim_end_matches(".wasm");
                self.store
                    .import(&common::examples().join(file), &format!("{name}:v1"))
                    .unwrap()
            }
            Backend::Oci => self
                .busybox
                .get_or_init(|| {
                    let layout = self.dir.path().join("busybox-layout");
                    testkit::images::busybox()
                        .unwrap()
                        .write_oci_layout(&layout, "busybox:1")
                        .unwrap();
                    self.store.import(&layout, "busybox:1").unwrap()
                })
                .clone(),
        }
    }

    /// A container running `program`, with its own log file; `name` is unique in the test.
    fn spec(&self, name: &str, program: Program) -> ContainerSpec {
        let mut spec = ContainerSpec {
            pod_namespace: "default".into(),
            pod_name: format!("pod-{name}"),
            pod_uid: format!("{}{name}", self.tag),
            container: name.into(),
            image: self.image(program),
            args: vec![name.into()],
            env: vec![("GREETING".into(), "hello".into())],
            mounts: vec![],
            log: LogFile::create(&self.dir.path().join(format!("logs/{name}/0.log"))).unwrap(),
            memory_limit: None,
            cpu_limit: None,
            listen: None,
            max_concurrency: None,
            netns: None,
            outbound: None,
            usage: Default::default(),
            linux: LinuxOptions {
                hostname: format!("pod-{name}"),
                ..Default::default()
            },
        };
        match self.backend {
            Backend::Wasm => {
                let mode = match program {
                    Program::Batch => {
                        spec.args.extend(["a".into(), "b".into()]);
                        None
                    }
                    Program::Crash => None,
                    Program::Hog => Some("oom"),
                    Program::Forever => Some("spin"),
                    Program::HandlesTerm => unreachable!("no image"),
                };
                if let Some(mode) = mode {
                    spec.env.push(("MODE".into(), mode.into()));
                }
            }
            Backend::Oci => {
                let script = match program {
                    Program::Batch => concat!(
                        r#"echo 'batch: started with args ["a", "b"]'; "#,
                        r#"echo "batch: GREETING=$GREETING"; "#,
                        r#"for i in 1 2 3; do echo "batch: step $i"; done; "#,
                        r#"echo 'batch: done' >&2"#,
                    ),
                    Program::Crash => "echo 'crash: something went wrong, exiting with 3'; exit 3",
                    Program::Hog => {
                        "echo 'crash: holding 16 MiB'; dd if=/dev/zero of=/dev/null bs=256M count=1"
                    }
                    // The container's first process: TERM, unhandled, does not end it.
                    Program::Forever => "exec sleep 3600",
                    Program::HandlesTerm => concat!(
                        "trap 'echo got TERM; exit 7' TERM; echo ready; ",
                        "while true; do sleep 0.1; done",
                    ),
                };
                let argv: Vec<String> = ["sh", "-c", script].map(String::from).into();
                spec.args = argv.clone();
                spec.linux.command = Some(argv);
            }
        }
        spec
    }

    /// Starts `spec`; a start that takes longer than [`START_WITHIN`] is a hang.
    async fn try_start(&self, spec: ContainerSpec) -> Result<Running, StartError> {
        let what = spec.container.clone();
        tokio::time::timeout(START_WITHIN, self.runtime.start(spec))
            .await
            .unwrap_or_else(|_| panic!("{what}: start hung for {START_WITHIN:?}"))
    }

    async fn start(&self, spec: ContainerSpec) -> Running {
        let what = spec.container.clone();
        self.try_start(spec)
            .await
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"))
    }

    /// The log's records, as (stream, text); every record must be a whole line.
    fn log_records(&self, spec: &ContainerSpec) -> Vec<(String, String)> {
        let raw = std::fs::read_to_string(spec.log.path()).unwrap_or_default();
        raw.lines()
            .map(|line| {
                let record = logs::parse_line(line).unwrap_or_else(|| panic!("{line:?}"));
                assert!(record.full, "a partial record: {line:?}");
                humantime::parse_rfc3339(&record.timestamp)
                    .unwrap_or_else(|e| panic!("{line:?}: bad timestamp: {e}"));
                (record.stream, record.text)
            })
            .collect()
    }

    /// The log's lines of one stream, in order.
    fn log_of(&self, spec: &ContainerSpec, stream: &str) -> Vec<String> {
        self.log_records(spec)
            .into_iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, text)| text)
            .collect()
    }

    /// Waits until the log (as `kubectl logs` reads it) has the line `want`.
    async fn wait_for_log_line(&self, spec: &ContainerSpec, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let lines = logs::read(spec.log.path(), false, None).unwrap_or_default();
            if lines.iter().any(|l| l.trim_end_matches('\n') == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line {want:?} in the log after {within:?}: {lines:?}",
                spec.container
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Nothing of the node's containers is left: for Linux containers, no bundle, no
    /// libcontainer state, no mount and no cgroup (after the pods' shared namespaces are
    /// given back, as the agent does when a pod is gone). A Wasm instance lives in the
    /// agent's memory only.
    fn assert_nothing_left(&self) {
        let Some(rt) = &self.oci else { return };
        let config = OciConfig::for_node(self.dir.path(), common::bin().to_path_buf());
        let mut pods = config.state_root.clone().into_os_string();
        pods.push("-pods");
        let pods = PathBuf::from(pods);
        for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            let uid = pod.file_name().to_string_lossy().into_owned();
            if uid.starts_with(&self.tag) {
                rt.release_pod(&uid);
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let left: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&format!("{}/{}", pods.display(), self.tag)))
            .collect();
        assert!(left.is_empty(), "pod namespaces left: {left:?}");
        let left: Vec<_> = std::fs::read_dir(&config.bundles_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "bundles left: {left:?}");
        let left: Vec<_> = std::fs::read_dir(&config.state_root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "libcontainer state left: {left:?}");
        let dir = self.dir.path().display().to_string();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
        assert!(left.is_empty(), "mounts left under {dir}: {left:?}");
        for cgroups in [
            "/sys/fs/cgroup/memory/drover",
            "/sys/fs/cgroup/pids/drover",
            "/sys/fs/cgroup/cpu/drover",
            "/sys/fs/cgroup/drover",
        ] {
            let left: Vec<String> = std::fs::read_dir(cgroups)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&self.tag))
                .collect();
            assert!(left.is_empty(), "cgroups left in {cgroups}: {left:?}");
        }
    }
}

impl Drop for Harness {
    /// Gives back the node's directories under /run; after a failed test, first sweeps what
    /// it left (as the agent does when it starts), so one failure does not litter the host.
    fn drop(&mut self) {
        let Some(rt) = self.oci.take() else { return };
        if std::thread::panicking() {
            // The test's own tokio runtime is unwinding: clean up from a thread of our own.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(rt.clean_up())
            })
            .join();
        }
        let config = OciConfig::for_node(self.dir.path(), common::bin().to_path_buf());
        let mut pods = config.state_root.clone().into_os_string();
        pods.push("-pods");
        // Only if empty: anything still in them is a leftover the test reports.
        let _ = std::fs::remove_dir(PathBuf::from(pods));
        let _ = std::fs::remove_dir(&config.state_root);
    }
}

/// The container's exit status, which must come within `within`.
async fn exit_within(running: Running, within: Duration) -> ExitStatus {
    tokio::time::timeout(within, running.exit)
        .await
        .unwrap_or_else(|_| panic!("no exit within {within:?}"))
        .expect("the runtime reports every exit")
}

/// The container runs: its exit has not been reported.
fn assert_running(running: &mut Running, what: &str) {
    match running.exit.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => panic!("{what} should be running: {other:?}"),
    }
}

// ---- the cases --------------------------------------------------------------------------

/// A program that ends well is reported `Exited(0)`, and only once it has ended.
async fn a_clean_exit_is_code_0(backend: Backend) {
    let h = Harness::new(backend, "cfok");
    let spec = h.spec("ok", Program::Batch);
    let running = h.start(spec.clone()).await;
    assert_eq!(
        exit_within(running, EXIT_WITHIN).await,
        ExitStatus::Exited(0)
    );
    // It ran to its end: the last line it writes is there.
    assert_eq!(h.log_of(&spec, "stderr"), BATCH_STDERR);
    h.assert_nothing_left();
}

/// A program that fails is reported with its (non-zero) exit code, not as a stop or a
/// runtime failure.
async fn a_failing_exit_is_reported_with_its_code(backend: Backend) {
    let h = Harness::new(backend, "cffail");
    let spec = h.spec("fail", Program::Crash);
    let running = h.start(spec.clone()).await;
    let status = exit_within(running, EXIT_WITHIN).await;
    let code = if backend.capabilities().exact_exit_codes {
        3
    } else {
        1
    };
    assert_eq!(status, ExitStatus::Exited(code));
    assert_eq!(status.exit_code(), code);
    assert_eq!(h.log_of(&spec, "stdout"), [CRASH_LINE]);
    h.assert_nothing_left();
}

/// What a program writes to stdout and stderr is in its CRI log file, each line whole,
/// stamped and tagged with its stream, in order per stream, and all of it is there by the
/// time the exit is reported; `kubectl logs` reads it back.
async fn logs_are_written_and_read_back(backend: Backend) {
    let h = Harness::new(backend, "cflogs");
    let spec = h.spec("logs", Program::Batch);
    let running = h.start(spec.clone()).await;
    assert_eq!(
        exit_within(running, EXIT_WITHIN).await,
        ExitStatus::Exited(0)
    );
    assert_eq!(h.log_of(&spec, "stdout"), BATCH_STDOUT);
    assert_eq!(h.log_of(&spec, "stderr"), BATCH_STDERR);
    assert_eq!(h.log_records(&spec).len(), 6, "{:?}", h.log_records(&spec));
    // As `kubectl logs` shows them (stdout and stderr may interleave either way).
    let mut shown = logs::read(spec.log.path(), false, None).unwrap();
    shown.sort();
    let mut want: Vec<String> = BATCH_STDOUT
        .iter()
        .chain(BATCH_STDERR)
        .map(|l| format!("{l}\n"))
        .collect();
    want.sort();
    assert_eq!(shown, want);
    let tail = logs::read(spec.log.path(), true, Some(1)).unwrap();
    assert_eq!(tail.len(), 1, "{tail:?}");
    h.assert_nothing_left();
}

/// A memory limit holds: a program that needs more is `OomKilled` (exit code 137), and what
/// it wrote before is kept; a program that fits runs as without a limit.
async fn a_memory_limit_is_enforced_as_oom(backend: Backend) {
    let h = Harness::new(backend, "cfoom");
    let mut hog = h.spec("hog", Program::Hog);
    hog.memory_limit = Some(MEMORY_LIMIT);
    let running = h.start(hog.clone()).await;
    let status = exit_within(running, EXIT_WITHIN).await;
    assert_eq!(status, ExitStatus::OomKilled);
    assert_eq!(status.exit_code(), 137);
    assert!(
        h.log_of(&hog, "stdout").iter().any(|l| l == HOG_LINE),
        "{:?}",
        h.log_records(&hog)
    );

    let mut fits = h.spec("fits", Program::Batch);
    fits.memory_limit = Some(MEMORY_LIMIT);
    let running = h.start(fits.clone()).await;
    assert_eq!(
        exit_within(running, EXIT_WITHIN).await,
        ExitStatus::Exited(0)
    );
    assert_eq!(h.log_of(&fits, "stdout"), BATCH_STDOUT);
    h.assert_nothing_left();
}

/// A stop with a grace period. Where the backend can ask politely, a program that handles
/// SIGTERM ends by itself, in time, with its own exit code, and one that ignores it is
/// killed when the grace period is over (`Stopped`), not before. Where it cannot, a stop
/// ends the program at once.
async fn stop_honours_the_grace_period(backend: Backend) {
    let h = Harness::new(backend, "cfstop");
    let grace = Duration::from_secs(1);
    let mut stubborn = h.start(h.spec("stubborn", Program::Forever)).await;
    assert_running(&mut stubborn, "a program that runs until stopped");
    let asked = Instant::now();
    stubborn.stopper().stop_within(grace);
    let status = exit_within(stubborn, grace + EXIT_WITHIN).await;
    let took = asked.elapsed();
    assert_eq!(status, ExitStatus::Stopped);
    assert_eq!(status.exit_code(), 137);
    if backend.capabilities().graceful_stop {
        assert!(
            took >= grace - Duration::from_millis(100),
            "killed after {took:?}, before its grace period of {grace:?} was over"
        );
    } else {
        assert!(
            took < grace / 2,
            "a stop that cannot be asked for politely must be at once; took {took:?}"
        );
    }

    // A second request may shorten the grace period, never lengthen it.
    let shortened = h.start(h.spec("shortened", Program::Forever)).await;
    let asked = Instant::now();
    shortened.stopper().stop_within(Duration::from_secs(30));
    shortened.stopper().stop_within(Duration::from_millis(200));
    shortened.stopper().stop_within(Duration::from_secs(30));
    let status = exit_within(shortened, EXIT_WITHIN).await;
    let took = asked.elapsed();
    assert_eq!(status, ExitStatus::Stopped);
    assert!(
        took < Duration::from_secs(5),
        "the shortened stop took {took:?}"
    );

    if backend.capabilities().graceful_stop {
        let polite_spec = h.spec("polite", Program::HandlesTerm);
        let polite = h.start(polite_spec.clone()).await;
        h.wait_for_log_line(&polite_spec, "ready", EXIT_WITHIN)
            .await;
        let long_grace = Duration::from_secs(30);
        let asked = Instant::now();
        polite.stopper().stop_within(long_grace);
        let status = exit_within(polite, EXIT_WITHIN).await;
        let took = asked.elapsed();
        assert_eq!(status, ExitStatus::Exited(7), "it ends by itself");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(h.log_of(&polite_spec, "stdout"), ["ready", "got TERM"]);
    }
    h.assert_nothing_left();
}

/// Images and programs that cannot run are a clear `StartError`, at once: no panic, no
/// hang, nothing left behind, and the runtime still starts good containers afterwards.
async fn bad_images_and_missing_programs_are_start_errors(backend: Backend) {
    let h = Harness::new(backend, "cfbroken");
    // (what, spec, the variant and what its message must say)
    let mut cases: Vec<(&str, ContainerSpec, bool, &str)> = Vec::new();
    match backend {
        Backend::Wasm => {
            let mut not_wasm = h.spec("notwasm", Program::Batch);
            let garbage = h.dir.path().join("garbage.wasm");
            std::fs::write(&garbage, b"\0asm\x0d\0\x01\0 but then garbage").unwrap();
            not_wasm.image = h.store.import(&garbage, "garbage:v1").unwrap();
            cases.push(("a corrupt component", not_wasm, true, "does not validate"));

            let mut gone = h.spec("gone", Program::Batch);
            gone.image.path = h.dir.path().join("no-such-blob");
            gone.image.digest = "sha256:0000".into();
            cases.push((
                "the program's file gone",
                gone,
                true,
                "cannot read the image",
            ));

            // An HTTP function (hello-world) needs a port to serve on: a configuration error.
            let mut http = h.spec("http", Program::Batch);
            http.image = h
                .store
                .import(&common::examples().join("hello_world.wasm"), "hello:v1")
                .unwrap();
            cases.push((
                "an HTTP function without a port",
                http,
                false,
                "containerPort",
            ));
        }
        Backend::Oci => {
            let mut missing = h.spec("missing", Program::Batch);
            missing.linux.command = Some(vec!["no-such-program".into()]);
            cases.push((
                "a program not in the image",
                missing,
                true,
                "executable file not found",
            ));

            let mut no_layers = h.spec("nolayers", Program::Batch);
            if let ImageKind::Oci(oci) = &mut no_layers.image.kind {
                oci.layers.clear();
            }
            cases.push(("an image without layers", no_layers, true, "has no layers"));

            let mut layer_gone = h.spec("layergone", Program::Batch);
            if let ImageKind::Oci(oci) = &mut layer_gone.image.kind {
                oci.layers = vec![h.dir.path().join("no-such-layer")];
            }
            cases.push((
                "an unpacked layer gone",
                layer_gone,
                false,
                "cannot mount the root filesystem",
            ));
        }
    }
    // Every backend: an image of the other kind (the agent picks the runtime by the image's
    // kind, but a runtime must still refuse what it cannot run).
    let mut other_kind = h.spec("otherkind", Program::Batch);
    let says = match backend {
        Backend::Wasm => {
            let oci_store = ImageStore::open(&h.dir.path().join("oci-images")).unwrap();
            let layout = h.dir.path().join("busybox-layout");
            testkit::images::busybox()
                .unwrap()
                .write_oci_layout(&layout, "busybox:1")
                .unwrap();
            other_kind.image = oci_store.import(&layout, "busybox:1").unwrap();
            "not a WebAssembly component or module"
        }
        Backend::Oci => {
            other_kind.image = h
                .store
                .import(&common::examples().join("batch.wasm"), "batch:v1")
                .unwrap();
            "is a WebAssembly image"
        }
    };
    cases.push(("an image of the other kind", other_kind, true, says));

    for (what, spec, invalid_image, says) in cases {
        let asked = Instant::now();
        let result = h.try_start(spec).await;
        let Err(e) = result else {
            panic!("{what}: started");
        };
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            asked.elapsed()
        );
        let message = e.to_string();
        assert!(
            matches!(e, StartError::InvalidImage(_)) == invalid_image,
            "{what}: {e:?}"
        );
        assert!(
            message.contains(says) && !message.trim().is_empty(),
            "{what}: {message:?} does not say {says:?}"
        );
    }
    h.assert_nothing_left();

    let spec = h.spec("good", Program::Batch);
    let running = h.start(spec).await;
    assert_eq!(
        exit_within(running, EXIT_WITHIN).await,
        ExitStatus::Exited(0)
    );
    h.assert_nothing_left();
}

/// The same container spec starts again after its run ended (restartPolicy, a liveness
/// restart): after an exit, and after a stop.
async fn a_container_restarts_from_the_same_spec(backend: Backend) {
    let h = Harness::new(backend, "cfagain");
    let spec = h.spec("again", Program::Batch);
    for run in 1..=2 {
        let running = h.start(spec.clone()).await;
        assert_eq!(
            exit_within(running, EXIT_WITHIN).await,
            ExitStatus::Exited(0),
            "run {run}"
        );
    }
    // Both runs wrote to the same log, one after the other.
    let twice: Vec<&str> = BATCH_STDOUT.iter().chain(BATCH_STDOUT).copied().collect();
    assert_eq!(h.log_of(&spec, "stdout"), twice);

    let forever = h.spec("forever", Program::Forever);
    let first = h.start(forever.clone()).await;
    first.stop();
    assert_eq!(exit_within(first, EXIT_WITHIN).await, ExitStatus::Stopped);
    let mut second = h.start(forever).await;
    assert_running(&mut second, "the restarted container");
    second.stop();
    assert_eq!(exit_within(second, EXIT_WITHIN).await, ExitStatus::Stopped);
    h.assert_nothing_left();
}

/// A container never outlives the handles that could stop it: when its `Running` (and every
/// `Stopper`) is dropped, it is killed, and nothing of it is left.
async fn a_container_dies_with_its_handles(backend: Backend) {
    let h = Harness::new(backend, "cfdrop");
    let exit = {
        let running = h.start(h.spec("orphan", Program::Forever)).await;
        drop(running.stopper());
        // Only the exit is kept: the rest of `running` (its stop handle) is dropped here,
        // and the running container can no longer be stopped by anyone.
        running.exit
    };
    let status = tokio::time::timeout(EXIT_WITHIN, exit)
        .await
        .expect("a container nobody can stop is killed")
        .expect("the runtime reports every exit");
    assert_eq!(status.exit_code(), 137, "killed: {status:?}");
    h.assert_nothing_left();
}

/// One module of tests per backend, each case a test of its own.
macro_rules! conformance {
    ($module:ident, $backend:expr) => {
        mod $module {
            #[tokio::test]
            async fn a_clean_exit_is_code_0() {
                super::a_clean_exit_is_code_0($backend).await
            }
            #[tokio::test]
            async fn a_failing_exit_is_reported_with_its_code() {
                super::a_failing_exit_is_reported_with_its_code($backend).await
            }
            #[tokio::test]
            async fn logs_are_written_and_read_back() {
                super::logs_are_written_and_read_back($backend).await
            }
            #[tokio::test]
            async fn a_memory_limit_is_enforced_as_oom() {
                super::a_memory_limit_is_enforced_as_oom($backend).await
            }
            #[tokio::test]
            async fn stop_honours_the_grace_period() {
                super::stop_honours_the_grace_period($backend).await
            }
            #[tokio::test]
            async fn bad_images_and_missing_programs_are_start_errors() {
                super::bad_images_and_missing_programs_are_start_errors($backend).await
            }
            #[tokio::test]
            async fn a_container_restarts_from_the_same_spec() {
                super::a_container_restarts_from_the_same_spec($backend).await
            }
            #[tokio::test]
            async fn a_container_dies_with_its_handles() {
                super::a_container_dies_with_its_handles($backend).await
            }
        }
    };
}

conformance!(wasm, super::Backend::Wasm);
conformance!(oci, super::Backend::Oci);

/// An HTTP function holds `max_concurrency` itself (Knative's containerConcurrency, which a
/// revision's pods carry), whatever sends to it: `examples/inflight` answers "violation" when
/// a second request finds its mark taken. Without the limit the same load overlaps, so the
/// check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_function_holds_its_concurrency_itself() {
    async fn violations(max_concurrency: Option<u32>) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        let image = store
            .import(&common::examples().join("inflight.wasm"), "inflight:v1")
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let rt = WasmRuntime::new(dir.path().join("cache")).unwrap();
        let spec = ContainerSpec {
            pod_namespace: "default".into(),
            pod_name: "inflight".into(),
            pod_uid: "u".into(),
            container: "c".into(),
            image,
            args: vec!["c".into()],
            env: vec![],
            mounts: vec![runtime::Mount {
                host_path: data,
                guest_path: "/data".into(),
                read_only: false,
            }],
            log: LogFile::create(&dir.path().join("c.log")).unwrap(),
            memory_limit: None,
            cpu_limit: None,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            max_concurrency,
            netns: None,
            outbound: None,
            usage: Default::default(),
            linux: Default::default(),
        };
        let running = runtime::Runtime::start(&rt, spec).await.unwrap();
        let addr = running.serving.unwrap();
        let requests: Vec<_> = (0..16)
            .map(|_| {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.write_all(b"GET /?hold=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .await
                        .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
                    out.ends_with("violation\n")
                })
            })
            .collect();
        let mut n = 0;
        for r in requests {
            n += usize::from(r.await.unwrap());
        }
        running.stop();
        n
    }
    assert_eq!(violations(Some(1)).await, 0);
    assert!(
        violations(None).await > 0,
        "without the limit, 16 requests at once holding 20 ms each overlap"
    );
}

/// A stopped HTTP function serves nothing more, not even on a connection kept alive from
/// before: otherwise whoever reaches its address next (the function router, sending to a pod
/// that got the address later) would have requests meant for another function answered by
/// this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_http_function_closes_its_kept_alive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let image = store
        .import(&common::examples().join("hello_world.wasm"), "hello:v1")
        .unwrap();
    let rt = WasmRuntime::new(dir.path().join("cache")).unwrap();
    let spec = ContainerSpec {
        pod_namespace: "default".into(),
        pod_name: "old-tenant".into(),
        pod_uid: "u".into(),
        container: "c".into(),
        image,
        args: vec!["c".into()],
        env: vec![("HOSTNAME".into(), "old-tenant".into())],
        mounts: vec![],
        log: LogFile::create(&dir.path().join("c.log")).unwrap(),
        memory_limit: None,
        cpu_limit: None,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        max_concurrency: None,
        netns: None,
        outbound: None,
        usage: Default::default(),
        linux: Default::default(),
    };
    let running = runtime::Runtime::start(&rt, spec).await.unwrap();
    let mut conn = tokio::net::TcpStream::connect(running.serving.unwrap())
        .await
        .unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    conn.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("old-tenant"));
    running.stop();
    let mut exit = running.exit;
    tokio::time::timeout(Duration::from_secs(5), &mut exit)
        .await
        .expect("it stops")
        .unwrap();
    // The same connection, after the stop.
    let _ = conn.write_all(request).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("the connection is closed, not left open");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("old-tenant"),
        "a stopped function answered: {rest}"
    );
}
