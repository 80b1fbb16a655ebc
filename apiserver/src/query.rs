//! The query string, read once: the same parsed value drives authorization, the request cap
//! and dispatch, so what is authorized is what is served (`?watch=%74rue` is a watch to all of
//! them).

use std::collections::HashMap;
use std::sync::Arc;

/// The request's query parameters, percent-decoded.
pub type Query = HashMap<String, String>;

/// The query as the authentication layer parsed it, carried in the request's extensions to the
/// layers and the handler after it.
#[derive(Clone, Debug, Default)]
pub struct Parsed(pub Arc<Query>);

/// The parsed query of `req` (parsed on the spot only for a request that did not come through
/// the authentication layer, which none does in the router).
pub fn of<B>(req: &axum::http::Request<B>) -> Arc<Query> {
    match req.extensions().get::<Parsed>() {
        Some(p) => p.0.clone(),
        None => Arc::new(parse_query(req.uri().query())),
    }
}

pub fn parse_query(query: Option<&str>) -> Query {
    serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default()
}

/// Whether a query flag is set, in every spelling Go's `strconv.ParseBool` takes for true
/// (kube-apiserver decodes its options with it; the Python client sends `True`).
pub fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "True" | "TRUE"))
}
