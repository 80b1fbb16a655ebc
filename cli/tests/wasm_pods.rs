//! Wasm pods end to end: a real `drover up` (store, API, node agent, wasmtime) driven by the
//! real kubectl, with the example programs built for wasm32-wasip2 (`scripts/test.sh` builds
//! them; a test builds them itself if they are missing).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::up::Up;
use common::{bin, examples, import_into, repo};

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

#[test]
fn a_batch_pod_succeeds_sees_its_config_and_kubectl_logs_shows_its_output() {
    let up = Up::start(41);
    up.import("batch.wasm", "batch:v1");
    up.apply(
        "config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {greeting: hello from a configmap, mode: fast}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: s3cret}\n",
    );
    up.apply(
        "batch.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: batch}
spec:
  restartPolicy: Never
  containers:
  - name: batch
    image: batch:v1
    args: ["--run", "$(GREETING)"]
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: READ_DIR, value: "/etc/settings:/etc/creds:/var/run/secrets/kubernetes.io/serviceaccount"}
    volumeMounts:
    - {name: settings, mountPath: /etc/settings}
    - {name: creds, mountPath: /etc/creds}
  volumes:
  - {name: settings, configMap: {name: settings}}
  - {name: creds, secret: {secretName: creds}}
"#,
    );
    up.wait_for("batch", "{.status.phase}", "Succeeded", 60, |p| {
        p == "Succeeded"
    });
    let reason = up.jsonpath(
        "batch",
        "{.status.containerStatuses[0].state.terminated.reason}",
    );
    assert_eq!(reason, "Completed");
    assert_eq!(
        up.jsonpath(
            "batch",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "0"
    );
    let logs = up.ok(&["logs", "batch"]);
    for want in [
        "batch: started with args [\"--run\", \"hello from a configmap\"]",
        "batch: HOSTNAME=batch",
        "batch: GREETING=hello from a configmap",
        "batch: PASSWORD=s3cret",
        "batch: file /etc/settings/greeting = hello from a configmap",
        "batch: file /etc/settings/mode = fast",
        "batch: file /etc/creds/password = s3cret",
        // The ServiceAccount's token, the cluster CA and the namespace, as a container has them.
        "batch: file /var/run/secrets/kubernetes.io/serviceaccount/namespace = default",
        "batch: file /var/run/secrets/kubernetes.io/serviceaccount/token = drover.",
        "batch: file /var/run/secrets/kubernetes.io/serviceaccount/ca.crt = -----BEGIN CERTIFICATE-----",
        "batch: step 3",
        "batch: done",
    ] {
        assert!(logs.contains(want), "missing {want:?} in:\n{logs}");
    }
    // Following a finished container's log ends with it.
    let followed = up.ok(&["logs", "-f", "batch"]);
    assert_eq!(followed, logs);
    let tail = up.ok(&["logs", "batch", "--tail=1"]);
    assert_eq!(tail.trim(), "batch: done");
    let stamped = up.ok(&["logs", "batch", "--timestamps", "--tail=1"]);
    assert!(
        stamped.starts_with("20") && stamped.contains("Z batch: done"),
        "{stamped}"
    );
    let conditions = up.jsonpath("batch", "{.status.conditions[*].type}");
    assert_eq!(conditions, "PodScheduled Initialized ContainersReady Ready");
    // A missing secret key is the pod's problem, reported with the reason Kubernetes uses.
    up.apply(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n  containers:\n  - name: c\n    image: batch:v1\n    env:\n    - {name: X, valueFrom: {secretKeyRef: {name: creds, key: nope}}}\n",
    );
    let reason = up.wait_for(
        "broken",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CreateContainerConfigError",
        30,
        |r| r == "CreateContainerConfigError",
    );
    assert_eq!(reason, "CreateContainerConfigError");
    assert!(up
        .jsonpath(
            "broken",
            "{.status.containerStatuses[0].state.waiting.message}"
        )
        .contains("couldn't find key nope in Secret default/creds"));
    // So is an image the node does not have.
    up.apply(
        "missing.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: missing}\nspec:\n  containers:\n  - {name: c, image: \"127.0.0.1:1/nowhere:v9\"}\n",
    );
    up.wait_for(
        "missing",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "ErrImagePull",
        30,
        |r| r == "ErrImagePull" || r == "ImagePullBackOff",
    );
}

#[test]
fn crashing_pods_back_off_longer_each_time_and_memory_hogs_are_oom_killed() {
    let up = Up::start(42);
    up.import("crash.wasm", "crash:v1");
    up.apply(
        "crash.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash}\nspec:\n  containers:\n  - {name: crash, image: crash:v1}\n",
    );
    up.wait_for(
        "crash",
        "{.status.containerStatuses[0].restartCount}",
        "≥ 3",
        60,
        |r| r.parse::<u32>().unwrap_or(0) >= 3,
    );
    let waiting = up.wait_for(
        "crash",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CrashLoopBackOff",
        30,
        |r| r == "CrashLoopBackOff",
    );
    assert_eq!(waiting, "CrashLoopBackOff");
    assert_eq!(up.jsonpath("crash", "{.status.phase}"), "Running");
    assert_eq!(
        up.jsonpath(
            "crash",
            "{.status.containerStatuses[0].lastState.terminated.reason}"
        ),
        "Error"
    );
    // The back-off grows: the fourth restart waits 8 s (base 1 s, doubled each time).
    let message = up.wait_for(
        "crash",
        "{.status.containerStatuses[0].state.waiting.message}",
        "back-off 8s",
        60,
        |m| m.contains("back-off 8s"),
    );
    assert!(
        message.contains("restarting failed container=crash pod=crash"),
        "{message}"
    );
    // The story is in the pod's events, as kubectl describe shows them.
    let described = up.ok(&["describe", "pod", "crash"]);
    for want in [
        "Started container crash",
        "BackOff",
        "Back-off restarting failed container crash in pod crash_default",
    ] {
        assert!(
            described.contains(want),
            "missing {want:?} in:\n{described}"
        );
    }
    let events = up.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crash",
    ]);
    assert!(
        events.contains("BackOff") && events.contains("Warning"),
        "{events}"
    );
    let previous = up.ok(&["logs", "crash", "--previous"]);
    assert!(
        previous.contains("crash: something went wrong"),
        "{previous}"
    );
    assert!(up.ok(&["get", "pods"]).contains("CrashLoopBackOff"));

    up.apply(
        "hog.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hog}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: hog\n    image: crash:v1\n    env: [{name: MODE, value: oom}]\n    resources: {limits: {memory: 32Mi}}\n",
    );
    up.wait_for("hog", "{.status.phase}", "Failed", 60, |p| p == "Failed");
    assert_eq!(
        up.jsonpath(
            "hog",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "OOMKilled"
    );
    assert_eq!(
        up.jsonpath(
            "hog",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "137"
    );
}

#[test]
fn http_functions_answer_with_their_pod_name_probes_restart_them_and_deletion_stops_them() {
    let up = Up::start(43);
    up.import("hello_world.wasm", "hello-world:v1");
    up.apply(
        "hello.yaml",
        &std::fs::read_to_string(repo().join("examples/hello-pod.yaml")).unwrap(),
    );
    up.wait_for(
        "hello",
        "{.status.containerStatuses[0].ready}",
        "true",
        60,
        |r| r == "true",
    );
    let ip = up.jsonpath("hello", "{.status.podIP}");
    let addr = format!("{ip}:8080");
    let (code, body) = http_get(&addr, "/").expect("the function answers");
    assert_eq!(code, 200);
    assert_eq!(
        body.trim(),
        "Hello world from hello! Your app is up and running in a cluster!"
    );
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&addr, "/nope").unwrap().0, 404);

    // A liveness probe that fails restarts the function; the count grows.
    up.apply(
        "sick.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: sick}\nspec:\n  containers:\n  - name: hw\n    image: hello-world:v1\n    ports: [{containerPort: 8080}]\n    livenessProbe: {httpGet: {path: /nope, port: 8080}, periodSeconds: 1, failureThreshold: 2}\n",
    );
    up.wait_for(
        "sick",
        "{.status.containerStatuses[0].restartCount}",
        "≥ 2",
        60,
        |r| r.parse::<u32>().unwrap_or(0) >= 2,
    );
    let last = up.jsonpath(
        "sick",
        "{.status.containerStatuses[0].lastState.terminated.message}",
    );
    assert!(
        last.contains("failed liveness probe") && last.contains("404"),
        "{last}"
    );
    let described = up.ok(&["describe", "pod", "sick"]);
    assert!(
        described.contains("Liveness probe failed: HTTP probe failed with statuscode: 404"),
        "{described}"
    );

    // Deleting stops the instance within the grace period, and the pod is gone.
    let started = Instant::now();
    up.ok(&["delete", "pod", "hello", "--wait=true"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&addr, "/").is_some() {
        assert!(
            Instant::now() < deadline,
            "the function still answers after its pod was deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up.run(&["get", "pod", "hello"]).2.contains("NotFound"));
}

/// The seed's `kubectl run NAME --image=...` of an HTTP function declares no port: the function
/// serves on 8080, or on `$PORT` when the pod sets it (Knative's and Cloud Run's contract), and
/// `kubectl describe` says where.
#[test]
fn a_function_run_without_a_port_serves_on_8080_or_on_port() {
    let up = Up::start(54);
    up.import("hello_world.wasm", "hello-world:v1");
    up.ok(&["run", "hello-world-deployment", "--image=hello-world:v1"]);
    up.ok(&[
        "run",
        "on-port",
        "--image=hello-world:v1",
        "--env=PORT=9090",
    ]);
    for (pod, port) in [("hello-world-deployment", 8080), ("on-port", 9090)] {
        up.wait_for(
            pod,
            "{.status.containerStatuses[0].ready}",
            "true",
            60,
            |r| r == "true",
        );
        let ip = up.jsonpath(pod, "{.status.podIP}");
        let (code, body) = http_get(&format!("{ip}:{port}"), "/").expect("the function answers");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("Hello world from {pod}!")), "{body}");
        let described = up.ok(&["describe", "pod", pod]);
        assert!(
            described.contains(&format!("an HTTP function serving on {ip}:{port}")),
            "{described}"
        );
    }
}

#[test]
fn a_restarted_node_takes_its_pods_back_without_duplicates() {
    let mut up = Up::start(44);
    up.import("hello_world.wasm", "hello-world:v1");
    up.import("batch.wasm", "batch:v1");
    up.apply(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: hw, image: hello-world:v1, ports: [{containerPort: 8080}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: once}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: batch, image: batch:v1}\n",
    );
    up.wait_for(
        "web",
        "{.status.containerStatuses[0].ready}",
        "true",
        60,
        |r| r == "true",
    );
    up.wait_for("once", "{.status.phase}", "Succeeded", 60, |p| {
        p == "Succeeded"
    });
    let ip = up.jsonpath("web", "{.status.podIP}");
    let uid = up.jsonpath("web", "{.metadata.uid}");
    up.kill();
    assert!(
        http_get(&format!("{ip}:8080"), "/").is_none(),
        "the node is down"
    );
    up.spawn();
    up.wait_for(
        "web",
        "{.status.containerStatuses[0].ready}",
        "true",
        60,
        |r| r == "true",
    );
    // The same pod at the same address, serving again; one pod of each, nothing rerun.
    assert_eq!(up.jsonpath("web", "{.metadata.uid}"), uid);
    assert_eq!(up.jsonpath("web", "{.status.podIP}"), ip);
    let (code, body) = http_get(&format!("{ip}:8080"), "/").expect("serving again");
    assert_eq!(code, 200, "{body}");
    let names = up.ok(&["get", "pods", "-o", "name"]);
    assert_eq!(names.lines().count(), 2, "{names}");
    assert_eq!(up.jsonpath("once", "{.status.phase}"), "Succeeded");
    let logs = up.ok(&["logs", "once"]);
    assert_eq!(
        logs.matches("batch: done").count(),
        1,
        "the finished pod did not run again:\n{logs}"
    );
}

/// `kubectl exec` goes through the API server (authorized, the pod checked, the WebSocket
/// spliced over TLS) to the node; a Wasm container has nothing to run a command in, and kubectl
/// prints why and fails. `kubectl port-forward` reaches the Wasm pod's port, over both
/// transports.
#[test]
fn kubectl_exec_is_refused_clearly_by_a_wasm_container_and_port_forward_reaches_its_port() {
    let up = Up::start(53);
    up.import("hello_world.wasm", "hello-world:v1");
    up.apply(
        "hello.yaml",
        &std::fs::read_to_string(repo().join("examples/hello-pod.yaml")).unwrap(),
    );
    up.wait_for(
        "hello",
        "{.status.containerStatuses[0].ready}",
        "true",
        60,
        |r| r == "true",
    );
    // kubectl waits for nothing here; a bound keeps a hang from stalling the suite.
    let kubectl = |args: &[&str]| {
        let out = Command::new("timeout")
            .arg("60")
            .arg("kubectl")
            .args(args)
            .env("KUBECONFIG", &up.kubeconfig)
            .env("HOME", up.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &["exec", "hello", "--", "echo", "hi"][..],
        &["exec", "-i", "hello", "-c", "hw", "--", "sh", "-c", "cat"],
    ] {
        let (code, stderr) = kubectl(args);
        assert_eq!(code, Some(1), "kubectl {args:?}: {stderr}");
        assert!(
            stderr.contains("exec is not supported for Wasm containers"),
            "kubectl {args:?}:\n{stderr}\n--- drover:\n{}",
            up.log()
        );
    }
    let (code, stderr) = kubectl(&["exec", "hello", "-c", "nope", "--", "true"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
    // port-forward reaches the Wasm pod's port: kubectl 1.32 over the WebSocket tunnel,
    // kubectl 1.29 over SPDY (as every kubectl before 1.30).
    for kubectl in ["kubectl", "/usr/lib/google-cloud-sdk/bin/kubectl.1.29"] {
        let mut forward = Command::new(kubectl)
            .args(["port-forward", "pod/hello", ":8080", "-v=6"])
            .env("KUBECONFIG", &up.kubeconfig)
            .env("HOME", up.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // "Forwarding from 127.0.0.1:PORT -> 8080" once it listens.
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(forward.stdout.take().unwrap()));
        let port = lines.find_map(|l| {
            let l = l.ok()?;
            l.strip_prefix("Forwarding from 127.0.0.1:")?
                .split(' ')
                .next()?
                .parse::<u16>()
                .ok()
        });
        let Some(port) = port else {
            let _ = forward.kill();
            let out = forward.wait_with_output().unwrap();
            panic!(
                "{kubectl} port-forward did not listen:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        };
        // Two requests, each its own forwarded connection.
        for _ in 0..2 {
            let answer = http_get(&format!("127.0.0.1:{port}"), "/");
            assert!(
                answer.as_ref().is_some_and(
                    |(code, body)| *code == 200 && body.contains("Hello world from hello!")
                ),
                "{kubectl} port-forward: {answer:?}\n--- drover:\n{}",
                up.log()
            );
        }
        let _ = forward.kill();
        let out = forward.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        // Which transport each kubectl used, from its own log.
        if kubectl == "kubectl" {
            assert!(log.contains("101 Switching Protocols"), "{log}");
        }
    }
}

/// The commands README.md lists after `drover up`, run as written (with the test's binary for
/// `./target/release/drover`), against `drover up` on its defaults in a fresh home directory.
#[test]
fn drover_up_then_the_readme_commands_work_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("<!-- next-commands -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /next-commands -->").next())
        .expect("README.md has the next-commands block");
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .map(|l| l.replace("./target/release/drover", &bin().display().to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    examples();
    let home = tempfile::tempdir().unwrap();
    let real_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let tool_env = |cmd: &mut Command| {
        cmd.env("HOME", home.path())
            .env(
                "CARGO_HOME",
                std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo")),
            )
            .env(
                "RUSTUP_HOME",
                std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup")),
            )
            .env_remove("KUBECONFIG")
            .current_dir(repo());
    };
    let log = std::fs::File::create(home.path().join("up.log")).unwrap();
    let mut up = Command::new(bin());
    up.args(["up"]).stdout(log.try_clone().unwrap()).stderr(log);
    tool_env(&mut up);
    // Stopped however the test ends, so a failed check leaves no cluster running.
    let mut child = KillOnDrop(up.spawn().unwrap());
    let kubeconfig = home.path().join(".local/share/drover/admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "drover up wrote no kubeconfig");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sh = Command::new("bash");
    sh.args(["-euo", "pipefail", "-c", &script]);
    tool_env(&mut sh);
    let out = sh.output().unwrap();
    // The node is on the host's own address, and pods reach the cluster DNS through it.
    let node_and_dns = out.status.success().then(|| {
        let kubectl = |args: &[&str]| {
            let mut cmd = Command::new("kubectl");
            cmd.args(args);
            tool_env(&mut cmd);
            cmd.env("KUBECONFIG", &kubeconfig);
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let node_ip = kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
        ]);
        // The script's own pods are still stopping: start from none, so every pod seen below
        // is one of the new Deployment's.
        kubectl(&[
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app=hw",
            "--timeout=60s",
        ]);
        kubectl(&["apply", "-f", "examples/hello-world.yaml"]);
        kubectl(&[
            "rollout",
            "status",
            "deployment/hw-demo-deployment",
            "--timeout=60s",
        ]);
        let pod = kubectl(&[
            "get",
            "pods",
            "-l",
            "app=hw",
            "-o",
            "jsonpath={.items[0].metadata.uid} {.items[0].status.podIP}",
        ]);
        let (uid, pod_ip) = pod.split_once(' ').expect("uid and address");
        // What a container's resolver does: ask the cluster DNS from the pod's namespace.
        let netns = network::pods::PodLink::for_uid(uid).netns;
        let lookup = Command::new("ip")
            .args(["netns", "exec", &netns, "busybox", "nslookup"])
            .args(["hw-svc.default.svc.cluster.local", "10.96.0.10"])
            .output()
            .unwrap();
        let reached = pod_reaches_host_loopback(&netns, pod_ip);
        kubectl(&["delete", "-f", "examples/hello-world.yaml"]);
        (node_ip, lookup, reached)
    });
    child.stop();
    // `drover up` gave its pods network namespaces and programmed nftables on this host
    // (routed pod networking, the default): what it leaves is removed as an operator would.
    let mut cleanup = Command::new(bin());
    cleanup.args(["node", "--cleanup", "--node-dir"]);
    cleanup.arg(home.path().join(".local/share/drover/node"));
    tool_env(&mut cleanup);
    let cleaned = cleanup.output().unwrap();
    assert!(
        cleaned.status.success(),
        "drover node --cleanup: {}",
        String::from_utf8_lossy(&cleaned.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let up_log = std::fs::read_to_string(home.path().join("up.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the README's commands failed:\n{stdout}\n{}\n--- drover up:\n{up_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Hello world from hello! Your app is up and running in a cluster!"),
        "{stdout}"
    );
    assert!(stdout.contains("pod \"hello\" deleted"), "{stdout}");
    assert!(
        up_log.contains("kubectl get nodes"),
        "drover up suggests the next commands"
    );
    // Both NodePort requests were answered by the seed's Deployment.
    assert_eq!(
        stdout
            .matches("Hello world from hw-demo-deployment-")
            .count(),
        2,
        "{stdout}"
    );
    let (node_ip, lookup, reached) = node_and_dns.expect("the script succeeded");
    assert!(
        !reached,
        "a pod reached a service bound to the host's 127.0.0.1 (route_localnet without the guard)"
    );
    match network::hostaddr::primary_ipv4() {
        network::hostaddr::HostAddress::DefaultRoute { address, .. } => {
            assert_eq!(node_ip, address.to_string(), "{up_log}")
        }
        network::hostaddr::HostAddress::NoDefaultRoute(_) => assert_eq!(node_ip, "127.0.0.1"),
    }
    let answer = String::from_utf8_lossy(&lookup.stdout);
    assert!(
        lookup.status.success() && answer.contains("10.96."),
        "nslookup from a pod: {answer}\n{}",
        String::from_utf8_lossy(&lookup.stderr)
    );
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a pod that routes 127.0.0.0/8 to its node (what a container with CAP_NET_ADMIN could
/// do) reaches a UDP service bound to the host's 127.0.0.1. The pods' links have
/// `route_localnet` (for NodePorts on 127.0.0.1), so only the node's guard rule stops this.
fn pod_reaches_host_loopback(netns: &str, pod_ip: &str) -> bool {
    let service = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let in_pod = |script: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    in_pod(
        "ip route del local 127.0.0.0/8 dev lo table local && \
         ip route del local 127.0.0.1 dev lo table local && \
         ip route add 127.0.0.0/8 via 169.254.1.1 dev eth0 onlink",
    );
    // Datagrams until one arrives or the guard has had ample time to drop them all.
    service
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..10 {
        in_pod(&format!(
            "python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.bind((\"{pod_ip}\", 0)); s.sendto(b\"in\", (\"127.0.0.1\", {port}))'"
        ));
        if service.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// A real registry (Debian's docker-registry) on 127.0.0.1, stopped on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: test\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&addr, "/v2/").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "the registry never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn images_are_pushed_to_and_pulled_from_a_real_registry() {
    let registry = Registry::start();
    let image = format!("{}/demo/hello:v1", registry.addr);
    let out = Command::new(bin())
        .args(["image", "push"])
        .arg(examples().join("hello_world.wasm"))
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sha256:"));
    // The manifest is in the CNCF Wasm layout.
    let manifest = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&registry.addr).unwrap();
        write!(
            s,
            "GET /v2/demo/hello/manifests/v1 HTTP/1.1\r\nHost: {}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n",
            registry.addr
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf
    };
    assert!(manifest.starts_with("HTTP/1.1 200"), "{manifest}");
    assert!(
        manifest.contains("application/vnd.wasm.config.v0+json")
            && manifest.contains("\"application/wasm\""),
        "{manifest}"
    );

    let up = Up::start(45);
    up.apply(
        "pulled.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: pulled}}\nspec:\n  containers:\n  - {{name: hw, image: \"{image}\", imagePullPolicy: Always, ports: [{{containerPort: 8080}}]}}\n"),
    );
    up.wait_for(
        "pulled",
        "{.status.containerStatuses[0].ready}",
        "true",
        60,
        |r| r == "true",
    );
    let ip = up.jsonpath("pulled", "{.status.podIP}");
    let (code, body) = http_get(&format!("{ip}:8080"), "/").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("Hello world from pulled!"), "{body}");
    let image_id = up.jsonpath("pulled", "{.status.containerStatuses[0].imageID}");
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let described = up.ok(&["describe", "pod", "pulled"]);
    assert!(
        described.contains("Successfully pulled image"),
        "{described}"
    );

    // A tag the registry does not have: ErrImagePull, then ImagePullBackOff, with the reason.
    let missing = format!("{}/demo/hello:nope", registry.addr);
    up.apply(
        "nope.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: nope}}\nspec:\n  containers:\n  - {{name: hw, image: \"{missing}\"}}\n"),
    );
    up.wait_for(
        "nope",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "ImagePullBackOff",
        60,
        |r| r == "ImagePullBackOff",
    );
    let message = up.jsonpath(
        "nope",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(message.contains("hello:nope"), "{message}");
    // Never means the node's store only.
    up.apply(
        "never.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: never}}\nspec:\n  containers:\n  - {{name: hw, image: \"{registry}/demo/other:v1\", imagePullPolicy: Never}}\n", registry = registry.addr),
    );
    up.wait_for(
        "never",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "ErrImageNeverPull",
        30,
        |r| r == "ErrImageNeverPull",
    );
}

/// A second machine's node joins with `drover token node` and `drover node`, runs the pods
/// bound to it, and its logs are reachable through the API.
#[test]
fn a_second_node_joins_with_a_token_and_runs_its_pods() {
    let up = Up::start(46);
    let (mut second, token, node_dir) = up.second_node();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !up.run(&["get", "node", "second"]).1.contains(" Ready") {
        assert!(
            Instant::now() < deadline,
            "the second node never became Ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    import_into(&node_dir, "batch.wasm", "batch:v1");
    up.apply(
        "there.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: there}\nspec:\n  nodeName: second\n  restartPolicy: Never\n  containers:\n  - {name: batch, image: batch:v1}\n",
    );
    up.wait_for("there", "{.status.phase}", "Succeeded", 60, |p| {
        p == "Succeeded"
    });
    assert!(up
        .jsonpath("there", "{.status.podIP}")
        .starts_with("127.246."));
    assert!(up.ok(&["logs", "there"]).contains("batch: done"));
    // The node's credential cannot do what an admin does.
    let (ok, _, err) = up.run(&["--token", &token, "delete", "node", "node-46"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let _ = second.kill();
    let _ = second.wait();
}

/// The seed's Deployment on Drover: 3/3 ready, a deleted pod replaced, `kubectl set image`
/// rolled out without ever dropping below the available minimum, and `kubectl rollout undo`.
#[test]
fn the_seed_deployment_runs_heals_rolls_out_and_rolls_back() {
    let up = Up::start(47);
    up.import("hello_world.wasm", "hello-world:v1");
    up.import("hello_world.wasm", "hello-world:v2");
    up.ok(&[
        "apply",
        "-f",
        repo().join("examples/hello-world.yaml").to_str().unwrap(),
    ]);
    let status = up.ok(&[
        "rollout",
        "status",
        "deployment/hw-demo-deployment",
        "--timeout=60s",
    ]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let ready = up.ok(&[
        "get",
        "deploy",
        "hw-demo-deployment",
        "-o",
        "jsonpath={.status.readyReplicas}/{.spec.replicas}",
    ]);
    assert_eq!(ready, "3/3");
    // The Service's Endpoints and EndpointSlice list the three ready pods.
    let ips = up.ok(&[
        "get",
        "pods",
        "-l",
        "app=hw",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let mut ips: Vec<&str> = ips.split_whitespace().collect();
    ips.sort();
    let endpoints = up.until(30, "the Service's Endpoints", || {
        let e = up.ok(&[
            "get",
            "endpoints",
            "hw-svc",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]);
        let mut e: Vec<String> = e.split_whitespace().map(str::to_string).collect();
        e.sort();
        (e.len() == 3).then_some(e)
    });
    assert_eq!(endpoints, ips);
    let slice = up.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=hw-svc",
        "-o",
        "jsonpath={.items[0].endpoints[*].conditions.ready}",
    ]);
    assert_eq!(slice, "true true true");
    // What the controllers did is in the events `kubectl describe` shows.
    let described = up.ok(&["describe", "deployment", "hw-demo-deployment"]);
    assert!(
        described.contains("ScalingReplicaSet") && described.contains("Scaled up replica set"),
        "{described}"
    );
    let pods = |up: &Up| -> Vec<String> {
        up.ok(&[
            "get",
            "pods",
            "-l",
            "app=hw",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {end}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    };
    let before = pods(&up);
    assert_eq!(before.len(), 3, "{before:?}");
    up.ok(&["delete", "pod", &before[0]]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = pods(&up);
        let ready = up.ok(&[
            "get",
            "deploy",
            "hw-demo-deployment",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]);
        if now.len() == 3 && !now.contains(&before[0]) && ready == "3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted pod was not replaced: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Roll out v2, watching availability: maxUnavailable is 25% of 3, i.e. 0.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lowest = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let (kubeconfig, home) = (up.kubeconfig.clone(), up.dir.path().to_path_buf());
    let watcher = {
        let (watching, lowest) = (watching.clone(), lowest.clone());
        std::thread::spawn(move || {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("kubectl")
                    .args(["get", "pods", "-l", "app=hw", "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{.metadata.deletionTimestamp}{\"\\n\"}{end}"])
                    .env("KUBECONFIG", &kubeconfig)
                    .env("HOME", &home)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let ready = text.lines().filter(|l| l.trim() == "True").count() as i64;
                if out.status.success() {
                    lowest.fetch_min(ready, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    up.ok(&[
        "set",
        "image",
        "deployment/hw-demo-deployment",
        "hw=hello-world:v2",
    ]);
    let status = up.ok(&[
        "rollout",
        "status",
        "deployment/hw-demo-deployment",
        "--timeout=60s",
    ]);
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(status.contains("successfully rolled out"), "{status}");
    assert!(
        lowest.load(std::sync::atomic::Ordering::Relaxed) >= 3,
        "fewer than 3 ready pods during the rollout"
    );
    let images = up.ok(&[
        "get",
        "pods",
        "-l",
        "app=hw",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(
        images
            .split_whitespace()
            .filter(|i| *i == "hello-world:v2")
            .count(),
        3,
        "{images}"
    );
    let history = up.ok(&["rollout", "history", "deployment/hw-demo-deployment"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );

    // Back to v1: the first ReplicaSet becomes current again, with the next revision.
    up.ok(&["rollout", "undo", "deployment/hw-demo-deployment"]);
    up.ok(&[
        "rollout",
        "status",
        "deployment/hw-demo-deployment",
        "--timeout=60s",
    ]);
    let image = up.ok(&[
        "get",
        "deploy",
        "hw-demo-deployment",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "hello-world:v1");
    let rs = up.ok(&["get", "rs", "-l", "app=hw", "-o", "name"]);
    assert_eq!(rs.lines().count(), 2, "the old ReplicaSet was reused: {rs}");
    let revision = up.ok(&[
        "get",
        "deploy",
        "hw-demo-deployment",
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(revision, "3");
    up.ok(&["scale", "deployment", "hw-demo-deployment", "--replicas=5"]);
    let status = up.ok(&[
        "rollout",
        "status",
        "deployment/hw-demo-deployment",
        "--timeout=60s",
    ]);
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(pods(&up).len(), 5);

    // Every namespace has its default ServiceAccount, as in Kubernetes.
    up.ok(&["get", "serviceaccount", "default"]);
    // Deleting the Deployment takes its ReplicaSets and their pods with it.
    up.ok(&["delete", "deployment", "hw-demo-deployment"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = up.ok(&["get", "rs,pods", "-l", "app=hw", "-o", "name"]);
        if left.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there after the Deployment went:\n{left}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where each pod of `selector` runs: (name, node) pairs of the pods not being deleted.
fn placements(up: &Up, selector: &str) -> Vec<(String, String)> {
    up.ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}={.metadata.deletionTimestamp}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
    ])
    .split_whitespace()
    .filter_map(|p| {
        let f: Vec<&str> = p.split('=').collect();
        (f.len() == 4 && f[2].is_empty() && f[3] == "True").then(|| (f[0].to_string(), f[1].to_string()))
    })
    .collect()
}

/// Two nodes: the scheduler spreads a Deployment over both; `kubectl cordon` and `drain` move
/// its pods off one; a node killed with SIGKILL is marked unreachable and its pods run on the
/// other node within seconds (the grace period is 6 s).
#[test]
fn pods_spread_over_nodes_drain_moves_them_and_a_killed_node_loses_them_to_the_other() {
    let up = Up::start(48);
    let (mut second, _token, node_dir) = up.second_node();
    up.until(60, "the second node Ready", || {
        up.run(&["get", "node", "second"])
            .1
            .contains(" Ready")
            .then_some(())
    });
    up.import("hello_world.wasm", "hello-world:v1");
    import_into(&node_dir, "hello_world.wasm", "hello-world:v1");
    up.apply(
        "web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: hw\n        image: hello-world:v1\n        ports: [{containerPort: 8080}]\n        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}\n",
    );
    let on = |p: &[(String, String)], node: &str| p.iter().filter(|(_, n)| n == node).count();
    let spread = up.until(60, "4 ready pods", || {
        let p = placements(&up, "app=web");
        (p.len() == 4).then_some(p)
    });
    assert_eq!(
        (on(&spread, "node-48"), on(&spread, "second")),
        (2, 2),
        "least allocated spreads: {spread:?}"
    );
    let events = up.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=Scheduled",
        "-o",
        "name",
    ]);
    assert!(events.lines().count() >= 4, "Scheduled events: {events}");

    // Drain: cordoned, its pods evicted and recreated on node-48.
    up.ok(&["drain", "second", "--ignore-daemonsets", "--timeout=60s"]);
    assert!(up
        .ok(&["get", "node", "second"])
        .contains("SchedulingDisabled"));
    up.until(60, "all pods on node-48 after the drain", || {
        let p = placements(&up, "app=web");
        (p.len() == 4 && on(&p, "node-48") == 4).then_some(())
    });
    // Nothing fits anywhere: the pod waits, with the reason in an event.
    up.ok(&["cordon", "node-48"]);
    up.apply("waiting.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: waiting}\nspec:\n  containers:\n  - {name: hw, image: hello-world:v1}\n");
    let why = up.until(30, "a FailedScheduling event", || {
        let e = up.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=waiting,reason=FailedScheduling",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!e.is_empty()).then_some(e)
    });
    assert!(
        why.contains("0/2 nodes are available: 2 node(s) were unschedulable."),
        "{why}"
    );
    up.ok(&["uncordon", "node-48", "second"]);
    up.wait_for("waiting", "{.spec.nodeName}", "bound", 30, |n| {
        !n.is_empty()
    });
    up.ok(&["delete", "pod", "waiting", "--wait=false"]);

    // Scaled up, the new pods go to the emptier second node; then it dies.
    up.ok(&["scale", "deployment", "web", "--replicas=6"]);
    let placed = up.until(60, "6 ready pods with some on second", || {
        let p = placements(&up, "app=web");
        (p.len() == 6 && on(&p, "second") >= 1).then_some(p)
    });
    let lost: Vec<String> = placed
        .iter()
        .filter(|(_, n)| n == "second")
        .map(|(p, _)| p.clone())
        .collect();
    let _ = second.kill();
    let _ = second.wait();
    let killed = Instant::now();
    up.until(60, "6 ready pods on node-48 after the kill", || {
        let p = placements(&up, "app=web");
        (p.len() == 6 && on(&p, "node-48") == 6).then_some(())
    });
    eprintln!(
        "pods of the killed node ran elsewhere after {:?}",
        killed.elapsed()
    );
    let node = up.ok(&[
        "get",
        "node",
        "second",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints[*].key}",
    ]);
    assert!(
        node.starts_with("Unknown") && node.contains("node.kubernetes.io/unreachable"),
        "{node}"
    );
    for p in lost {
        let (_, out, _) = up.run(&[
            "get",
            "pod",
            &p,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ]);
        assert!(
            !out.is_empty() || !up.run(&["get", "pod", &p]).0,
            "{p} was not evicted"
        );
    }
}

/// A Job runs its pods to the requested completions; a CronJob starts Jobs on its schedule;
/// `kubectl create job --from=cronjob/...` starts one by hand.
#[test]
fn jobs_run_to_completion_and_cronjobs_fire_on_schedule() {
    let up = Up::start(49);
    up.import("batch.wasm", "batch:v1");
    up.apply(
        "job.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: count}\nspec:\n  completions: 3\n  parallelism: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - {name: batch, image: batch:v1}\n",
    );
    up.ok(&[
        "wait",
        "--for=condition=complete",
        "job/count",
        "--timeout=60s",
    ]);
    let status = up.ok(&[
        "get",
        "job",
        "count",
        "-o",
        "jsonpath={.status.succeeded} {.status.completionTime}",
    ]);
    assert!(status.starts_with("3 "), "{status}");
    let pods = up.ok(&["get", "pods", "-l", "job-name=count", "-o", "name"]);
    assert_eq!(pods.lines().count(), 3, "{pods}");
    let logs = up.ok(&["logs", "job/count"]);
    assert!(logs.contains("batch: done"), "{logs}");

    up.apply(
        "cron.yaml",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n  schedule: '@every 5s'\n  successfulJobsHistoryLimit: 2\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - {name: batch, image: batch:v1}\n",
    );
    let job = up.until(40, "a Job from the CronJob", || {
        let out = up.ok(&["get", "jobs", "-o", "jsonpath={range .items[?(@.metadata.ownerReferences[0].name==\"tick\")]}{.metadata.name} {end}"]);
        out.split_whitespace().next().map(str::to_string)
    });
    up.ok(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{job}"),
        "--timeout=60s",
    ]);
    let last = up.until(20, "lastScheduleTime", || {
        let t = up.ok(&[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.lastScheduleTime}",
        ]);
        (!t.is_empty()).then_some(t)
    });
    assert!(last.ends_with('Z'), "{last}");
    up.ok(&["create", "job", "by-hand", "--from=cronjob/tick"]);
    up.ok(&[
        "wait",
        "--for=condition=complete",
        "job/by-hand",
        "--timeout=60s",
    ]);
    // Deleting the CronJob takes its Jobs with it.
    up.ok(&["delete", "cronjob", "tick"]);
    up.until(30, "the CronJob's Jobs collected", || {
        let out = up.ok(&["get", "jobs", "-o", "jsonpath={range .items[?(@.metadata.ownerReferences[0].name==\"tick\")]}{.metadata.name} {end}"]);
        out.trim().is_empty().then_some(())
    });
}

/// `kubectl autoscale` on an HTTP function: under load its CPU use (measured by the node per
/// Wasm instance, served as metrics.k8s.io for `kubectl top`) scales the Deployment up; idle,
/// back down.
#[test]
fn the_autoscaler_scales_a_loaded_http_function_up_and_back_down() {
    let up = Up::start_with(50, &["--horizontal-pod-autoscaler-sync-period", "2s"]);
    up.import("hello_world.wasm", "hello-world:v1");
    up.apply(
        "fn.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: fn}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: fn}}\n  template:\n    metadata: {labels: {app: fn}}\n    spec:\n      containers:\n      - name: hw\n        image: hello-world:v1\n        ports: [{containerPort: 8080}]\n        resources: {requests: {cpu: 10m}}\n",
    );
    up.ok(&["rollout", "status", "deployment/fn", "--timeout=60s"]);
    up.ok(&[
        "autoscale",
        "deployment",
        "fn",
        "--cpu-percent=50",
        "--min=1",
        "--max=4",
    ]);
    up.ok(&[
        "patch",
        "hpa",
        "fn",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":4}}}}"#,
    ]);
    let pod = up.ok(&[
        "get",
        "pods",
        "-l",
        "app=fn",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let ip = up.jsonpath(&pod, "{.status.podIP}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ip) = (stop.clone(), ip.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut s) = std::net::TcpStream::connect((ip.as_str(), 8080)) else {
                        continue;
                    };
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: fn\r\nConnection: close\r\n\r\n");
                    let _ = s.read_to_end(&mut Vec::new());
                }
            })
        })
        .collect();
    let scaled = up.until(60, "a scale-up under load", || {
        let r = up.ok(&["get", "deployment", "fn", "-o", "jsonpath={.spec.replicas}"]);
        (r.parse::<i32>().unwrap_or(0) > 1).then_some(r)
    });
    eprintln!("scaled to {scaled} replicas under load");
    let top = up.ok(&["top", "pod", "-l", "app=fn"]);
    assert!(top.contains(&pod) && top.contains("CPU(cores)"), "{top}");
    let hpa = up.ok(&["get", "hpa", "fn"]);
    assert!(hpa.contains("cpu: ") && hpa.contains("%/50%"), "{hpa}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }
    up.until(60, "the scale-down when idle", || {
        let r = up.ok(&["get", "deployment", "fn", "-o", "jsonpath={.spec.replicas}"]);
        (r == "1").then_some(())
    });
    let events = up.ok(&["describe", "hpa", "fn"]);
    assert!(events.contains("SuccessfulRescale"), "{events}");
}

/// A DaemonSet runs one pod per node, also on a node that joins later; a StatefulSet starts
/// its pods in order with stable names.
#[test]
fn daemonsets_cover_every_node_and_statefulsets_start_in_order() {
    let up = Up::start(52);
    up.import("hello_world.wasm", "hello-world:v1");
    up.apply(
        "ds.yaml",
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      containers:\n      - {name: hw, image: hello-world:v1, ports: [{containerPort: 8080}]}\n",
    );
    up.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    let (mut second, _token, node_dir) = up.second_node();
    import_into(&node_dir, "hello_world.wasm", "hello-world:v1");
    up.until(60, "a daemon pod on each of the two nodes", || {
        let p = placements(&up, "app=agent");
        let mut nodes: Vec<&str> = p.iter().map(|(_, n)| n.as_str()).collect();
        nodes.sort();
        (nodes == ["node-52", "second"]).then_some(())
    });
    // The second node goes for good: its Node object too (its pods are then removed).
    let _ = second.kill();
    let _ = second.wait();
    up.ok(&["delete", "node", "second"]);
    up.until(30, "the daemon pod of the removed node gone", || {
        (placements(&up, "app=agent").len() == 1).then_some(())
    });

    up.apply(
        "sts.yaml",
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  replicas: 3\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers:\n      - name: hw\n        image: hello-world:v1\n        ports: [{containerPort: 8080}]\n        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}\n",
    );
    up.ok(&["rollout", "status", "sts/db", "--timeout=90s"]);
    let created: Vec<String> = ["db-0", "db-1", "db-2"]
        .iter()
        .map(|p| up.jsonpath(p, "{.metadata.creationTimestamp}"))
        .collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]), "{created:?}");
    assert_eq!(
        up.jsonpath("db-1", "{.spec.hostname}.{.spec.subdomain}"),
        "db-1.db"
    );
    // A deleted member comes back with its name. (Without --wait: the replacement can come
    // between kubectl's read and its watch, and kubectl would then wait for it to go too.)
    let uid = up.jsonpath("db-1", "{.metadata.uid}");
    up.ok(&["delete", "pod", "db-1", "--wait=false"]);
    up.wait_for("db-1", "{.metadata.uid}", "a new pod", 60, |u| {
        !u.is_empty() && u != uid
    });
    up.wait_for(
        "db-1",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "Ready again",
        60,
        |s| s == "True",
    );
}
