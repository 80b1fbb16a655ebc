//! One address for everything a member serves. A connection that opens with a TLS handshake
//! gets the Kubernetes API over HTTPS (HTTP/2 or HTTP/1.1); any other gets the store's routes
//! (peer Raft traffic and the store API), which are still plaintext.
//!
//! Sniffing the first byte keeps the design's "one address per member" while the peer protocol
//! has not moved to TLS yet; when it does, the plaintext branch goes away.

use std::sync::{Arc, RwLock};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The API's TLS configuration and routes, filled in once the member has its certificates (a
/// joining member gets them from the cluster, after it has joined); until then TLS connections
/// are closed.
pub type ApiSlot = Arc<RwLock<Option<(Arc<rustls::ServerConfig>, Router)>>>;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn serve(listener: TcpListener, api: ApiSlot, store: Router) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (api, store) = (api.clone(), store.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(tcp, api, store).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    tcp: TcpStream,
    api: ApiSlot,
    store: Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut first = [0u8; 1];
    // A client that connects and sends nothing is dropped after a while.
    let n =
        tokio::time::timeout(std::time::Duration::from_secs(30), tcp.peek(&mut first)).await??;
    if n == 0 {
        return Ok(());
    }
    let builder = auto::Builder::new(TokioExecutor::new());
    if first[0] == TLS_HANDSHAKE {
        let Some((tls, router)) = api.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(()); // no certificates yet
        };
        let tls = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            TlsAcceptor::from(tls).accept(tcp),
        )
        .await??;
        builder
            .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(router))
            .await
    } else {
        builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(store))
            .await
    }
}
