//! Image garbage collection, as the kubelet's: every few minutes the node sweeps content no
//! image needs, and when the disk holding the image store is fuller than the high threshold
//! (85%), it removes the least recently used images no pod on this node uses until the disk
//! is back under the low threshold (80%).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use runtime::images::ImageStore;

pub const HIGH_PERCENT: u64 = 85;
pub const LOW_PERCENT: u64 = 80;
const EVERY: Duration = Duration::from_secs(300);

/// How large the store may stay (its high and low water marks in bytes) given the disk's
/// size, its free space and the store's own usage: None while the disk is under the high
/// threshold (then only unreferenced content is swept).
pub fn store_limit(disk_total: u64, disk_free: u64, store_bytes: u64) -> Option<u64> {
    let used = disk_total.saturating_sub(disk_free);
    if disk_total == 0 || used * 100 <= disk_total * HIGH_PERCENT {
        return None;
    }
    let excess = used - disk_total * LOW_PERCENT / 100;
    Some(store_bytes.saturating_sub(excess))
}

/// Runs the collection every few minutes, for as long as the agent runs.
pub async fn run(images: Arc<ImageStore>, client: kube::Client, node: String) {
    let pods: Api<Pod> = Api::all(client);
    let mut tick = tokio::time::interval(EVERY);
    // The first tick is at once: let the node take its pods back before anything is judged unused.
    tick.tick().await;
    loop {
        tick.tick().await;
        let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let list = match pods.list(&params).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("image gc: cannot list this node's pods: {e}");
                continue;
            }
        };
        // Images of every pod bound here, running or not (a pod about to restart keeps its
        // image): what their references name now, and the digests their containers run, which
        // differ once a tag has moved to a newer image.
        let mut in_use: HashSet<String> = list
            .items
            .iter()
            .flat_map(|p| {
                p.spec.iter().flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
            })
            .filter_map(|c| c.image.as_deref())
            .filter_map(|r| images.resolve(r))
            .map(|img| img.digest)
            .collect();
        in_use.extend(list.items.iter().flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .chain(s.init_container_statuses.iter())
                        .flatten()
                })
                .map(|c| c.image_id.clone())
                .filter(|d| !d.is_empty())
        }));
        let store = images.clone();
        let removed = tokio::task::spawn_blocking(move || {
            // As df counts: used and available to us, without the blocks reserved for root.
            let limit = rustix::fs::statvfs(store.dir()).ok().and_then(|s| {
                let used = (s.f_blocks - s.f_bfree) * s.f_frsize;
                let free = s.f_bavail * s.f_frsize;
                store_limit(used + free, free, store.disk_usage())
            });
            let (high, low) = limit.map_or((u64::MAX, u64::MAX), |l| (l, l));
            store.gc(&in_use, high, low)
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            tracing::info!("image gc: removed {removed} unused images");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_shrinks_only_past_the_high_threshold_and_down_to_the_low_one() {
        const GB: u64 = 1 << 30;
        // 84% used: nothing to free.
        assert_eq!(store_limit(100 * GB, 16 * GB, 30 * GB), None);
        // 90% used: 10 GB over the low threshold, so the store may keep 20 of its 30 GB.
        assert_eq!(store_limit(100 * GB, 10 * GB, 30 * GB), Some(20 * GB));
        // More to free than the store holds: everything not in use goes.
        assert_eq!(store_limit(100 * GB, GB, 5 * GB), Some(0));
        assert_eq!(store_limit(0, 0, 5), None);
    }
}
