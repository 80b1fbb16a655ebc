//! The node's endpoint for the API server (logs, exec, usage) is served over TLS with a
//! serving certificate of the cluster CA for this node's name, which the node asks the API
//! server for with its own credential when it starts (as the kubelet gets its serving
//! certificate). The API server checks that name, so another host that takes this node's
//! published address cannot answer in its place, and nothing crosses the network in clear.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;

/// Asks the API server for this node's serving certificate, retrying while the API is not
/// there yet; returns the TLS settings to serve the endpoint with.
pub async fn serving_tls(
    client: &kube::Client,
    node: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let answer: serde_json::Value = loop {
        let req = http::Request::post(format!("/drover/v1/nodes/{node}/serving-certificate"))
            .header("content-type", "application/json")
            .body(b"{}".to_vec())
            .expect("a valid request");
        match client.request::<serde_json::Value>(req).await {
            Ok(v) => break v,
            Err(kube::Error::Api(e)) if e.code == 401 || e.code == 403 => {
                anyhow::bail!(
                    "the API server refused this node a serving certificate: {}",
                    e.message
                )
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "cannot get a serving certificate yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e).context("cannot get a serving certificate for the node's endpoint")
            }
        }
    };
    let text = |field: &str| {
        answer[field]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the serving certificate answer has no {field}"))
    };
    let (cert, key) = (text("certificate")?, text("key")?);
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .context("bad serving certificate")?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .context("bad serving key")?
        .context("no serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("bad serving certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// At most this many connections at once; the API server opens one per request.
const MAX_CONNECTIONS: usize = 512;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` over TLS on `listener` (upgrades allowed: exec), with bounded connections,
/// handshakes and request heads.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, tls: Arc<rustls::ServerConfig>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "refused a connection to the node's endpoint");
                    return;
                }
                Err(_) => return,
            };
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "a connection to the node's endpoint ended with an error");
            }
        });
    }
}
