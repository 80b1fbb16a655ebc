//! A LAN on this machine for end-to-end tests of networking and containers. NEEDS ROOT: a
//! bridge stands for the LAN and one network namespace per node for a separate host on it;
//! `drover server` runs on the bridge and a `drover node` in each host namespace, driven with
//! the real kubectl.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{bin, import_into};

pub fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("sh runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "{cmd}: {out}");
    out
}

/// A server on a bridge and `hosts` node agents, each in a namespace of its own.
pub struct Lan {
    /// Short prefix of every interface and namespace of this test (interface names are
    /// limited to 15 bytes).
    pub tag: String,
    pub subnet: String,
    pub dir: tempfile::TempDir,
    pub server: Option<Child>,
    pub nodes: Vec<Option<Child>>,
    pub kubeconfig: PathBuf,
    /// More `drover node` flags, for every node.
    pub node_flags: Vec<String>,
}

impl Lan {
    pub fn host_ns(&self, k: usize) -> String {
        format!("{}h{k}", self.tag)
    }
    pub fn host_ip(&self, k: usize) -> String {
        format!("{}.{}", self.subnet, 10 + k)
    }
    pub fn node_dir(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("h{k}"))
    }

    /// `n` keeps tests that run side by side apart (172.30.n.0/24).
    pub fn start(n: u8, hosts: usize) -> Lan {
        Lan::start_with(n, hosts, &[])
    }

    /// Like [`Lan::start`], with more `drover server` flags.
    pub fn start_with(n: u8, hosts: usize, server_flags: &[&str]) -> Lan {
        Lan::start_full(n, hosts, server_flags, &[])
    }

    /// Like [`Lan::start_with`], with more `drover node` flags too.
    pub fn start_full(n: u8, hosts: usize, server_flags: &[&str], node_flags: &[&str]) -> Lan {
        let tag = format!("dn{n}");
        let subnet = format!("172.30.{n}");
        // Leftovers of an earlier run that was killed. The host's end of a veth is deleted
        // by name too: a namespace whose name is gone lives on while its sockets close (TCP
        // connections still sending), and keeps its veth pair until then.
        for k in 1..=hosts {
            let _ = sh(&format!("ip netns del {tag}h{k}; ip link del {tag}h{k}"));
        }
        let _ = sh(&format!("ip link del {tag}br"));
        must(&format!(
            "ip link add {tag}br type bridge && ip addr add {subnet}.1/24 dev {tag}br && ip link set {tag}br up"
        ));
        for k in 1..=hosts {
            let ns = format!("{tag}h{k}");
            must(&format!(
                "ip netns add {ns} && ip link add {ns} type veth peer name eth0 netns {ns} && \
                 ip link set {ns} master {tag}br up && \
                 ip -n {ns} addr add {subnet}.{}/24 dev eth0 && ip -n {ns} link set eth0 up && \
                 ip -n {ns} link set lo up && ip -n {ns} route add default via {subnet}.1",
                10 + k
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let server = Command::new(bin())
            .args(["server", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("{subnet}.1:6443")])
            .args(server_flags)
            .env("DROVER_LOG", "info,openraft=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lan = Lan {
            tag,
            subnet,
            kubeconfig: data.join("admin.kubeconfig"),
            dir,
            server: Some(server),
            nodes: Vec::new(),
            node_flags: node_flags.iter().map(|f| f.to_string()).collect(),
        };
        lan.until(60, "the API server", || {
            lan.kubeconfig.exists().then_some(())
        });
        lan.until(30, "the API", || {
            lan.run(&["get", "ns", "default"]).0.then_some(())
        });
        for k in 1..=hosts {
            for (file, image) in [
                ("hello_world.wasm", "hello-world:v1"),
                ("hello_world.wasm", "hello-world:v2"),
                ("fetch.wasm", "fetch:v1"),
                ("batch.wasm", "batch:v1"),
            ] {
                import_into(&lan.node_dir(k), file, image);
            }
            let child = lan.spawn_node(k);
            lan.nodes.push(Some(child));
        }
        lan.until(60, "every node Ready with a pod range", || {
            let out = lan.ok(&["get", "nodes", "-o", "jsonpath={range .items[*]}{.spec.podCIDR} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"]);
            (out.lines().filter(|l| l.starts_with("10.42.") && l.ends_with("True")).count() == hosts).then_some(())
        });
        lan
    }

    pub fn spawn_node(&self, k: usize) -> Child {
        let name = format!("h{k}");
        let token = Command::new(bin())
            .args(["token", "node", &name, "--kubeconfig"])
            .arg(&self.kubeconfig)
            .output()
            .unwrap();
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        // nsenter changes the network namespace only: pods' namespaces the agent makes under
        // /run/netns stay visible to this test.
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_ns(k)))
            .arg(bin())
            .args([
                "node",
                "--server",
                &format!("https://{}.1:6443", self.subnet),
                "--token",
                &token,
                "--ca-file",
            ])
            .arg(self.dir.path().join("server/pki/ca.crt"))
            .args([
                "--name",
                &name,
                "--node-address",
                &self.host_ip(k),
                "--crash-backoff",
                "1s",
                "--node-dir",
            ])
            .arg(self.node_dir(k))
            .args(&self.node_flags)
            .env("DROVER_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Runs `cmd` inside host `k`'s network namespace.
    pub fn on_host(&self, k: usize, cmd: &str) -> (bool, String) {
        sh(&format!(
            "nsenter --net=/run/netns/{} sh -c '{cmd}'",
            self.host_ns(k)
        ))
    }

    /// Runs `cmd` inside the network namespace of pod `pod` (as the pod would).
    pub fn in_pod(&self, pod: &str, cmd: &str) -> (bool, String) {
        let uid = self.ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);
        let short: String = uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        sh(&format!(
            "nsenter --net=/run/netns/drover-{short} sh -c '{cmd}'"
        ))
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for f in ["server.log", "h1.log", "h2.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            all += &format!(
                "--- {f}\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        all
    }

    pub fn until<T>(&self, secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen in {secs}s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        super::kubectl(&self.kubeconfig, self.dir.path(), args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(
            ok,
            "kubectl {args:?} failed:\n{out}\n{err}\n{}",
            self.logs()
        );
        out
    }

    /// name → (pod IP, node) of the pods with label `selector`, once `n` of them are Ready.
    pub fn ready_pods(&self, selector: &str, n: usize) -> Vec<(String, String, String)> {
        self.until(60, &format!("{n} ready pods {selector}"), || {
            let out = self.ok(&["get", "pods", "-l", selector, "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}"]);
            let pods: Vec<(String, String, String)> = out
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 4 && f[3] == "True").then(|| (f[0].into(), f[1].into(), f[2].into()))
                })
                .collect();
            (pods.len() == n).then_some(pods)
        })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(mut c) = self.nodes[i].take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            // What the node left on its host: pod namespaces, its table, its routes.
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.host_ns(i + 1)))
                .arg(bin())
                .args(["node", "--cleanup", "--node-dir"])
                .arg(self.node_dir(i + 1))
                .output();
            let ns = self.host_ns(i + 1);
            let _ = sh(&format!("ip netns del {ns}; ip link del {ns}"));
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&format!("ip link del {}br", self.tag));
    }
}
