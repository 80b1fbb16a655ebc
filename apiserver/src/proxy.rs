//! Requests from the API server to nodes: plain HTTP/1.1 with hyper's client and a bearer
//! token the node reviews. Container logs are read as ordinary responses; `kubectl exec` is an
//! upgrade (a WebSocket) that is passed to the node and then spliced byte for byte, without
//! the API server looking inside.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, Method};
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node may take to answer an upgrade (it reviews the token first).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 connection to a node, served by a task of its own (upgrades allowed).
async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<bytes::Bytes>>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

pub async fn get(
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let mut sender = connect(addr).await?;
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
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
    addr: SocketAddr,
    method: &Method,
    path: &str,
    token: &str,
    client_headers: &HeaderMap,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let mut sender = connect(addr).await?;
    let mut req = hyper::Request::builder()
        .method(method.clone())
        .uri(path)
        .header("host", addr.to_string())
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
