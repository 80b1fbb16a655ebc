//! Requests from the API server to nodes (container logs): plain HTTP/1.1 with hyper's client
//! and a bearer token the node reviews.

use std::net::SocketAddr;

use http_body_util::Empty;

pub async fn get(
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| "connection timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}
