//! Gzip for large responses, as kube-apiserver's APIResponseCompression: a complete answer of
//! 128 KiB or more goes out gzipped when the client accepts gzip (client-go's transport always
//! does). Streams (watches, followed logs, upgrades) are never compressed: their size is not
//! known, and a compressor would hold their events back.
//!
//! Hand-written over flate2 rather than tower-http's compression layer: the rule is one size
//! test on a body that is already whole, and the layer's streaming encoder would be a new
//! dependency for it.

use std::io::Write;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// kube-apiserver's threshold.
const THRESHOLD: u64 = 128 * 1024;

/// Whether an Accept-Encoding value allows gzip (`gzip`, with no `q=0`).
fn accepts_gzip(accept: &str) -> bool {
    accept.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
        name.eq_ignore_ascii_case("gzip") && !refused
    })
}

/// The middleware.
pub async fn gzip_large(req: Request, next: Next) -> Response {
    // Blobs are compressed already, and their Content-Length is part of the protocol.
    let wanted = !crate::path::is_registry(req.uri().path())
        && req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(accepts_gzip);
    let response = next.run(req).await;
    let size = response.body().size_hint().exact();
    if !wanted
        || size.is_none_or(|s| s < THRESHOLD)
        || response.headers().contains_key(header::CONTENT_ENCODING)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    let gzipped = encoder.write_all(&bytes).and_then(|()| encoder.finish());
    match gzipped {
        Ok(zipped) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts
                .headers
                .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            Response::from_parts(parts, Body::from(zipped))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_is_accepted_as_http_says() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("br, identity"));
    }
}
