//! What the node's proxy does to the host, behind one small trait ([`Host`]) so that its
//! decisions ([`crate::proxy`]) are tested against a recording double without root:
//!
//! - Services' nftables transactions, over netlink ([`apply_ops`]);
//! - the NetworkPolicy table, as an nft script ([`apply_nft_script`]);
//! - routes to other nodes' pod ranges and the LoadBalancer pool addresses on `lo`, through
//!   iproute2 ([`crate::pods::PodNetwork`]).

use std::net::Ipv4Addr;
use std::sync::Mutex;

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::nft::Op;

/// The host effects of the proxy. Each call is whole: it either took effect or says why not.
#[async_trait]
pub trait Host: Send + Sync {
    /// Applies Services' ops as one nftables transaction.
    async fn apply_service_ops(&self, ops: &[Op]) -> anyhow::Result<()>;
    /// Replaces the NetworkPolicy table with this nft script.
    async fn apply_policy(&self, script: &str) -> anyhow::Result<()>;
    /// Makes Drover's routes to other nodes' pod ranges exactly these.
    async fn sync_routes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> anyhow::Result<()>;
    /// Makes the LoadBalancer pool addresses on `lo` exactly these.
    async fn sync_service_addresses(&self, ips: &[Ipv4Addr]) -> anyhow::Result<()>;
}

/// The real host: netlink, nft and iproute2 in the calling process's network namespace.
pub struct LinuxHost;

#[async_trait]
impl Host for LinuxHost {
    async fn apply_service_ops(&self, ops: &[Op]) -> anyhow::Result<()> {
        apply_ops(ops).await
    }
    async fn apply_policy(&self, script: &str) -> anyhow::Result<()> {
        apply_nft_script(script).await
    }
    async fn sync_routes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> anyhow::Result<()> {
        crate::pods::PodNetwork::sync_node_routes(routes).await
    }
    async fn sync_service_addresses(&self, ips: &[Ipv4Addr]) -> anyhow::Result<()> {
        crate::pods::PodNetwork::sync_service_addresses(ips).await
    }
}

/// One effect the proxy asked of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    ServiceOps(Vec<Op>),
    Policy(String),
    Routes(Vec<(Ipv4Net, Ipv4Addr)>),
    ServiceAddresses(Vec<Ipv4Addr>),
}

/// A host that records what it was asked, and fails the calls it is told to fail: the double
/// the proxy's tests (and anyone's) run against.
#[derive(Default)]
pub struct RecordingHost {
    effects: Mutex<Vec<Effect>>,
    /// While set, service ops fail (as a kernel that refuses the transaction).
    pub fail_service_ops: std::sync::atomic::AtomicBool,
}

impl RecordingHost {
    /// What was asked since the last call, in order.
    pub fn take(&self) -> Vec<Effect> {
        std::mem::take(&mut *self.effects.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, effect: Effect) {
        self.effects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(effect);
    }
}

#[async_trait]
impl Host for RecordingHost {
    async fn apply_service_ops(&self, ops: &[Op]) -> anyhow::Result<()> {
        self.record(Effect::ServiceOps(ops.to_vec()));
        if self
            .fail_service_ops
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            anyhow::bail!("refused (as told)");
        }
        Ok(())
    }
    async fn apply_policy(&self, script: &str) -> anyhow::Result<()> {
        self.record(Effect::Policy(script.to_string()));
        Ok(())
    }
    async fn sync_routes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> anyhow::Result<()> {
        self.record(Effect::Routes(routes.to_vec()));
        Ok(())
    }
    async fn sync_service_addresses(&self, ips: &[Ipv4Addr]) -> anyhow::Result<()> {
        self.record(Effect::ServiceAddresses(ips.to_vec()));
        Ok(())
    }
}

/// Applies ops as one nftables transaction, over netlink (no `nft` process; [`crate::netlink`]).
/// The socket is opened on the calling thread, so in its network namespace; the send, which
/// can take the kernel a few hundred ms for a full table of 10,000 Services, runs on a
/// blocking thread.
pub async fn apply_ops(ops: &[crate::nft::Op]) -> anyhow::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let batch = crate::netlink::Batch::encode(ops);
    let socket = crate::netlink::Socket::open().map_err(|e| {
        anyhow::anyhow!("cannot open a netlink socket to nftables (the node agent needs root): {e}")
    })?;
    let sent = tokio::task::spawn_blocking(move || socket.send(&batch)).await?;
    sent.map_err(|e| e.explain(ops))
}

/// Applies nft scripts (`nft -f -`): one process per script, each atomic. Used for the
/// NetworkPolicy table, and for [`crate::nft::render`]ed ops where the nft CLI is wanted.
pub async fn apply_nft_script(batch: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::io::AsyncWriteExt;
    if batch.is_empty() {
        return Ok(());
    }
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run nft (install the nftables package)")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    stdin.write_all(batch.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Removes Drover's tables (`drover node --cleanup`); nothing else is touched.
pub async fn cleanup_tables() -> anyhow::Result<()> {
    let mut tables = vec![
        crate::nft::TABLE.to_string(),
        crate::policy::TABLE.to_string(),
    ];
    tables.extend((0..crate::services::SHARDS).map(crate::services::shard_table));
    let script: String = tables
        .iter()
        .map(|t| format!("add table ip {t}\ndelete table ip {t}\n"))
        .collect();
    apply_nft_script(&script).await
}
