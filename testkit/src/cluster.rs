//! Real `drover server` processes on loopback, for end-to-end and fault tests.
//!
//! Each member gets its own loopback address (127.0.0.X, all of 127/8 is local) with a free
//! port for the API and one for its peers; members send their peer traffic from that address
//! too, so one member can be cut off from everybody with two nftables rules on its address
//! (needs root; see [`Partition`]). Members join as an operator joins them: with the token
//! `drover token server` prints. The store is reached with a member's certificate.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raft_store::network::Transport;
use raft_store::{PeerTls, RemoteMember, Status, StoreClient};

pub struct Member {
    /// The API address (HTTPS).
    pub addr: SocketAddr,
    /// The peer address: the store, behind mutual TLS.
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    join: Option<String>,
    /// Flags of its own (how it forms a cluster with the others).
    own_flags: Vec<String>,
    /// Environment of its own (set with [`Cluster::restart_with_env`]).
    own_env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Member {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// How members started at the same moment find each other.
#[derive(Clone, Copy, Debug)]
pub enum Together {
    /// Each with the same `--initial-cluster` list and shared secret.
    InitialCluster,
    /// The first with the shared secret alone, the others `--join` it with the secret.
    JoinTheFirst,
}

/// A cluster of member processes under one temporary directory.
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    /// Extra flags for every member (timers for tests).
    pub flags: Vec<String>,
    next_ip: u8,
}

/// A free port on `ip` (bound and released; the small race is acceptable in tests).
fn free_addr(ip: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
    Ok(l.local_addr()?)
}

impl Cluster {
    /// An empty cluster; `first_ip` picks the 127.0.0.X block its members use, so tests
    /// running in parallel do not share addresses.
    pub fn new(bin: &Path, first_ip: u8) -> anyhow::Result<Cluster> {
        Ok(Cluster {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir()?,
            members: Vec::new(),
            flags: vec![
                "--heartbeat-ms".into(),
                "100".into(),
                "--election-timeout-ms".into(),
                "500-900".into(),
            ],
            next_ip: first_ip,
        })
    }

    /// Starts a cluster of `n` members: the first bootstraps, the rest join it one by one.
    pub async fn start(bin: &Path, first_ip: u8, n: usize) -> anyhow::Result<Cluster> {
        let mut c = Cluster::new(bin, first_ip)?;
        c.add_member().await?;
        for _ in 1..n {
            c.add_member().await?;
        }
        Ok(c)
    }

    /// Starts a new member (joining the first running member, if any) and waits until it is in.
    pub async fn add_member(&mut self) -> anyhow::Result<usize> {
        let ip = Ipv4Addr::new(127, 0, 0, self.next_ip);
        self.next_ip += 1;
        let i = self.members.len();
        let through = self.members.iter().find(|m| m.is_running());
        let join = through.map(|m| m.addr.to_string());
        let data_dir = self.dir.path().join(format!("member-{i}"));
        // A joining member gets the token from a member, as an operator would.
        if let Some(member) = through {
            // The member may still be opening its API (just restarted): ask for a while.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let out = Command::new(&self.bin)
                    .args(["token", "server", "--kubeconfig"])
                    .arg(member.data_dir.join("admin.kubeconfig"))
                    .output()
                    .context("run drover token server")?;
                if out.status.success() {
                    std::fs::write(self.token_file(), &out.stdout)?;
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "drover token server failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        self.members.push(Member {
            addr: free_addr(ip)?,
            peer: free_addr(ip)?,
            data_dir,
            log: self.dir.path().join(format!("member-{i}.log")),
            join,
            own_flags: Vec::new(),
            own_env: Vec::new(),
            child: None,
        });
        self.spawn(i)?;
        self.wait_serving(i, Duration::from_secs(60)).await?;
        Ok(i)
    }

    /// Starts `n` members at the same moment, as systemd on `n` machines would, and waits
    /// until each is a voter: formation must not depend on the order they come up in.
    pub async fn start_together(
        bin: &Path,
        first_ip: u8,
        n: usize,
        how: Together,
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster::new(bin, first_ip)?;
        let out = Command::new(bin)
            .args(["token", "generate"])
            .output()
            .context("run drover token generate")?;
        anyhow::ensure!(out.status.success(), "drover token generate failed");
        std::fs::write(c.token_file(), &out.stdout)?;
        let mut addrs = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(127, 0, 0, c.next_ip);
            c.next_ip += 1;
            let (addr, peer) = (free_addr(ip)?, free_addr(ip)?);
            addrs.push(addr);
            c.members.push(Member {
                addr,
                peer,
                data_dir: c.dir.path().join(format!("member-{i}")),
                log: c.dir.path().join(format!("member-{i}.log")),
                join: None,
                own_flags: Vec::new(),
                own_env: Vec::new(),
                child: None,
            });
        }
        let list = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let token_file = c.token_file().display().to_string();
        for (i, m) in c.members.iter_mut().enumerate() {
            m.own_flags = match how {
                Together::InitialCluster => {
                    vec![
                        "--initial-cluster".into(),
                        list.clone(),
                        "--token-file".into(),
                        token_file.clone(),
                    ]
                }
                Together::JoinTheFirst if i == 0 => vec!["--token-file".into(), token_file.clone()],
                Together::JoinTheFirst => vec![
                    "--join".into(),
                    addrs[0].to_string(),
                    "--token-file".into(),
                    token_file.clone(),
                ],
            };
        }
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_serving(i, Duration::from_secs(60)).await?;
        }
        Ok(c)
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("join.token")
    }

    /// The TLS settings of a member certificate (any member's: they share the CA and cluster),
    /// once one exists.
    pub fn tls(&self) -> anyhow::Result<PeerTls> {
        self.members
            .iter()
            .find_map(|m| raft_store::node::member_tls(&m.data_dir).ok())
            .context("no member has its certificate yet")
    }

    fn remote(&self, i: usize) -> anyhow::Result<RemoteMember> {
        Ok(RemoteMember::direct(
            Transport::new(None, Some(&self.tls()?)),
            &self.members[i].peer.to_string(),
        ))
    }

    /// A store client of the members at `addrs` (peer addresses), with a member certificate.
    pub fn client_of(&self, addrs: &[String]) -> StoreClient {
        StoreClient::with_tls(addrs, &self.tls().expect("a member certificate"))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let token_file = self.token_file();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen")
            .arg(m.addr.to_string())
            .arg("--peer-listen")
            .arg(m.peer.to_string())
            .args(&self.flags)
            .args(&m.own_flags)
            .envs(m.own_env.iter().map(|(k, v)| (k, v)))
            // DROVER_TEST_LOG overrides what members log (when a fault test is studied).
            .env(
                "DROVER_LOG",
                std::env::var("DROVER_TEST_LOG").unwrap_or_else(|_| "info,openraft=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(j) = &m.join {
            cmd.arg("--join")
                .arg(j)
                .arg("--token-file")
                .arg(&token_file);
        }
        m.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", self.bin.display()))?,
        );
        Ok(())
    }

    /// Waits until member `i` answers and is a voter of a cluster with a leader.
    pub async fn wait_serving(&mut self, i: usize, timeout: Duration) -> anyhow::Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Some(code) = child.try_wait()? {
                    self.members[i].child = None;
                    bail!("member {i} exited with {code}:\n{}", self.log_tail(i));
                }
            }
            // Serving means the store has this member as a voter and its API is open (the
            // kubeconfig is written once it is).
            let api_open = self.members[i].data_dir.join("admin.kubeconfig").exists();
            if let (Ok(remote), true) = (self.remote(i), api_open) {
                if let Ok(s) = remote.status().await {
                    if s.leader.is_some() && s.voters.contains_key(&s.node_id) {
                        return Ok(s);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "member {i} did not come up within {timeout:?}:\n{}",
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self, i: usize) -> anyhow::Result<Status> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_serving(i, Duration::from_secs(60)).await
    }

    /// Restarts member `i` with extra environment variables (kept for its later restarts),
    /// e.g. a preloaded library that fakes its wall clock.
    pub async fn restart_with_env(
        &mut self,
        i: usize,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Status> {
        self.members[i].own_env = env;
        self.restart(i).await
    }

    /// SIGKILL of every member at once (a power cut), then all started again together: none
    /// can serve until a quorum is back, so they are waited for together.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        for i in 0..self.members.len() {
            self.spawn(i)?;
        }
        for i in 0..self.members.len() {
            self.wait_serving(i, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Starts a member that was killed, without waiting for it (see [`Cluster::wait_serving`]).
    pub fn start_again(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// The peer (store) addresses of the running members.
    pub fn addrs(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.peer.to_string())
            .collect()
    }

    pub fn client(&self) -> StoreClient {
        self.client_of(&self.addrs())
    }

    pub async fn status(&self, i: usize) -> anyhow::Result<Status> {
        Ok(self.remote(i)?.status().await?)
    }

    /// The index of the member that leads, once running members agree on one.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() {
                    continue;
                }
                if let Ok(s) = self.status(i).await {
                    if s.leader == Some(s.node_id) {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Every member's log tail, for a failing test's report.
    pub fn all_logs(&self) -> String {
        (0..self.members.len())
            .map(|i| format!("--- member {i} ---\n{}\n", self.log_tail(i)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // DROVER_KEEP_CLUSTER=1 keeps the data dirs and logs for a post-mortem.
        if std::env::var_os("DROVER_KEEP_CLUSTER").is_some() {
            let kept =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("a temp dir")).keep();
            eprintln!("cluster kept in {}", kept.display());
        }
    }
}

/// Cuts one loopback address off from all traffic with nftables, until dropped. Needs root
/// and the `nft` command (the test script installs the nftables package).
pub struct Partition {
    table: String,
}

impl Partition {
    pub fn isolate(ip: std::net::IpAddr) -> anyhow::Result<Partition> {
        let table = format!(
            "drover_test_{}_{}",
            std::process::id(),
            ip.to_string().replace('.', "_")
        );
        let script = format!(
            "table inet {table} {{\n\
               chain input {{ type filter hook input priority -10; policy accept;\n\
                 ip saddr {ip} drop\n\
                 ip daddr {ip} drop\n\
               }}\n\
             }}\n"
        );
        nft(&["-f", "-"], Some(&script))
            .context("cannot install the nftables partition (root and nft are needed)")?;
        Ok(Partition { table })
    }

    /// Cuts `ip` off from `others` only (both ways): clients elsewhere, the test's among
    /// them, still reach it, as a member that lost its network to its peers but not to its
    /// own clients.
    pub fn between(ip: std::net::IpAddr, others: &[std::net::IpAddr]) -> anyhow::Result<Partition> {
        let table = format!(
            "drover_test_{}_{}_peers",
            std::process::id(),
            ip.to_string().replace('.', "_")
        );
        let set = others
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let script = format!(
            "table inet {table} {{\n\
               chain input {{ type filter hook input priority -10; policy accept;\n\
                 ip saddr {ip} ip daddr {{ {set} }} drop\n\
                 ip saddr {{ {set} }} ip daddr {ip} drop\n\
               }}\n\
             }}\n"
        );
        nft(&["-f", "-"], Some(&script))
            .context("cannot install the nftables partition (root and nft are needed)")?;
        Ok(Partition { table })
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table], None);
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft")?;
    if let Some(s) = stdin {
        child.stdin.take().expect("piped").write_all(s.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
