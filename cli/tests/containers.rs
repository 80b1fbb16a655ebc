//! Linux containers end to end, beside Wasm pods. NEEDS ROOT (CI runs as root): the LAN of
//! `common::lan` (a bridge, a network namespace per node), a real registry (Debian's
//! docker-registry) holding a busybox image the test builds from /bin/busybox, and the real
//! kubectl. The nodes pull the image over the bridge, run it through libcontainer, and the
//! tests look at what is left on the host afterwards.

mod common;
use common::lan::{sh, Lan};

/// A LAN whose nodes pull from a registry on the bridge, and the busybox image's reference.
struct Cluster {
    lan: Lan,
    image: String,
    _registry: testkit::registry::LocalRegistry,
}

fn cluster(n: u8, hosts: usize) -> Cluster {
    cluster_with(n, hosts, &[])
}

fn cluster_with(n: u8, hosts: usize, server_flags: &[&str]) -> Cluster {
    // The registry listens on every address: the test pushes through loopback, the nodes
    // (each in its own namespace) pull through the bridge.
    let registry = testkit::registry::LocalRegistry::start_on("0.0.0.0");
    let port = registry.address.rsplit(':').next().unwrap().to_string();
    let pushed = registry.image("busybox:1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(testkit::images::busybox_image(&pushed))
        .expect("the busybox image is pushed");
    let bridge_registry = format!("172.30.{n}.1:{port}");
    let lan = Lan::start_full(
        n,
        hosts,
        server_flags,
        &["--insecure-registry", &bridge_registry],
    );
    Cluster {
        image: format!("{bridge_registry}/busybox:1"),
        lan,
        _registry: registry,
    }
}

impl Cluster {
    fn apply(&self, yaml: &str) {
        let file = self.lan.dir.path().join(format!("m{}.yaml", rand_suffix()));
        std::fs::write(&file, yaml.replace("IMAGE", &self.image)).unwrap();
        self.lan.ok(&["apply", "-f", file.to_str().unwrap()]);
    }

    fn exec(&self, pod: &str, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["exec", pod, "--"];
        all.extend_from_slice(args);
        self.lan.run(&all)
    }

    /// The pod's phase, and its first container's state as `reason` or `running`.
    fn container_state(&self, pod: &str, container: usize) -> String {
        let (_, out, _) = self.lan.run(&[
            "get",
            "pod",
            pod,
            "-o",
            &format!("jsonpath={{.status.containerStatuses[{container}].state}} restarts={{.status.containerStatuses[{container}].restartCount}}"),
        ]);
        out
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// What of pod `uid` is on the host: processes in its cgroups, mounts, cgroups, veths.
fn leftovers(uid12: &str) -> Vec<String> {
    let mut left = Vec::new();
    for hierarchy in ["memory", "pids", "cpu", "freezer"] {
        let dir = format!("/sys/fs/cgroup/{hierarchy}/drover");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(uid12) {
                left.push(format!("cgroup {dir}/{name}"));
            }
        }
    }
    // Its rootfs overlays (`containers/<uid12>-...`) and its IPC/UTS namespace files
    // (`/run/drover-oci/<node>-pods/<uid>`).
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|l| {
                l.contains(&format!("/containers/{uid12}")) || l.contains(&format!("-pods/{uid12}"))
            })
            .map(|l| format!("mount {l}")),
    );
    let (_, links) = sh("ip -all netns exec ip -o link 2>/dev/null; ip -o link");
    left.extend(
        links
            .lines()
            .filter(|l| l.contains(&format!("drv{uid12}")))
            .map(|l| format!("veth {l}")),
    );
    // Its shims (`drover shim run --id <uid12>-...`), from /proc: no `ps` needed.
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        let args = std::fs::read(proc.path().join("cmdline")).unwrap_or_default();
        let args = String::from_utf8_lossy(&args).replace('\0', " ");
        if args.contains(&format!("--id {uid12}")) {
            left.push(format!("process {args}"));
        }
    }
    left
}

fn uid12(c: &Cluster, pod: &str) -> String {
    c.lan
        .ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"])
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

#[test]
fn container_pods_serve_through_services_beside_wasm_pods_and_leave_nothing_behind() {
    let c = cluster(7, 2);
    // busybox httpd and the Wasm hello-world, both `app: mixed`, behind one Service.
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: mixed, kind: container}}
  template:
    metadata: {labels: {app: mixed, kind: container}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: IMAGE
        command: ["sh", "-c", "echo container $(hostname) > /www/index.html && exec httpd -f -v -p 8080 -h /www"]
        ports: [{containerPort: 8080}]
        resources: {limits: {memory: 64Mi, cpu: 500m}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hw}
spec:
  replicas: 1
  selector: {matchLabels: {app: mixed, kind: wasm}}
  template:
    metadata: {labels: {app: mixed, kind: wasm}}
    spec:
      containers:
      - name: hw
        image: hello-world:v1
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: mixed}
spec:
  selector: {app: mixed}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: IMAGE
    command: ["sh", "-c", "echo from-localhost > /www/index.html && exec httpd -f -p 8081 -h /www"]
  - name: client
    image: IMAGE
    command: ["sh", "-c", "while true; do wget -q -O- http://127.0.0.1:8081/; sleep 1; done"]
"#,
    );
    let web = c.lan.ready_pods("kind=container", 2);
    c.lan.ready_pods("kind=wasm", 1);
    let ip = c
        .lan
        .ok(&["get", "svc", "mixed", "-o", "jsonpath={.spec.clusterIP}"]);

    // Through the one Service, from a node: both kinds answer.
    c.lan
        .until(60, "both kinds answering through the Service", || {
            let mut seen = (false, false);
            for _ in 0..30 {
                let (_, out) = c.lan.on_host(1, &format!("curl -s -m 2 http://{ip}/"));
                seen.0 |= out.starts_with("container web-");
                seen.1 |= out.contains("Hello world from hw-");
            }
            (seen.0 && seen.1).then_some(())
        });

    // Containers of one pod share localhost; kubectl logs shows a container's output.
    c.lan.until(60, "the client container's log", || {
        let (_, out, _) = c.lan.run(&["logs", "duo", "-c", "client"]);
        out.contains("from-localhost").then_some(())
    });

    // exec over SPDY (kubectl 1.29, as every kubectl before 1.30), with stdin.
    let kubectl = |program: &str, args: &[&str]| {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(program)
            .args(args)
            .env("KUBECONFIG", &c.lan.kubeconfig)
            .env("HOME", c.lan.dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let old = "/usr/lib/google-cloud-sdk/bin/kubectl.1.29";
    let (code, out, err) = kubectl(
        old,
        &[
            "exec",
            "duo",
            "-c",
            "server",
            "--",
            "sh",
            "-c",
            "cat /www/index.html; exit 4",
        ],
    );
    assert_eq!((code, out.as_str()), (Some(4), "from-localhost\n"), "{err}");
    // exec -it on a terminal made in the container: kubectl needs one of its own, which
    // `script` gives it. `tty` names the container's terminal, `stty size` sees kubectl's
    // (once its first resize has arrived: the command may start before it; busybox's stty
    // fails on a terminal of no size).
    let (code, out, err) = kubectl(
        "script",
        &["-qec", "stty cols 91 rows 29; kubectl exec -it duo -c server -- sh -c 'tty; until [ -n \"$(stty size 2>/dev/null | grep -v \"^0 0\")\" ]; do :; done; stty size; echo $TERM'", "/dev/null"],
    );
    let out = out.replace('\r', "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("/dev/pts/0\n29 91\nxterm\n"), "{out:?}");
    // port-forward into the pod's own localhost (where its containers meet), with both
    // kubectl transports.
    for program in ["kubectl", old] {
        let mut forward = std::process::Command::new(program)
            .args(["port-forward", "pod/duo", ":8081"])
            .env("KUBECONFIG", &c.lan.kubeconfig)
            .env("HOME", c.lan.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(forward.stdout.take().unwrap()));
        let port = lines
            .find_map(|l| {
                l.ok()?
                    .strip_prefix("Forwarding from 127.0.0.1:")?
                    .split(' ')
                    .next()?
                    .parse::<u16>()
                    .ok()
            })
            .expect("kubectl port-forward listens");
        let (ok, body) = sh(&format!("curl -s -m 10 http://127.0.0.1:{port}/"));
        let _ = forward.kill();
        let _ = forward.wait();
        assert!(ok && body == "from-localhost\n", "{program}: {body:?}");
    }

    // Attach sockets are root's alone: whoever connects types into a container.
    let (_, modes) = sh("stat -c '%a %n' /run/drover-oci/*-attach");
    assert!(
        !modes.trim().is_empty() && modes.lines().all(|l| l.starts_with("700 ")),
        "{modes}"
    );
    // kubectl run -i attaches to the new container's stdin (stdinOnce: its end is the
    // shell's), over the WebSocket (1.32) and SPDY (1.29).
    for (i, program) in ["kubectl", old].iter().enumerate() {
        let script = format!(
            "echo 'echo attached-$((6*7)); echo to-stderr >&2' | {program} run reader{i} -i --rm \
             --restart=Never --image={} -- sh",
            c.image
        );
        let (code, out, err) = kubectl("sh", &["-c", &script]);
        assert_eq!(code, Some(0), "{program}: {out}{err}");
        assert!(out.contains("attached-42"), "{program}: {out:?} {err:?}");
        assert!(err.contains("to-stderr"), "{program}: {out:?} {err:?}");
    }
    // kubectl run -it: the container runs on a terminal, and the attachment's resize reaches it.
    let (code, out, err) = kubectl(
        "script",
        &["-qec", &format!("stty cols 77 rows 21; kubectl run tty1 -it --rm --restart=Never --image={} -- sh -c 'until [ -n \"$(stty size 2>/dev/null | grep -v \"^0 0\")\" ]; do :; done; tty; stty size; echo $TERM'", c.image), "/dev/null"],
    );
    let out = out.replace('\r', "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("/dev/pts/0\n21 77\nxterm\n"), "{out:?}");

    // The pod's containers share its UTS namespace (hostname) and IPC namespace.
    for container in ["server", "client"] {
        let (ok, out, err) = c
            .lan
            .run(&["exec", "duo", "-c", container, "--", "hostname"]);
        assert!(ok && out == "duo\n", "{container}: {out} {err}");
    }
    let ipc = |container: &str| {
        let (_, out, _) = c.lan.run(&[
            "exec",
            "duo",
            "-c",
            container,
            "--",
            "readlink",
            "/proc/self/ns/ipc",
        ]);
        out
    };
    assert!(ipc("server").starts_with("ipc:["), "{}", ipc("server"));
    assert_eq!(ipc("server"), ipc("client"));

    // kubectl exec, with its output and exit code.
    let (ok, out, err) = c.exec(&web[0].0, &["echo", "hi"]);
    assert!(ok && out == "hi\n", "{out} {err}");
    let (ok, _, err) = c.exec(&web[0].0, &["sh", "-c", "exit 3"]);
    assert!(!ok && err.contains("exit code 3"), "{err}");

    // The cluster DNS from inside a container.
    let (ok, out, err) = c.exec(&web[0].0, &["nslookup", "mixed.default.svc.cluster.local"]);
    assert!(ok && out.contains(&ip), "nslookup: {out} {err}");

    // Deleting the pods leaves nothing of them on the hosts.
    let mut uids: Vec<String> = web.iter().map(|(name, _, _)| uid12(&c, name)).collect();
    uids.push(uid12(&c, "duo"));
    c.lan.ok(&["delete", "deployment", "web", "hw"]);
    c.lan.ok(&["delete", "pod", "duo"]);
    c.lan.until(60, "the pods gone", || {
        let out = c.lan.ok(&["get", "pods", "-o", "name"]);
        out.trim().is_empty().then_some(())
    });
    for uid in uids {
        c.lan.until(10, "nothing left of a deleted pod", || {
            let left = leftovers(&uid);
            left.is_empty().then_some(()).or_else(|| {
                eprintln!("still there: {left:?}");
                None
            })
        });
    }
}

#[test]
fn oom_kills_probe_restarts_and_bad_images_are_reported() {
    let c = cluster(8, 1);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: IMAGE
    command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    resources: {limits: {memory: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: sick}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sick
    image: IMAGE
    command: ["sh", "-c", "touch /healthy; sleep 2; rm /healthy; sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/healthy"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: missing-image}
spec:
  containers:
  - name: c
    image: REGISTRY/nosuch:1
---
apiVersion: v1
kind: Pod
metadata: {name: missing-command}
spec:
  containers:
  - name: c
    image: IMAGE
    command: ["nosuch-program"]
"#
        .replace("REGISTRY", c.image.split('/').next().unwrap())
        .as_str(),
    );
    c.lan.until(60, "the hog OOMKilled", || {
        let state = c.container_state("hog", 0);
        state.contains("OOMKilled").then_some(())
    });
    c.lan.until(
        60,
        "the sick container restarted by its liveness probe",
        || {
            let state = c.container_state("sick", 0);
            let restarts: u32 = state.rsplit("restarts=").next()?.trim().parse().ok()?;
            (restarts >= 1).then_some(())
        },
    );
    let events = c.lan.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sick",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    c.lan.until(60, "the missing image reported", || {
        let state = c.container_state("missing-image", 0);
        (state.contains("ErrImagePull") || state.contains("ImagePullBackOff")).then_some(())
    });
    c.lan.until(60, "the missing command reported", || {
        let state = c.container_state("missing-command", 0);
        (state.contains("CreateContainerError") && state.contains("executable file not found"))
            .then_some(())
    });
}

#[test]
fn network_policy_governs_container_to_wasm_traffic() {
    let c = cluster(9, 1);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  containers:
  - name: hw
    image: hello-world:v1
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, labels: {app: stranger}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sleep", "3600"]
"#,
    );
    let server = c.lan.ready_pods("app=server", 1)[0].1.clone();
    c.lan.ready_pods("app=client", 1);
    c.lan.ready_pods("app=stranger", 1);
    // busybox wget from inside the container, given 3 s (Debian's busybox wget crashes with
    // its own -T timeout when stdin is not a terminal, so the shell kills it instead).
    let get = |pod: &str| {
        let script = format!(
            "wget -q -O- http://{server}:8080/ & pid=$!; (sleep 3; kill $pid 2>/dev/null) & wait $pid"
        );
        let (ok, out, _) = c.exec(pod, &["sh", "-c", &script]);
        ok && out.contains("Hello world from server")
    };
    c.lan.until(30, "the container reaching the Wasm pod", || {
        get("client").then_some(())
    });
    c.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
"#,
    );
    c.lan.until(30, "deny-all cutting the client off", || {
        (!get("client")).then_some(())
    });
    c.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
"#,
    );
    c.lan
        .until(30, "the allow rule reopening it for the client", || {
            get("client").then_some(())
        });
    assert!(!get("stranger"), "the stranger got through");
}

/// A pod's ServiceAccount token, projected at /var/run/secrets/kubernetes.io/serviceaccount
/// with the cluster CA and the namespace, on a tmpfs: the token is the pod's ServiceAccount's,
/// gets what RBAC grants it and no more, and dies with the pod.
#[test]
fn pods_get_their_service_account_token_ca_and_namespace() {
    let c = cluster(10, 1);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: quiet, labels: {app: quiet}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sleep", "3600"]
"#,
    );
    c.lan.ready_pods("app=client", 1);
    c.lan.ready_pods("app=quiet", 1);
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let read = |pod: &str, file: &str| c.exec(pod, &["cat", &format!("{dir}/{file}")]);
    let (ok, token, err) = read("client", "token");
    assert!(ok && token.starts_with("drover."), "{token}{err}");
    let (_, namespace, _) = read("client", "namespace");
    assert_eq!(namespace, "default");
    let (_, ca, _) = read("client", "ca.crt");
    let cluster_ca = std::fs::read_to_string(c.lan.dir.path().join("server/pki/ca.crt")).unwrap();
    assert_eq!(ca.trim(), cluster_ca.trim());
    let (_, mounts, _) = c.exec("client", &["cat", "/proc/mounts"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(dir) && l.starts_with("tmpfs ")),
        "the token is in memory on the node: {mounts}"
    );
    assert!(
        !read("quiet", "token").0,
        "automountServiceAccountToken: false"
    );

    // The token is system:serviceaccount:default:default: nothing until RBAC grants it.
    let flag = format!("--token={token}");
    let as_pod = |args: &[&str]| {
        let mut all = vec![flag.as_str()];
        all.extend_from_slice(args);
        c.lan.run(&all)
    };
    let (ok, _, err) = as_pod(&["get", "pods"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    c.lan.ok(&[
        "create",
        "rolebinding",
        "viewers",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    c.lan
        .until(10, "RBAC granting the pod's ServiceAccount", || {
            let (ok, out, _) = as_pod(&["get", "pods", "-o", "name"]);
            (ok && out.contains("pod/client")).then_some(())
        });
    let (ok, _, _) = as_pod(&["get", "secrets"]);
    assert!(!ok, "view reads no Secrets");
    // Bound to the pod: deleted with it.
    c.lan.ok(&["delete", "pod", "client", "--wait=false"]);
    c.lan.until(30, "the pod's token dying with it", || {
        let (ok, _, err) = as_pod(&["get", "pods"]);
        (!ok && err.contains("Unauthorized")).then_some(())
    });
}

/// hostNetwork and hostPort, where Pod Security admits them: a hostNetwork pod has the node's
/// network namespace and the node's address, and gives nothing back when it goes (where
/// baseline holds, it is refused); a hostPort leads the node's port to the pod.
#[test]
fn host_network_and_host_ports_where_admitted() {
    let c = cluster(11, 1);
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: hostnet, labels: {app: hostnet}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sleep", "3600"]
"#;
    let file = c.lan.dir.path().join("hostnet.yaml");
    std::fs::write(&file, pod.replace("IMAGE", &c.image)).unwrap();
    let (ok, _, err) = c.lan.run(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        !ok && err.contains("host namespaces (hostNetwork=true)"),
        "{err}"
    );
    c.lan.ok(&[
        "label",
        "namespace",
        "default",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    c.apply(pod);
    let pods = c.lan.ready_pods("app=hostnet", 1);
    assert_eq!(pods[0].1, c.lan.host_ip(1), "the node's address");
    let (ok, ns, err) = c.exec("hostnet", &["readlink", "/proc/self/ns/net"]);
    assert!(ok, "{err}");
    let host = sh(&format!("stat -L -c %i /run/netns/{}", c.lan.host_ns(1))).1;
    assert_eq!(
        ns.trim(),
        format!("net:[{}]", host.trim()),
        "the node's network namespace"
    );
    c.lan.ok(&["delete", "pod", "hostnet", "--wait=true"]);
    // The node still has its address and its route to the bridge.
    let (ok, addrs) = c.lan.on_host(1, "ip -4 -o addr show dev eth0");
    assert!(ok && addrs.contains(&c.lan.host_ip(1)), "{addrs}");

    // A hostPort: the node's address and that port lead to the pod's containerPort, from
    // another host (this test, on the bridge); gone with the pod.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hostport, labels: {app: hostport}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www && echo hostport-ok > /www/index.html && httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, hostPort: 18080}]
"#,
    );
    let pods = c.lan.ready_pods("app=hostport", 1);
    assert_ne!(pods[0].1, c.lan.host_ip(1), "a pod address of its own");
    let node = format!("{}:18080", c.lan.host_ip(1));
    let get = || {
        use std::io::{Read, Write};
        let addr: std::net::SocketAddr = node.parse().unwrap();
        let mut s =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let body = c.lan.until(20, "the host port answering", || {
        get().filter(|b| b.contains("hostport-ok"))
    });
    assert!(body.contains(" 200 OK"), "{body}");
    c.lan.ok(&["delete", "pod", "hostport", "--wait=true"]);
    c.lan.until(20, "the host port closing with its pod", || {
        get().is_none().then_some(())
    });
}

/// The Python `kubernetes` client inside a container, configured in-cluster (its mounted
/// token and CA, the `kubernetes` Service from its environment): refused while RBAC grants
/// its ServiceAccount nothing, lists the pods of its namespace once it does. The interpreter
/// and the package are the host's, mounted read-only (hostPath, so the namespace is
/// privileged); the image is busybox.
#[test]
fn the_python_client_in_a_container_uses_its_mounted_token() {
    let c = cluster(12, 1);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, kubernetes\n\
             print(sys.executable)\n\
             for p in [sys.base_prefix, sys.prefix] + sys.path: print(p)",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "run ./scripts/test.sh, which installs the kubernetes package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let python = lines.next().unwrap().to_string();
    // Where the interpreter, its libraries and the package live; a path under another is
    // mounted with it.
    let mut dirs: Vec<String> = ["/usr", "/lib", "/lib64"]
        .iter()
        .map(|d| d.to_string())
        .chain(lines.map(String::from))
        .filter(|d| d.starts_with('/') && std::path::Path::new(d).is_dir())
        .collect();
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| {
        !all.iter()
            .any(|o| o != d && d.starts_with(&format!("{o}/")))
    });
    let mut volumes = String::new();
    let mut mounts = String::new();
    for (i, d) in dirs.iter().enumerate() {
        volumes += &format!("  - {{name: h{i}, hostPath: {{path: \"{d}\"}}}}\n");
        mounts += &format!("    - {{name: h{i}, mountPath: \"{d}\", readOnly: true}}\n");
    }
    c.lan.ok(&["create", "namespace", "py"]);
    c.lan.ok(&[
        "label",
        "namespace",
        "py",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    let script = "from kubernetes import client, config\n\
                  config.load_incluster_config()\n\
                  try:\n    \
                      pods = client.CoreV1Api().list_namespaced_pod('py')\n    \
                      print('pods:', ' '.join(p.metadata.name for p in pods.items))\n\
                  except client.exceptions.ApiException as e:\n    \
                      print('refused:', e.status, e.reason)\n";
    let run = |name: &str| -> String {
        c.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: py}}\nspec:\n  \
             restartPolicy: Never\n  containers:\n  - name: c\n    image: IMAGE\n    \
             command: [{python:?}, \"-c\", {script:?}]\n    volumeMounts:\n{mounts}  volumes:\n{volumes}"
        ));
        c.lan.until(90, &format!("pod py/{name} to finish"), || {
            let (_, phase, _) = c.lan.run(&[
                "get",
                "pod",
                name,
                "-n",
                "py",
                "-o",
                "jsonpath={.status.phase}",
            ]);
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(())
        });
        let (_, logs, err) = c.lan.run(&["logs", name, "-n", "py"]);
        format!("{logs}{err}")
    };
    let denied = run("denied");
    assert!(denied.contains("refused: 403 Forbidden"), "{denied}");
    c.lan.ok(&[
        "create",
        "rolebinding",
        "viewers",
        "-n",
        "py",
        "--clusterrole=view",
        "--serviceaccount=py:default",
    ]);
    let allowed = run("allowed");
    assert!(
        allowed.contains("pods:") && allowed.contains("denied") && allowed.contains("allowed"),
        "{allowed}"
    );
}

/// A Knative Service of a container image: it answers through the node's function router by
/// Host and in the cluster at `{name}.{namespace}.svc.cluster.local`, scales to zero, and
/// the next request starts a container again.
#[test]
fn a_container_function_answers_by_host_and_in_cluster_and_comes_back_from_zero() {
    let c = cluster_with(13, 1, &["--scale-to-zero-grace-period", "1s"]);
    c.apply(
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: web}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/window: "6s"}
    spec:
      containers:
      - image: IMAGE
        command: ["sh", "-c", "mkdir -p /www && echo container function $K_REVISION on $PORT > /www/index.html && exec httpd -f -p $PORT -h /www"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {role: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sleep", "3600"]
"#,
    );
    let node = c.lan.host_ip(1);
    c.lan.until(120, "the container function to be Ready", || {
        let (_, out, _) = c.lan.run(&[
            "get",
            "ksvc",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out == "True").then_some(())
    });
    let curl = format!("curl -s -m 20 -H \"Host: web.default.example.com\" http://{node}/");
    let (_, out) = c.lan.on_host(1, &curl);
    assert_eq!(out.trim(), "container function web-00001 on 8080");

    // From a pod: the route's in-cluster name, through the cluster DNS and a Service whose
    // endpoints are the nodes' routers.
    c.lan.ready_pods("role=client", 1);
    c.lan.until(60, "the in-cluster address to answer", || {
        // (Debian's busybox wget crashes with its own -T timeout without a terminal: the
        // shell stops it instead.)
        let script = "wget -q -O- http://web.default.svc.cluster.local/ & pid=$!; (sleep 3; kill $pid 2>/dev/null) & wait $pid";
        let (_, out, _) = c.exec("client", &["sh", "-c", script]);
        out.contains("container function web-00001").then_some(())
    });

    // Zero, then back on the next request.
    c.lan
        .until(90, "the container function to scale to zero", || {
            let (_, out, _) = c.lan.run(&[
                "get",
                "pods",
                "-l",
                "serving.knative.dev/service=web",
                "-o",
                "name",
            ]);
            out.trim().is_empty().then_some(())
        });
    let started = std::time::Instant::now();
    let (_, out) = c.lan.on_host(1, &curl);
    let cold = started.elapsed();
    assert_eq!(
        out.trim(),
        "container function web-00001 on 8080",
        "the request that woke it is answered"
    );
    eprintln!("container function cold start: {cold:?}");

    // A Wasm function at zero answers from the node agent's process while its pod comes, but
    // its outgoing requests still leave from its pod, under the pod's NetworkPolicy: with its
    // egress denied, the cold request cannot reach another pod (from the node's own network
    // it could), and without the policy the same cold request does.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: target, labels: {role: target}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www && echo target answered > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fetcher}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/window: "6s"}
    spec:
      timeoutSeconds: 5
      containers:
      - image: fetch:v1
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: fetcher-no-egress}
spec:
  podSelector:
    matchLabels: {serving.knative.dev/service: fetcher}
  policyTypes: [Egress]
"#,
    );
    let target = c.lan.ready_pods("role=target", 1)[0].1.clone();
    c.lan.until(120, "the fetcher to be Ready", || {
        let (_, out, _) = c.lan.run(&[
            "get",
            "ksvc",
            "fetcher",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out == "True").then_some(())
    });
    let at_zero = || {
        c.lan.until(90, "the fetcher to scale to zero", || {
            let (_, out, _) = c.lan.run(&[
                "get",
                "pods",
                "-l",
                "serving.knative.dev/service=fetcher",
                "-o",
                "name",
            ]);
            out.trim().is_empty().then_some(())
        })
    };
    let in_process_starts = || {
        let stats = c.lan.ok(&["get", "--raw", "/drover/v1/function-stats"]);
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        stats["revisions"]["default/fetcher-00001"]["coldStarts"]["inProcess"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let fetch = format!(
        "curl -s -m 20 -H \"Host: fetcher.default.example.com\" \"http://{node}/?url=http://{target}:8080/\""
    );
    at_zero();
    let (_, out) = c.lan.on_host(1, &fetch);
    assert!(
        !out.contains("target answered"),
        "a function whose egress is denied reached another pod: {out}"
    );
    assert_eq!(
        in_process_starts(),
        1.0,
        "the cold request was answered in process"
    );
    c.lan.ok(&["delete", "networkpolicy", "fetcher-no-egress"]);
    at_zero();
    let (_, out) = c.lan.on_host(1, &fetch);
    assert!(
        out.contains("upstream 200") && out.contains("target answered"),
        "{out}"
    );
    assert_eq!(in_process_starts(), 2.0);
}
