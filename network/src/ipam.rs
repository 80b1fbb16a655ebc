//! Address management: which node has which pod range, and which pod has which address.
//!
//! The control plane cuts the cluster CIDR into one range per node (`api::cidr`, used by the
//! node IPAM controller); each node hands out its pods' addresses from its range
//! ([`PodAddresses`]), keeping one file per address so that after a restart of the agent no
//! address is given to a second pod. Like the host-local CNI plugin, allocation goes round from
//! the last address handed out, so a released address is the last to be reused: a client that
//! still holds it reaches nobody rather than a stranger.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use ipnet::Ipv4Net;

/// The pod addresses a node hands out from its range, recorded in `dir` as one file per address
/// (named by the address, holding the pod's uid).
pub struct PodAddresses {
    range: Ipv4Net,
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// address → pod uid
    used: std::collections::BTreeMap<Ipv4Addr, String>,
    last: Option<Ipv4Addr>,
}

impl PodAddresses {
    /// Opens the record in `dir`, keeping the addresses of `range` already given out.
    /// Addresses outside `range` (the node was given another range) are forgotten.
    pub fn open(dir: &Path, range: Ipv4Net) -> anyhow::Result<PodAddresses> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut used = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name == "last" {
                continue;
            }
            match name.parse::<Ipv4Addr>() {
                Ok(ip) if range.contains(&ip) => {
                    let uid = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    used.insert(ip, uid.trim().to_string());
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let last = std::fs::read_to_string(dir.join("last"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|ip| range.contains(ip));
        Ok(PodAddresses {
            range,
            dir: dir.to_path_buf(),
            state: Mutex::new(State { used, last }),
        })
    }

    /// The pods that hold an address in the record at `dir`, without opening it.
    pub fn recorded_pods(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .map(|uid| uid.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    /// The address of pod `uid`: the one it already has, else the next free one after the last
    /// handed out. The network and broadcast addresses are never used.
    pub fn assign(&self, uid: &str) -> anyhow::Result<Ipv4Addr> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ip, _)) = state.used.iter().find(|(_, u)| u.as_str() == uid) {
            return Ok(*ip);
        }
        let first = u32::from(self.range.network()) + 1;
        let end = u32::from(self.range.broadcast()); // exclusive
        anyhow::ensure!(first < end, "pod range {} has no addresses", self.range);
        let start = state
            .last
            .map(|l| u32::from(l) + 1)
            .filter(|n| (first..end).contains(n))
            .unwrap_or(first);
        let count = end - first;
        let ip = (0..count)
            .map(|i| Ipv4Addr::from(first + (start - first + i) % count))
            .find(|ip| !state.used.contains_key(ip))
            .with_context(|| format!("no pod address left in {}", self.range))?;
        std::fs::write(self.dir.join(ip.to_string()), uid)
            .with_context(|| format!("cannot record pod address {ip}"))?;
        std::fs::write(self.dir.join("last"), ip.to_string())
            .with_context(|| "cannot record the last pod address".to_string())?;
        state.used.insert(ip, uid.to_string());
        state.last = Some(ip);
        Ok(ip)
    }

    /// Gives back the address of pod `uid`, if it has one.
    pub fn release(&self, uid: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ips: Vec<Ipv4Addr> = state
            .used
            .iter()
            .filter(|(_, u)| u.as_str() == uid)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in ips {
            let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
            state.used.remove(&ip);
        }
    }

    /// Pods holding an address, for releasing those of pods that are gone.
    pub fn holders(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.used.values().cloned().collect()
    }

    pub fn address_of(&self, uid: &str) -> Option<Ipv4Addr> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .used
            .iter()
            .find(|(_, u)| u.as_str() == uid)
            .map(|(ip, _)| *ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_are_unique_kept_across_restarts_and_reused_last() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.7.0/29".parse().unwrap(); // .1 to .6
        let a = PodAddresses::open(dir.path(), range).unwrap();
        assert_eq!(a.assign("pod-a").unwrap(), Ipv4Addr::new(10, 42, 7, 1));
        assert_eq!(a.assign("pod-b").unwrap(), Ipv4Addr::new(10, 42, 7, 2));
        assert_eq!(a.assign("pod-a").unwrap(), Ipv4Addr::new(10, 42, 7, 1));
        a.release("pod-a");
        // The released address is not the next one handed out.
        assert_eq!(a.assign("pod-c").unwrap(), Ipv4Addr::new(10, 42, 7, 3));
        drop(a);
        let b = PodAddresses::open(dir.path(), range).unwrap();
        assert_eq!(b.address_of("pod-b"), Some(Ipv4Addr::new(10, 42, 7, 2)));
        assert_eq!(b.assign("pod-d").unwrap(), Ipv4Addr::new(10, 42, 7, 4));
        assert_eq!(b.assign("pod-e").unwrap(), Ipv4Addr::new(10, 42, 7, 5));
        assert_eq!(b.assign("pod-f").unwrap(), Ipv4Addr::new(10, 42, 7, 6));
        // Round again: .1 was freed.
        assert_eq!(b.assign("pod-g").unwrap(), Ipv4Addr::new(10, 42, 7, 1));
        assert!(b.assign("pod-h").is_err(), "the range is full");
        let mut holders = b.holders();
        holders.sort();
        assert_eq!(
            holders,
            ["pod-b", "pod-c", "pod-d", "pod-e", "pod-f", "pod-g"]
        );
        // Another range: the old records are dropped.
        drop(b);
        let c = PodAddresses::open(dir.path(), "10.42.8.0/24".parse().unwrap()).unwrap();
        assert!(c.holders().is_empty());
    }
}
