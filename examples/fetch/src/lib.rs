//! An HTTP function that is also a client: `GET /?url=http://HOST[:PORT]/PATH` fetches that
//! URL (wasi:http/outgoing-handler) and answers with the upstream status and body, or 502 and
//! the error. `GET /healthz` answers 200. On Drover the request leaves from the pod's own
//! address, and HOST may be a cluster name (`hw-svc`, `hw-svc.default.svc.cluster.local`).

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Fetch;

impl wasip2::exports::http::incoming_handler::Guest for Fetch {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        let (status, body) = match (request.method(), path) {
            (Method::Get, "/healthz") => (200, "ok\n".to_string()),
            (Method::Get, "/") => {
                let url = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("url="))
                    .unwrap_or("");
                match fetch(url) {
                    Ok((status, body)) => (200, format!("upstream {status}\n{body}")),
                    Err(e) => (502, format!("error: {e}\n")),
                }
            }
            _ => (404, "not found\n".to_string()),
        };
        respond(response_out, status, body.as_bytes());
    }
}

fn fetch(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|_| "scheme")?;
    request.set_authority(Some(authority)).map_err(|_| "authority")?;
    request.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let body = request.body().map_err(|_| "request body")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|_| "response body")?;
    let mut text = String::new();
    {
        let mut stream = incoming.stream().map_err(|_| "body stream")?;
        stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
    }
    Ok((status, text))
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ])
    .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let response_body = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let mut stream = response_body.write().expect("the stream is taken once");
        stream.write_all(body).expect("write the body");
        stream.flush().expect("flush the body");
    }
    OutgoingBody::finish(response_body, None).expect("finish the body");
}

wasip2::http::proxy::export!(Fetch);
