//! Responses as Kubernetes clients expect them: JSON bodies and `Status` objects with
//! kube-apiserver's reasons and wording (NotFound, Invalid with its causes, Forbidden,
//! Conflict, and store failures mapped to HTTP codes). Pure helpers, shared by the request
//! path and the metrics.

use api::object::status;
use api::registry::Resource;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use raft_store::StoreError;
use serde_json::{json, Value};

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

pub(crate) fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &status(code.as_u16(), reason, message, None))
}

pub(crate) fn not_found(r: &Resource, name: &str) -> Response {
    let msg = format!("{} \"{name}\" not found", r.name);
    json_response(
        StatusCode::NOT_FOUND,
        &status(
            404,
            "NotFound",
            &msg,
            Some(json!({"name": name, "group": r.group, "kind": r.name})),
        ),
    )
}

pub(crate) fn invalid(r: &Resource, name: &str, field: &str, message: &str) -> Response {
    let cause = api::semantic::Cause {
        field: field.to_string(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {message}"),
    };
    invalid_causes(r, name, &[cause])
}

/// 422 Invalid, worded as kube-apiserver does: `Deployment.apps "web" is invalid: [a, b]`.
pub(crate) fn invalid_causes(
    r: &Resource,
    name: &str,
    causes: &[api::semantic::Cause],
) -> Response {
    let kind = if r.group.is_empty() {
        r.kind.to_string()
    } else {
        format!("{}.{}", r.kind, r.group)
    };
    let lines: Vec<String> = causes.iter().map(|c| c.line()).collect();
    let listed = match lines.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let msg = format!("{kind} \"{name}\" is invalid: {listed}");
    let causes: Vec<Value> = causes
        .iter()
        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
        .collect();
    let details = json!({"name": name, "group": r.group, "kind": r.kind, "causes": causes});
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &status(422, "Invalid", &msg, Some(details)),
    )
}

pub(crate) fn forbidden(message: &str) -> Response {
    json_response(
        StatusCode::FORBIDDEN,
        &status(403, "Forbidden", message, None),
    )
}

pub(crate) fn bad_request(message: &str) -> Response {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// A store failure as the client should see it.
pub(crate) fn store_failure(e: StoreError) -> Response {
    match e {
        StoreError::Compacted { .. } => failure(
            StatusCode::GONE,
            "Expired",
            &format!("too old resource version: {e}"),
        ),
        StoreError::InvalidArgument(m) => bad_request(&m),
        StoreError::FutureRevision { .. } => failure(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            &format!("Too large resource version: {e}"),
        ),
        StoreError::NoLeader | StoreError::Unavailable(_) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &e.to_string(),
        ),
        other => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &other.to_string(),
        ),
    }
}

/// 409 Conflict: the object changed since the version the write was based on.
pub(crate) fn conflict(r: &Resource, name: &str) -> Response {
    let msg = format!(
        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
        r.name
    );
    json_response(
        StatusCode::CONFLICT,
        &status(
            409,
            "Conflict",
            &msg,
            Some(json!({"name": name, "group": r.group, "kind": r.name})),
        ),
    )
}
