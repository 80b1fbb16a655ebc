//! Requests from the API server to nodes: HTTP/1.1 over TLS with hyper's client and a bearer
//! token the node reviews. The node must present a serving certificate of the cluster CA for
//! its node name (`pki::node_serving_credentials`): the address comes from the Node's status,
//! which the node itself writes, so it is only where to dial, never who answers. Container logs
//! are read as ordinary responses; `kubectl exec` is an upgrade (a WebSocket) that is passed to
//! the node and then spliced byte for byte, without the API server looking inside.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, Method};
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node may take to answer an upgrade (it reviews the token first).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// A node as the API server reaches it: where to dial, and the name its certificate must bear.
pub struct NodeTarget<'a> {
    /// TLS trusting the cluster CA (`ApiState::node_tls`); None before the server has it.
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
    pub addr: SocketAddr,
    pub name: &'a str,
}

/// One HTTP/1.1 connection over TLS to a node, served by a task of its own (upgrades allowed).
async fn connect(node: &NodeTarget<'_>) -> Result<SendRequest<Empty<bytes::Bytes>>, String> {
    let tls = node
        .tls
        .ok_or("this API server cannot check nodes' certificates yet")?;
    let name = rustls::pki_types::ServerName::try_from(node.name.to_string())
        .map_err(|_| format!("node name {:?} is not a DNS name", node.name))?;
    let addr = node.addr;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| format!("the TLS handshake timed out after {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| format!("{addr} did not prove to be node {} (TLS: {e})", node.name))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

pub async fn get(
    node: &NodeTarget<'_>,
    path: &str,
    token: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let mut sender = connect(node).await?;
    let req = hyper::Request::get(path)
        .header("host", node.addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// The headers an upgrade is negotiated with, passed on both ways: the client's offer to the
/// node, the node's answer to the client.
pub fn is_upgrade_header(name: &HeaderName) -> bool {
    name == header::UPGRADE
        || name == header::CONNECTION
        || name.as_str().starts_with("sec-websocket-")
        // SPDY's version offer, so that a node can say it does not speak it.
        || name.as_str() == "x-stream-protocol-version"
}

/// Asks a node for an upgrade: `method path` with the upgrade headers of `client_headers` and
/// the node token. A 101 response can then be upgraded (`hyper::upgrade::on`); any other is
/// the node's refusal.
pub async fn upgrade(
    node: &NodeTarget<'_>,
    method: &Method,
    path: &str,
    token: &str,
    client_headers: &HeaderMap,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let mut sender = connect(node).await?;
    let mut req = hyper::Request::builder()
        .method(method.clone())
        .uri(path)
        .header("host", node.addr.to_string())
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in client_headers {
        if is_upgrade_header(name) {
            req = req.header(name, value);
        }
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(UPGRADE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| format!("no answer within {UPGRADE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())
}

/// Copies bytes both ways between the client's upgraded connection (once the 101 has been
/// sent to it) and the node's, until both sides have closed.
pub async fn splice(client: hyper::upgrade::OnUpgrade, node: hyper::upgrade::Upgraded) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "the client's connection was not upgraded");
            return;
        }
    };
    let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
        tracing::debug!(error = %e, "an upgraded connection to a node ended with an error");
    }
}
