//! Serving certificates for nodes' endpoints (logs, exec, usage), as the kubelet gets its
//! serving certificate: a node asks with its own credential and receives a certificate of the
//! cluster CA for its node name (and only its own); the API server then reaches it over TLS and
//! checks that name (`proxy`).

use std::sync::Arc;

use api::rbac::User;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::respond::failure;
use crate::state::ApiState;

/// `POST /drover/v1/nodes/{name}/serving-certificate`.
pub const ROUTE: &str = "/drover/v1/nodes/{name}/serving-certificate";

/// Whether `path` is one of [`ROUTE`]'s (open to the router's authorization: the handler
/// decides, by the node's identity).
pub fn is_route(path: &str) -> bool {
    path.strip_prefix("/drover/v1/nodes/")
        .and_then(|rest| rest.strip_suffix("/serving-certificate"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

pub async fn issue(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    user: Option<Extension<User>>,
) -> Response {
    let Some(Extension(user)) = user else {
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let admin = user.in_group(api::rbac::MASTERS);
    if !admin && user.node_name() != Some(name.as_str()) {
        return failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "User \"{}\" cannot get a serving certificate for node {name}: a node gets one for itself only",
                user.name
            ),
        );
    }
    if let Some(why) = api::object::invalid_subdomain(&name) {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("node name {name:?}: {why}"),
        );
    }
    // The same CA signs the API servers' certificates: a node named like one of their names
    // (an address, localhost) must not get a certificate that could pose as an API server.
    if name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("node name {name:?} is an address or localhost: no serving certificate is issued for it"),
        );
    }
    let secrets = match st.cluster_secrets().await {
        Ok(s) => s,
        Err(e) => {
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("cannot read the cluster's CA: {e}"),
            )
        }
    };
    match secrets.node_serving_credentials(&name) {
        Ok((certificate, key)) => (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&serde_json::json!({
                "certificate": certificate, "key": key, "ca": secrets.ca_pem,
            }))
            .expect("serialises"),
        )
            .into_response(),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e),
    }
}
