//! One `drover up` (store, API, node agent) for end-to-end tests, driven with kubectl.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{bin, import_into};

/// One `drover up` with its own addresses, data dir and kubectl home.
pub struct Up {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub args: Vec<String>,
    pub kubeconfig: PathBuf,
}

impl Up {
    /// `n` picks distinct addresses for tests running side by side.
    pub fn start(n: u8) -> Up {
        Up::start_with(n, &[])
    }

    /// Like [`Up::start`], with more `drover up` flags.
    pub fn start_with(n: u8, extra: &[&str]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args: Vec<String> = [
            "up".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("127.0.{n}.1:6443"),
            "--node-address".into(),
            format!("127.0.{n}.1"),
            "--node-port".into(),
            "10250".into(),
            "--pod-ip-range".into(),
            format!("127.{}.0.0", 100 + n),
            "--crash-backoff".into(),
            "1s".into(),
            "--name".into(),
            format!("node-{n}"),
        ]
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
        let mut up = Up {
            child: None,
            kubeconfig: data.join("admin.kubeconfig"),
            dir,
            args,
        };
        up.spawn();
        up
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("up.log"))
            .unwrap();
        let child = Command::new(bin())
            .args(&self.args)
            .env("DROVER_LOG", "info,openraft=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("drover starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, _) = self.run(&["get", "nodes", "--no-headers"]);
            if ok && out.contains(" Ready") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node never became Ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a second node agent, "second" at 127.0.N.2, joined with a node token; returns
    /// its process, its token and its node dir.
    pub fn second_node(&self) -> (Child, String, PathBuf) {
        let data = self.dir.path().join("data");
        let token = Command::new(bin())
            .args(["token", "node", "second", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .output()
            .unwrap();
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
        assert!(token.starts_with("drover."), "{token}");
        let node_dir = self.dir.path().join("second");
        let log = std::fs::File::create(self.dir.path().join("second.log")).unwrap();
        let server = &self.args[4];
        let ip = server
            .trim_end_matches(":6443")
            .trim_end_matches(".1")
            .to_string()
            + ".2";
        let n: u8 = ip.split('.').nth(2).unwrap().parse().unwrap();
        let token_file = self.dir.path().join("second.token");
        std::fs::write(&token_file, &token).unwrap();
        let second = Command::new(bin())
            .args([
                "node",
                "--server",
                &format!("https://{server}"),
                "--token-file",
            ])
            .arg(&token_file)
            .arg("--ca-file")
            .arg(data.join("pki/ca.crt"))
            .args([
                "--name",
                "second",
                "--node-address",
                &ip,
                "--node-port",
                "10250",
            ])
            .args([
                "--pod-ip-range",
                &format!("127.{}.0.0", 200 + n as u16),
                "--node-dir",
            ])
            .arg(&node_dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        (second, token, node_dir)
    }

    /// Waits up to `secs` for `check` to give a value.
    pub fn until<T>(&self, secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen in {secs}s\n--- drover:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Imports an example image into the node of `drover up`.
    pub fn import(&self, file: &str, reference: &str) {
        import_into(&self.dir.path().join("data/node"), file, reference);
    }

    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        super::kubectl(&self.kubeconfig, self.dir.path(), args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(
            ok,
            "kubectl {args:?} failed:\n{out}\n{err}\n--- drover:\n{}",
            self.log()
        );
        out
    }

    pub fn apply(&self, name: &str, yaml: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    pub fn jsonpath(&self, pod: &str, path: &str) -> String {
        self.run(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
            .1
    }

    /// Waits until `check` holds of the pod's JSONPath value.
    pub fn wait_for(
        &self,
        pod: &str,
        path: &str,
        what: &str,
        secs: u64,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.jsonpath(pod, path);
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "pod {pod}: {path} never became {what} (last: {v:?})\n{}\n--- drover:\n{}",
                self.run(&["get", "pod", pod, "-o", "yaml"]).1,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill();
    }
}
