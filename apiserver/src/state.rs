//! The state every request shares: the store member, the watch cache, authentication and the
//! sealer of Secrets. Kept apart from the request path so that what needs only the state (the
//! metrics) does not depend on request handling.

use std::sync::Arc;

use raft_store::{KeyValue, StoreError, StoreNode, Txn};

use crate::auth::{self, Auth};
use crate::cache::WatchCache;
use crate::encryption::SecretBox;

/// What the API server's handlers share.
pub struct ApiState {
    pub store: Arc<StoreNode>,
    /// host:port clients use to reach this server.
    pub address: String,
    pub cache: Arc<WatchCache>,
    pub auth: Auth,
    /// Seals Secrets on their way into the store and opens them on the way out.
    pub sealer: Arc<SecretBox>,
}

impl ApiState {
    /// The API's state over a store member; starts the watch cache (inside a Tokio runtime).
    pub fn new(
        store: Arc<StoreNode>,
        admin_token: String,
        address: String,
        sealer: Arc<SecretBox>,
    ) -> Arc<ApiState> {
        let opener = sealer.clone();
        let cache = WatchCache::start(
            store.engine().clone(),
            &[auth::RBAC_PREFIX],
            Arc::new(move |kv: &mut KeyValue| opener.open_kv(kv)),
        );
        Arc::new(ApiState {
            store,
            address,
            auth: Auth::new(admin_token, cache.clone()),
            cache,
            sealer,
        })
    }

    /// A write to the store, with Secrets sealed.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<raft_store::TxnResponse, StoreError> {
        self.store.txn(self.sealer.seal_txn(txn), false).await
    }
}
