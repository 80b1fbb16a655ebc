//! An HTTP function that checks its own concurrency: each request takes a mark in the pod's
//! `/data` volume (an emptyDir; `mkdir` is atomic across the pod's instances), holds it for
//! `?hold=MS` milliseconds (default 2) and gives it back. It answers `ok`, or `violation`
//! when the mark was already taken — a second request in flight at once, which
//! `containerConcurrency: 1` must never let happen. `?crash` traps instead (a function that
//! crashes on every request).

use std::io::Write as _;
use std::time::Duration;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

const MARK: &str = "/data/busy";

struct Inflight;

impl Guest for Inflight {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path.contains("crash") {
            panic!("asked to crash");
        }
        let hold = path
            .split_once("hold=")
            .and_then(|(_, v)| v.split('&').next()?.parse::<u64>().ok())
            .unwrap_or(2);
        let (status, body) = match std::fs::create_dir(MARK) {
            Ok(()) => {
                std::thread::sleep(Duration::from_millis(hold));
                match std::fs::remove_dir(MARK) {
                    Ok(()) => (200, "ok\n".to_string()),
                    Err(e) => (500, format!("cannot give the mark back: {e}\n")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                (200, "violation\n".to_string())
            }
            Err(e) => (500, format!("cannot take the mark: {e} (is /data mounted?)\n")),
        };
        respond(response_out, status, body.as_bytes());
    }
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
    } // the stream must be dropped before the body is finished
    OutgoingBody::finish(response_body, None).expect("finish the body");
}

wasip2::http::proxy::export!(Inflight);
