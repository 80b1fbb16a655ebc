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
    /// Signs continue tokens, so that a list can only be continued as it was begun (the same
    /// collection, the same selectors) and only from where this cluster left it. Every member
    /// derives the same key, as a client may continue on another member.
    pub continue_key: ring::hmac::Key,
    /// The cap on requests served at once.
    pub inflight: crate::inflight::Inflight,
    /// How nodes' endpoints are reached: TLS trusting only the cluster CA, set once the member
    /// has its certificates ([`ApiState::trust_nodes`]); until then nodes are not reached.
    pub node_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    /// The cluster's CA, admin token and join secret, read from the store once (they do not
    /// change): joins and serving certificates check and sign with them without a store read.
    secrets: std::sync::OnceLock<crate::pki::ClusterSecrets>,
    /// The cluster's Pod Security levels ([`ApiState::set_pod_security`]; baseline unless set).
    pod_security: std::sync::OnceLock<crate::podsecurity::Settings>,
    /// The OCI registry under `/v2/`, once opened ([`ApiState::serve_registry`]).
    pub registry: std::sync::OnceLock<Arc<crate::registry::blobs::Blobs>>,
}

impl ApiState {
    /// The API's state over a store member; starts the watch cache (inside a Tokio runtime).
    pub fn new(
        store: Arc<StoreNode>,
        admin_token: String,
        address: String,
        sealer: Arc<SecretBox>,
    ) -> Arc<ApiState> {
        ApiState::with_inflight(store, admin_token, address, sealer, Default::default())
    }

    /// The same with another cap on requests in flight (tests).
    pub fn with_inflight(
        store: Arc<StoreNode>,
        admin_token: String,
        address: String,
        sealer: Arc<SecretBox>,
        inflight: crate::inflight::Inflight,
    ) -> Arc<ApiState> {
        let opener = sealer.clone();
        let pods = Arc::new(auth::PodGraph::default());
        let cache = WatchCache::start(
            store.engine().clone(),
            &[auth::RBAC_PREFIX],
            Arc::new(move |kv: &mut KeyValue| opener.open_kv(kv)),
            vec![pods.clone()],
        );
        let continue_key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            ring::digest::digest(
                &ring::digest::SHA256,
                format!("drover continue tokens v1:{admin_token}").as_bytes(),
            )
            .as_ref(),
        );
        let auth = Auth::new(admin_token, cache.clone(), pods);
        tokio::spawn(crate::signing::follow(
            store.clone(),
            sealer.clone(),
            Arc::downgrade(&auth.signer),
        ));
        Arc::new(ApiState {
            store,
            address,
            continue_key,
            inflight,
            node_tls: Default::default(),
            secrets: Default::default(),
            pod_security: Default::default(),
            registry: Default::default(),
            auth,
            cache,
            sealer,
        })
    }

    /// Sets the cluster's Pod Security levels (once, before serving).
    pub fn set_pod_security(&self, settings: crate::podsecurity::Settings) {
        let _ = self.pod_security.set(settings);
    }

    /// Serves the registry with the blobs in `blobs` (once, before serving).
    pub fn serve_registry(&self, blobs: Arc<crate::registry::blobs::Blobs>) {
        let _ = self.registry.set(blobs);
    }

    pub fn pod_security(&self) -> &crate::podsecurity::Settings {
        self.pod_security.get_or_init(Default::default)
    }

    /// Reaches nodes over TLS, trusting the CA `ca_pem` and checking each node by its name.
    pub fn trust_nodes(&self, ca_pem: &str) -> Result<(), String> {
        let config = crate::pki::node_client_tls(ca_pem)?;
        let _ = self.node_tls.set(Arc::new(config));
        Ok(())
    }

    /// Signs with the stored key set from now on (a member restarted after a rotation must not
    /// sign with a retired key, even for the moment before it follows the store).
    pub async fn load_signing_keys(&self) -> Result<(), StoreError> {
        let stored = crate::signing::load(
            &self.store,
            &self.sealer,
            raft_store::Consistency::Linearizable,
        )
        .await?;
        if let Some((keys, _)) = stored {
            self.auth.signer.set(keys);
        }
        Ok(())
    }

    /// The cluster's secrets (see [`crate::cluster_secrets`]), read once.
    pub async fn cluster_secrets(&self) -> Result<crate::pki::ClusterSecrets, StoreError> {
        if let Some(s) = self.secrets.get() {
            return Ok(s.clone());
        }
        let s = crate::cluster_secrets(&self.store, &self.sealer, None).await?;
        let _ = self.secrets.set(s.clone());
        Ok(s)
    }

    /// A write to the store, with Secrets sealed.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<raft_store::TxnResponse, StoreError> {
        self.store.txn(self.sealer.seal_txn(txn), false).await
    }
}
