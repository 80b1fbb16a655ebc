//! The seed's hello-world app as an HTTP function: `GET /` answers
//! "Hello world from <pod name>! Your app is up and running in a cluster!" and `GET /healthz`
//! answers 200 (the liveness probe). The pod's name comes from the HOSTNAME variable Drover
//! sets, as a container's hostname is its pod's name in Kubernetes.

use std::io::Write as _;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HelloWorld;

impl Guest for HelloWorld {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let path = path.split('?').next().unwrap_or("/");
        let (status, body) = match (request.method(), path) {
            (Method::Get, "/healthz") => (200, "ok\n".to_string()),
            (Method::Get, "/") => {
                let pod = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
                (
                    200,
                    format!("Hello world from {pod}! Your app is up and running in a cluster!\n"),
                )
            }
            _ => (404, "not found\n".to_string()),
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

wasip2::http::proxy::export!(HelloWorld);
