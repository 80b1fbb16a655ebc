//! The API address: TLS only, and only the Kubernetes API (the store and the peer protocol have
//! an address of their own, behind mutual TLS). A client that speaks plain HTTP here gets Go's
//! answer (400, "Client sent an HTTP request to an HTTPS server.") and nothing else.
//!
//! Bounds, so that a client cannot hold the server's resources for free: at most
//! [`MAX_CONNECTIONS`] connections (more wait in the kernel's backlog), the first byte within
//! 10 s, the TLS handshake within 10 s, each HTTP/1 request's headers within
//! [`HEADER_TIMEOUT`] (slow headers and idle connections alike), and HTTP/2 connections pinged and dropped when they stop answering.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The API's TLS configuration and routes, filled in once the member has its certificates (a
/// joining member gets them from the cluster, after it has joined); until then TLS connections
/// are closed.
pub type ApiSlot = Arc<RwLock<Option<(Arc<rustls::ServerConfig>, Router)>>>;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub const MAX_CONNECTIONS: usize = 4096;
/// Also how long an idle HTTP/1 connection is kept (hyper's header timer runs while it waits for
/// the next request): longer than clients keep idle connections in their pools (90 s in Go and
/// hyper), so a pooled connection is not closed under a request being sent on it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(120);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, api: ApiSlot) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let api = api.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = handle(tcp, api).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    mut tcp: TcpStream,
    api: ApiSlot,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await??;
    if n == 0 {
        return Ok(());
    }
    if first[0] != TLS_HANDSHAKE {
        if first[0].is_ascii_uppercase() {
            // Looks like an HTTP method: say so, as Go's servers do, and close.
            tcp.write_all(
                b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
            )
            .await?;
        }
        return Ok(());
    }
    let Some((tls, router)) = api.read().unwrap_or_else(|p| p.into_inner()).clone() else {
        return Ok(()); // no certificates yet
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(tls).accept(tcp)).await??;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
        .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(router))
        .await
}
