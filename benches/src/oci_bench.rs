//! Linux containers, measured. NEEDS ROOT.
//!
//! - exit: start-to-exit of `/bin/true` from one prepared bundle (busybox rootfs, the spec
//!   Drover writes: namespaces, cgroup limits, seccomp), one container at a time, through
//!   Drover's shim (`drover shim run`: libcontainer create, start, wait, delete) and through
//!   the runc and crun command-line tools on the same bundle, in the same run. crun refuses
//!   this host's hybrid cgroup layout, so its loop runs in a private mount namespace with the
//!   unified hierarchy unmounted (`oci-bench crun-loop`, started under `unshare -m`).
//! - backend: the same through `OciRuntime::start` (overlay rootfs mount, spec, shim, cleanup),
//!   what the node agent does for each container.
//! - pod start: pod create → Ready as a watch sees it, on one `drover up`, image cached.
//! - pull: MiB/s of `drover image pull` of a 64 MiB image from a local registry, fresh store.
//!
//! Prints one JSON line per measurement.
//!
//!     target/release/oci-bench [--drover target/release/drover] [--runs 200] [--pods 50]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "up_client.rs"]
mod up_client;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/drover")]
    drover: PathBuf,
    #[arg(long, default_value_t = 200)]
    runs: usize,
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Internal: run the crun loop on BUNDLE and print its times (under `unshare -m`).
    #[arg(long, hide = true)]
    crun_loop: Option<PathBuf>,
}

fn summary(op: &str, times: &[Duration]) -> Value {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for t in times {
        let _ = h.record(t.as_micros() as u64);
    }
    json!({"op": op, "count": h.len(),
           "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
           "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0})
}

/// A busybox root filesystem (the Debian busybox-static binary and its applets).
fn busybox_rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("layer");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    for applet in ["sh", "true", "sleep", "echo", "httpd"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(root)
}

/// The bundle every runtime runs: Drover's spec for `/bin/true`, on the host network, under
/// the default seccomp profile (containerd's allow-list).
fn bundle(dir: &Path, rootfs: &Path) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let spec = runtime::oci::spec::build(&runtime::oci::spec::SpecInputs {
        argv: vec!["/bin/true".into()],
        env: vec!["PATH=/bin".into()],
        terminal: false,
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        hostname: "bench".into(),
        rootfs,
        read_only_root: true,
        netns: None,
        pod_namespaces: None,
        mounts: &[],
        cgroups_path: "/drover/bench-exit".into(),
        memory_limit: Some(64 << 20),
        cpu_request_millis: Some(100),
        cpu_limit_millis: None,
        pids_limit: 64,
        capabilities: runtime::oci::spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect(),
        privileged: false,
        no_new_privileges: true,
        host_pid: false,
        host_ipc: false,
        seccomp: Some(runtime::oci::spec::default_seccomp(
            &runtime::oci::spec::DEFAULT_CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
        )),
        cgroup_v2: runtime::oci::cgroup_v2(),
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    spec.save(bundle.join("config.json"))?;
    Ok(bundle)
}

fn time_cli(
    runs: usize,
    mut run: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    // A few warm-up runs first (page cache, cgroup directories).
    for i in 0..5 {
        run(1_000_000 + i)?;
    }
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let started = Instant::now();
        run(i)?;
        times.push(started.elapsed());
    }
    Ok(times)
}

fn must_succeed(what: &str, out: std::process::Output) -> anyhow::Result<()> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn crun_loop(bundle: &Path, runs: usize) -> anyhow::Result<()> {
    let times = time_cli(runs, |i| {
        let out = Command::new("crun")
            .args(["--root", "/run/drover-bench-crun", "run", "--bundle"])
            .arg(bundle)
            .arg(format!("crun-{i}"))
            .stdin(Stdio::null())
            .output()?;
        must_succeed("crun run", out)
    })?;
    println!("{}", summary("exit: crun run", &times));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(bundle) = &args.crun_loop {
        return crun_loop(bundle, args.runs);
    }
    let dir = tempfile::tempdir()?;
    let rootfs = busybox_rootfs(dir.path())?;
    let bundle = bundle(dir.path(), &rootfs)?;

    // --- start to exit, side by side ---------------------------------------------------------
    let state = PathBuf::from("/run/drover-bench-shim");
    let drover = time_cli(args.runs, |i| {
        let id = format!("shim-{i}");
        let mut shim = Command::new(&args.drover)
            .args(["shim", "run", "--root"])
            .arg(&state)
            .args(["--id", &id, "--bundle"])
            .arg(&bundle)
            .arg("--log")
            .arg(dir.path().join("shim.log"))
            .args(["--cgroup", "/drover/bench-exit"])
            // Kept open: end of input tells the shim its agent is gone.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = shim.stdin.take();
        let out = shim.wait_with_output()?;
        drop(stdin);
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(text.contains("\"code\":0"), "drover shim: {text}");
        Ok(())
    })?;
    println!("{}", summary("exit: drover shim run", &drover));

    let runc = time_cli(args.runs, |i| {
        let out = Command::new("runc")
            .args(["--root", "/run/drover-bench-runc", "run", "--bundle"])
            .arg(&bundle)
            .arg(format!("runc-{i}"))
            .stdin(Stdio::null())
            .output()?;
        must_succeed("runc run", out)
    })?;
    println!("{}", summary("exit: runc run", &runc));

    let me = std::env::current_exe()?;
    let crun = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(&me)
        .arg("--crun-loop")
        .arg(&bundle)
        .args(["--runs", &args.runs.to_string()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&crun.stdout));
    if !crun.status.success() {
        eprintln!("crun: {}", String::from_utf8_lossy(&crun.stderr));
    }

    // --- through the backend -------------------------------------------------------------------
    backend(&args, dir.path(), &rootfs).await?;

    // --- pulls, and pods on one `drover up` ----------------------------------------------------
    let registry = testkit::registry::LocalRegistry::start();
    pull_throughput(&args, dir.path(), &registry).await?;
    pod_start(&args, dir.path(), &registry).await?;
    Ok(())
}

/// `drover image pull` of an image with one 64 MiB layer of random bytes (incompressible: the
/// bytes on the wire are the bytes unpacked), each time into an empty store.
async fn pull_throughput(
    args: &Args,
    dir: &Path,
    registry: &testkit::registry::LocalRegistry,
) -> anyhow::Result<()> {
    let mut noise = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in noise.chunks_mut(8) {
        // xorshift: fast, and gzip cannot shrink it.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let image = testkit::images::Image::new(vec![
        testkit::images::busybox_layer()?,
        testkit::images::Layer::new().file("data/noise", 0o644, &noise),
    ]);
    let reference = registry.image("noise:1");
    image.push(&reference, None).await?;
    let mut times = Vec::new();
    for i in 0..5 {
        let node_dir = dir.join(format!("pull-{i}"));
        let started = Instant::now();
        let out = Command::new(&args.drover)
            .args(["image", "pull", &reference, "--node-dir"])
            .arg(&node_dir)
            .output()?;
        must_succeed("drover image pull", out)?;
        times.push(started.elapsed());
        let _ = std::fs::remove_dir_all(&node_dir);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{}",
        json!({"op": "pull: 64 MiB random layer + busybox, empty store", "runs": times.len(),
               "median_s": median.as_secs_f64(),
               "MiB_per_s": 64.0 / median.as_secs_f64()})
    );
    Ok(())
}

/// Pod create → Ready (as polling every 5 ms sees it) for a busybox `sleep` pod, image cached,
/// one at a time, on one `drover up` (routed pod networking: every pod gets a namespace).
async fn pod_start(
    args: &Args,
    dir: &Path,
    registry: &testkit::registry::LocalRegistry,
) -> anyhow::Result<()> {
    let image = registry.image("busybox:1");
    testkit::images::busybox_image(&image).await?;
    let data = dir.join("up");
    let log = std::fs::File::create(dir.join("up.log"))?;
    let mut up = Command::new(&args.drover)
        .args(["up", "--data-dir"])
        .arg(&data)
        .args([
            "--listen",
            "127.0.9.1:6443",
            "--node-address",
            "127.0.9.1",
            "--name",
            "bench",
        ])
        .env("DROVER_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    let result = pods(args, &data, &image).await;
    let _ = up.kill();
    let _ = up.wait();
    let _ = Command::new(&args.drover)
        .args(["node", "--cleanup", "--node-dir"])
        .arg(data.join("node"))
        .output();
    if result.is_err() {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
        );
    }
    result
}

async fn pods(args: &Args, data: &Path, image: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (http, token) = up_client::admin_client(data).await?;
    let pods = "https://127.0.9.1:6443/api/v1/namespaces/default/pods";
    let ready = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    let mut times = Vec::new();
    for i in 0..=args.pods {
        let name = format!("c{i}");
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]}});
        let started = Instant::now();
        loop {
            let r = http
                .post(pods)
                .bearer_auth(&token)
                .json(&pod)
                .send()
                .await?;
            if r.status() == 201 {
                break;
            }
            // The API comes up before the node: the first create may race it.
            anyhow::ensure!(
                Instant::now() < deadline + Duration::from_secs(60),
                "create failed: {}",
                r.text().await?
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let wait_until = Instant::now() + Duration::from_secs(120);
        loop {
            let p: Value = http
                .get(format!("{pods}/{name}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if ready(&p) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < wait_until,
                "{name} never became Ready: {p}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The first pod pulls the image; the others find it cached.
        if i > 0 {
            times.push(started.elapsed());
        }
        http.delete(format!("{pods}/{name}"))
            .bearer_auth(&token)
            .send()
            .await?;
    }
    println!(
        "{}",
        summary(
            "pod create -> Ready (busybox container, image cached)",
            &times
        )
    );
    Ok(())
}

async fn backend(args: &Args, dir: &Path, rootfs: &Path) -> anyhow::Result<()> {
    use runtime::images::{ImageKind, ImageRunConfig, OciImage, StoredImage};
    use runtime::Runtime;
    let node_dir = dir.join("node");
    let rt = runtime::oci::OciRuntime::new(runtime::oci::OciConfig::for_node(
        &node_dir,
        args.drover.canonicalize()?,
    ))?;
    let image = StoredImage {
        reference: "busybox:bench".into(),
        digest: "sha256:bench".into(),
        path: rootfs.to_path_buf(),
        kind: ImageKind::Oci(OciImage {
            config: ImageRunConfig {
                cmd: vec!["/bin/true".into()],
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            layers: vec![rootfs.to_path_buf()],
        }),
    };
    let log = runtime::logs::LogFile::create(&dir.join("backend.log"))?;
    let mut times = Vec::new();
    for i in 0..args.runs + 5 {
        let spec = runtime::ContainerSpec {
            pod_namespace: "default".into(),
            pod_name: "bench".into(),
            pod_uid: format!("bench{i}"),
            container: "c".into(),
            image: image.clone(),
            args: vec![],
            env: vec![],
            mounts: vec![],
            log: log.clone(),
            memory_limit: Some(64 << 20),
            cpu_limit: None,
            listen: None,
            max_concurrency: None,
            netns: None,
            outbound: None,
            usage: Default::default(),
            linux: Default::default(),
        };
        let started = Instant::now();
        let running = rt.start(spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let status = running.exit.await?;
        anyhow::ensure!(status == runtime::ExitStatus::Exited(0), "{status:?}");
        if i >= 5 {
            times.push(started.elapsed());
        }
        rt.release_pod(&format!("bench{i}"));
    }
    println!(
        "{}",
        summary("exit: OciRuntime::start (overlay rootfs + shim)", &times)
    );
    Ok(())
}
