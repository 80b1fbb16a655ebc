//! Outgoing HTTP from Wasm guests (`wasi:http/outgoing-handler`), made the way the pod would
//! make it: the node agent resolves the name as the pod's resolver would and opens the
//! connection from inside the pod's network namespace ([`Outbound`], supplied by the node),
//! so the request leaves from the pod's address, through the node's Service rules and under
//! its NetworkPolicy. Plain HTTP/1.1; `https` is refused for now (no TLS client here yet).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::BoxFuture;

/// How a pod's outgoing connections are opened (its network, its names).
pub trait Outbound: Send + Sync {
    /// A TCP connection to `host:port`, `host` a name as the guest wrote it or an address.
    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<tokio::net::TcpStream>>;
}

/// The wasi-http hook: requests through [`Outbound`], or refused when the pod has none.
pub struct OutboundHttp(pub Option<Arc<dyn Outbound>>);

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl wasmtime_wasi_http::WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn std::future::Future<Output = Sent> + Send> {
        let outbound = self.0.clone();
        Box::new(send(outbound, request, options))
    }
}

async fn send(
    outbound: Option<Arc<dyn Outbound>>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Sent {
    let Some(outbound) = outbound else {
        return Err(Error::HttpRequestDenied);
    };
    let uri = request.uri().clone();
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Err(Error::HttpRequestDenied);
    }
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(80);
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(Duration::from_secs(30));
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(Duration::from_secs(600));
    let stream = match tokio::time::timeout(connect_timeout, outbound.connect(host, port)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DnsError {
                rcode: Some("NXDOMAIN".into()),
                info_code: None,
            })
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Error::ConnectionRefused)
        }
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(Error::from)?;
    // The connection is driven by its own task; its end is the request's outcome.
    let driver = tokio::spawn(conn);
    // Origin form on the wire (the authority goes in the Host header).
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    if !request.headers().contains_key(http::header::HOST) {
        // host[:port], never the userinfo an authority may carry.
        let host_header = match authority.port() {
            Some(p) => format!("{}:{p}", authority.host()),
            None => authority.host().to_string(),
        };
        if let Ok(v) = http::HeaderValue::from_str(&host_header) {
            request.headers_mut().insert(http::header::HOST, v);
        }
    }
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let done: Box<dyn std::future::Future<Output = Result<(), Error>> + Send> =
        Box::new(async move {
            match driver.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::from(e)),
                Err(_) => Err(Error::ConnectionTerminated),
            }
        });
    Ok((
        response.map(|body| body.map_err(Error::from).boxed_unsync()),
        done,
    ))
}
