//! The cluster's own OCI registry: the Distribution API (v1.1) under `/v2/` on the API
//! address, behind the cluster's TLS and authentication.
//!
//! - Repositories are `NAMESPACE/NAME`; RBAC on the resource `repositories` of the group
//!   `registry.drover.dev` in that namespace decides: `get` pulls, `create` pushes, `delete`
//!   deletes. The default `view`, `edit` and `admin` roles carry them as they carry pods.
//! - Credentials: a bearer token (admin, user, ServiceAccount or node token), or the same
//!   token as the password of basic credentials (`docker login`, `skopeo login`: any user
//!   name). Clients that exchange basic credentials for a bearer token first (the `WWW-
//!   Authenticate: Bearer` challenge of `/v2/`) get that token back from `/v2/token`.
//! - Manifests, tags, referrers and which repository may read which blob live in the Raft
//!   store ([`store`]); blob bytes are files ([`blobs`]) on a majority of the servers before
//!   an upload is acknowledged, and on every server once it has been pulled there
//!   ([`replicate`]).
//!
//! Not yet: garbage collection, `_catalog`.
//!
//! Hand-written rather than embedding Distribution or zot: both are Go services with their
//! own storage and authentication, and here the store, RBAC and TLS are the cluster's.

pub mod blobs;
mod manifest;
mod path;
pub mod replicate;
mod store;

use std::sync::Arc;

use api::rbac::{Attributes, ResourceAttributes, User};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use raft_store::{Compare, Op, Txn};
use serde_json::{json, Value};

pub use blobs::Limits;
use path::{Digest, Reference, Repository, Route};

use crate::state::ApiState;

/// The RBAC group and resource of repositories.
pub const GROUP: &str = "registry.drover.dev";
pub const RESOURCE: &str = "repositories";

/// How long a token from `/v2/token` is said to last: it is the caller's own credential,
/// which lasts as long as it does, but clients want a number.
const TOKEN_SECONDS: u64 = 3600;

/// Request bodies are written to disk in pieces of this size.
const WRITE_BUFFER: usize = 1 << 20;

/// One error type for the registry, answered in the Distribution API's error format with the
/// code clients know.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    BlobUnknown(String),
    #[error("{0}")]
    UploadUnknown(String),
    #[error("{0}")]
    UploadInvalid(String),
    #[error("{0}")]
    RangeInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("{0}")]
    ManifestUnknown(String),
    #[error("{0}")]
    ManifestBlobUnknown(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    PaginationInvalid(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    fn code_and_status(&self) -> (&'static str, StatusCode) {
        use RegistryError::*;
        match self {
            NotFound(_) => ("NOT_FOUND", StatusCode::NOT_FOUND),
            NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            NameUnknown(_) => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            TagInvalid(_) => ("TAG_INVALID", StatusCode::BAD_REQUEST),
            DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            BlobUnknown(_) => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            UploadUnknown(_) => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            UploadInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
            RangeInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            SizeInvalid(_) => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
            ManifestInvalid(_) => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestUnknown(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            ManifestBlobUnknown(_) => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
            Unauthorized(_) => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            Denied(_) => ("DENIED", StatusCode::FORBIDDEN),
            Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            PaginationInvalid(_) => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
            TooManyRequests(_) => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            Unavailable(_) => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
            Internal(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn into_response(self, challenge: Option<String>) -> Response {
        let (code, status) = self.code_and_status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "registry request failed");
        }
        let body = json!({"errors": [{"code": code, "message": self.to_string()}]});
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Some(c) = challenge.filter(|_| status == StatusCode::UNAUTHORIZED) {
            if let Ok(v) = HeaderValue::from_str(&c) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        api_version(response)
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

fn api_version(mut r: Response) -> Response {
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

/// Every request under `/v2`.
pub async fn serve(State(st): State<Arc<ApiState>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&st.address)
        .to_string();
    let challenge = format!("Bearer realm=\"https://{host}/v2/token\",service=\"drover\"");
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    match handle(&st, &parts, &mut body).await {
        Ok(r) => api_version(r),
        Err(e) => {
            // A refusal before the body was read: read (a bounded part of) it first, as Go's
            // server does, so that HTTP/2 clients still sending see the answer rather than a
            // reset stream.
            if let Some(unread) = body {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    axum::body::to_bytes(unread, 64 << 10),
                )
                .await;
            }
            e.into_response(Some(challenge))
        }
    }
}

async fn handle(
    st: &ApiState,
    req: &axum::http::request::Parts,
    body: &mut Option<Body>,
) -> Result<Response> {
    let Some(registry) = st.registry.get() else {
        return Err(RegistryError::NotFound(
            "this server does not serve a registry".into(),
        ));
    };
    let route = path::parse(req.uri.path())?;
    let user = authenticate(st, &req.headers).await?;
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri.query().unwrap_or_default()).unwrap_or_default();
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let method = req.method.clone();
    let get = method == Method::GET || method == Method::HEAD;
    // The API's cap on requests in flight holds for the registry too (after authentication,
    // as for the API): kept for the whole request, and for a blob's download while it is sent.
    let mut place = Some(st.inflight.admit(&method).ok_or_else(|| {
        RegistryError::TooManyRequests(
            "the server has too many requests in flight; try again in a second".into(),
        )
    })?);
    match route {
        Route::Base if get => Ok(json_answer(StatusCode::OK, json!({}))),
        Route::Token if get || method == Method::POST => Ok(token(&req.headers)),
        Route::Blob(repo, digest) if get => {
            allow(st, &user, "get", &repo).await?;
            let hold = place.take().filter(|_| method == Method::GET);
            read_blob(st, registry, &repo, &digest, hold).await
        }
        Route::Blob(repo, digest) if method == Method::DELETE => {
            allow(st, &user, "delete", &repo).await?;
            let key = store::blob_key(&repo, &digest);
            if store::get(&st.store, &key).await?.is_none() {
                return Err(blob_unknown(&repo, &digest));
            }
            store::write(&st.store, Txn::delete(key)).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Route::Uploads(repo) if method == Method::POST => {
            allow_push(st, &user, &repo).await?;
            if let (Some(mount), Some(from)) = (q("mount"), q("from")) {
                if let Some(done) = mount_blob(st, registry, &user, &repo, &mount, &from).await? {
                    return Ok(done);
                }
            }
            let digest = q("digest").map(|d| Digest::parse(&d)).transpose()?;
            let id = registry.begin(&repo)?;
            match digest {
                Some(digest) => {
                    let body = body.take().unwrap_or_default();
                    let done = finish_upload(st, registry, &repo, &id, &digest, body).await;
                    // A monolithic upload's session is the request's own: its client never
                    // learnt the id, so nothing may be left waiting for it.
                    if done.is_err() {
                        registry.end(&id);
                    }
                    done
                }
                None => Ok(upload_answer(StatusCode::ACCEPTED, &repo, &id, 0)),
            }
        }
        Route::Upload(repo, id) => {
            allow_push(st, &user, &repo).await?;
            match method {
                Method::GET => {
                    let size = registry.progress(&repo, &id)?;
                    Ok(upload_answer(StatusCode::NO_CONTENT, &repo, &id, size))
                }
                Method::PATCH => {
                    let start = content_range_start(&req.headers)?;
                    let mut lent = registry.lend(&repo, &id)?;
                    if start.is_some_and(|s| s != lent.size) {
                        let size = lent.size;
                        registry.put_back(lent);
                        return Err(RegistryError::RangeInvalid(format!(
                            "this chunk starts at byte {}, but the upload has {size} bytes",
                            start.unwrap_or_default()
                        )));
                    }
                    match receive(registry, &mut lent, body.take().unwrap_or_default()).await {
                        Ok(()) => {
                            let size = lent.size;
                            registry.put_back(lent);
                            Ok(upload_answer(StatusCode::ACCEPTED, &repo, &id, size))
                        }
                        Err(e) => {
                            // Part of the chunk may be written: the session cannot go on.
                            registry.end(&id);
                            Err(e)
                        }
                    }
                }
                Method::PUT => {
                    let digest = Digest::parse(&q("digest").ok_or_else(|| {
                        RegistryError::DigestInvalid(
                            "finishing an upload needs ?digest=sha256:...".into(),
                        )
                    })?)?;
                    finish_upload(
                        st,
                        registry,
                        &repo,
                        &id,
                        &digest,
                        body.take().unwrap_or_default(),
                    )
                    .await
                }
                Method::DELETE => {
                    registry.progress(&repo, &id)?;
                    registry.end(&id);
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(unsupported(&method)),
            }
        }
        Route::Manifest(repo, reference) if get => {
            allow(st, &user, "get", &repo).await?;
            read_manifest(st, &repo, &reference, method == Method::HEAD).await
        }
        Route::Manifest(repo, reference) if method == Method::PUT => {
            allow_push(st, &user, &repo).await?;
            let content_type = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = axum::body::to_bytes(
                body.take().unwrap_or_default(),
                manifest::MAX_MANIFEST_BYTES + 1,
            )
            .await
            .map_err(|_| {
                RegistryError::ManifestInvalid(format!(
                    "manifest is larger than {} bytes, this registry's limit",
                    manifest::MAX_MANIFEST_BYTES
                ))
            })?;
            put_manifest(st, &repo, &reference, &bytes, content_type.as_deref()).await
        }
        Route::Manifest(repo, reference) if method == Method::DELETE => {
            allow(st, &user, "delete", &repo).await?;
            delete_manifest(st, &repo, &reference).await
        }
        Route::Tags(repo) if get => {
            allow(st, &user, "get", &repo).await?;
            let n = match q("n") {
                Some(n) => n.parse::<u64>().map_err(|_| {
                    RegistryError::PaginationInvalid(format!("n={n:?} is not a number"))
                })?,
                None => 1000,
            };
            list_tags(st, &repo, n.min(10_000), q("last")).await
        }
        Route::Referrers(repo, subject) if get => {
            allow(st, &user, "get", &repo).await?;
            referrers(st, &repo, &subject, q("artifactType")).await
        }
        _ => Err(unsupported(&method)),
    }
}

fn unsupported(method: &Method) -> RegistryError {
    RegistryError::Unsupported(format!("{method} is not supported on this path"))
}

fn json_answer(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

// --- authentication and authorization ----------------------------------------------------

/// The caller, from a bearer token or basic credentials whose password is a token.
async fn authenticate(st: &ApiState, headers: &HeaderMap) -> Result<User> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token = if let Some(t) = api::credentials::bearer_token(value) {
        Some(t.to_string())
    } else {
        basic_password(value)
    };
    let Some(token) = token else {
        return Err(RegistryError::Unauthorized(
            "authentication required: log in with a Drover token as the password (any user name)"
                .into(),
        ));
    };
    crate::access::authenticated(st, &token)
        .await
        .ok_or_else(|| {
            RegistryError::Unauthorized("the credentials are not valid in this cluster".into())
        })
}

/// The password of `Basic` credentials.
fn basic_password(authorization: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, encoded) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// `/v2/token`: the credential the caller authenticated with, as the bearer token its client
/// asks for. Drover's tokens are bearer tokens already; a token minted here would only be a
/// second credential to revoke.
fn token(headers: &HeaderMap) -> Response {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token = api::credentials::bearer_token(value)
        .map(str::to_string)
        .or_else(|| basic_password(value))
        .unwrap_or_default();
    json_answer(
        StatusCode::OK,
        json!({"token": token, "access_token": token, "expires_in": TOKEN_SECONDS}),
    )
}

/// Whether `user` may `verb` the repository; DENIED naming the permission if not.
async fn allow(st: &ApiState, user: &User, verb: &str, repo: &Repository) -> Result<()> {
    let path = format!("/v2/{repo}");
    let a = Attributes {
        verb,
        resource: Some(ResourceAttributes {
            group: GROUP,
            resource: RESOURCE,
            subresource: "",
            namespace: &repo.namespace,
            name: &repo.name,
        }),
        path: &path,
    };
    if crate::access::allows_soon(st, user, &a).await {
        Ok(())
    } else {
        Err(RegistryError::Denied(api::rbac::forbidden_message(
            user, &a,
        )))
    }
}

/// Push: `create` on the repository, in a namespace that exists.
async fn allow_push(st: &ApiState, user: &User, repo: &Repository) -> Result<()> {
    allow(st, user, "create", repo).await?;
    if !store::namespace_exists(&st.store, &repo.namespace).await? {
        return Err(RegistryError::NameUnknown(format!(
            "namespace {:?} does not exist; create it first (kubectl create namespace {})",
            repo.namespace, repo.namespace
        )));
    }
    Ok(())
}

// --- blobs -------------------------------------------------------------------------------

fn blob_unknown(repo: &Repository, d: &Digest) -> RegistryError {
    RegistryError::BlobUnknown(format!("blob {d} is not in repository {repo}"))
}

async fn read_blob(
    st: &ApiState,
    registry: &Arc<blobs::Blobs>,
    repo: &Repository,
    digest: &Digest,
    // A GET's place in the request cap, kept while the bytes are sent; None for a HEAD.
    hold: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Response> {
    let head = hold.is_none();
    if store::get(&st.store, &store::blob_key(repo, digest))
        .await?
        .is_none()
    {
        return Err(blob_unknown(repo, digest));
    }
    if registry.has(digest).is_none() && !replicate::fetch(&st.store, registry, digest).await? {
        return Err(RegistryError::Unavailable(format!(
            "blob {digest} of {repo} is on none of the servers this one reaches now"
        )));
    }
    let file = tokio::fs::File::open(registry.path(digest))
        .await
        .map_err(|e| RegistryError::Internal(format!("cannot read blob {digest}: {e}")))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| RegistryError::Internal(format!("cannot read blob {digest}: {e}")))?
        .len();
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(file_stream(file, hold))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    insert_digest(h, digest);
    Ok(r)
}

/// A file's bytes as a body, 1 MiB at a time (an async read per 64 KiB cost a blocking-pool
/// round trip each and halved a large pull's rate). Each read takes a blocking thread only
/// while it reads: a client that stops reading holds none (the store applies on that pool).
/// `hold` (a place of the API's request cap) is kept until the body is sent or dropped.
pub(crate) fn file_stream(
    mut file: tokio::fs::File,
    hold: Option<tokio::sync::OwnedSemaphorePermit>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    const CHUNK: usize = 1 << 20;
    file.set_max_buf_size(CHUNK);
    futures_util::stream::unfold((file, hold), |(mut file, hold)| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        // Whole chunks but the last, so HTTP/2 frames and TLS records stay large.
        while filled < CHUNK {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some((Err(e), (file, hold))),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some((Ok(bytes::Bytes::from(buf)), (file, hold)))
    })
}

fn insert_digest(h: &mut HeaderMap, d: &Digest) {
    if let Ok(v) = HeaderValue::from_str(d.as_str()) {
        h.insert("Docker-Content-Digest", v);
    }
}

fn upload_answer(status: StatusCode, repo: &Repository, id: &str, size: u64) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    let location = format!("/v2/{repo}/blobs/uploads/{id}");
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    // "0-0" for an empty upload too, as Distribution answers (clients parse it).
    let range = format!("0-{}", size.saturating_sub(1));
    if let Ok(v) = HeaderValue::from_str(&range) {
        h.insert(header::RANGE, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("Docker-Upload-UUID", v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn blob_created(repo: &Repository, d: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{repo}/blobs/{d}")) {
        h.insert(header::LOCATION, v);
    }
    insert_digest(h, d);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// The first byte of a PATCH's `Content-Range: START-END`, if it has one.
fn content_range_start(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default();
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let start = text
        .split(['-', '/'])
        .next()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            RegistryError::RangeInvalid(format!("Content-Range {text:?} is not START-END"))
        })?;
    Ok(Some(start))
}

/// Streams a request body into a lent upload session.
async fn receive(registry: &blobs::Blobs, lent: &mut blobs::Lent, body: Body) -> Result<()> {
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUFFER);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::UploadInvalid(format!("the upload's body was cut off: {e}"))
        })?;
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_BUFFER {
            registry.append(lent, &buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        registry.append(lent, &buf).await?;
    }
    Ok(())
}

/// Takes the last bytes of session `id`, checks the digest, makes the blob durable and links
/// it to the repository: only then the 201.
async fn finish_upload(
    st: &ApiState,
    registry: &Arc<blobs::Blobs>,
    repo: &Repository,
    id: &str,
    digest: &Digest,
    body: Body,
) -> Result<Response> {
    let mut lent = registry.lend(repo, id)?;
    if let Err(e) = receive(registry, &mut lent, body).await {
        registry.end(id);
        return Err(e);
    }
    let size = registry.commit(lent, digest).await?;
    replicate::to_quorum(&st.store, registry, digest).await?;
    link(st, repo, digest, size).await?;
    Ok(blob_created(repo, digest))
}

async fn link(st: &ApiState, repo: &Repository, d: &Digest, size: u64) -> Result<()> {
    store::write(
        &st.store,
        Txn::put(store::blob_key(repo, d), json!({"size": size}).to_string()),
    )
    .await
    .map(|_| ())
}

/// A cross-repository mount: the blob is linked into `repo` without being sent again, when the
/// caller may pull it from `from`. Otherwise `None`, and an upload begins as the spec says.
async fn mount_blob(
    st: &ApiState,
    registry: &Arc<blobs::Blobs>,
    user: &User,
    repo: &Repository,
    mount: &str,
    from: &str,
) -> Result<Option<Response>> {
    let (Ok(digest), Ok(source)) = (Digest::parse(mount), Repository::parse(from)) else {
        return Ok(None);
    };
    if allow(st, user, "get", &source).await.is_err() {
        return Ok(None);
    }
    let Some(kv) = store::get(&st.store, &store::blob_key(&source, &digest)).await? else {
        return Ok(None);
    };
    if registry.has(&digest).is_none() && !replicate::fetch(&st.store, registry, &digest).await? {
        return Ok(None);
    }
    let size = serde_json::from_slice::<Value>(&kv.value)
        .ok()
        .and_then(|v| v["size"].as_u64())
        .unwrap_or_default();
    link(st, repo, &digest, size).await?;
    Ok(Some(blob_created(repo, &digest)))
}

// --- manifests ---------------------------------------------------------------------------

/// The digest a reference names: itself, or what its tag points at.
async fn resolve(st: &ApiState, repo: &Repository, reference: &Reference) -> Result<Digest> {
    match reference {
        Reference::Digest(d) => Ok(d.clone()),
        Reference::Tag(tag) => {
            let kv = store::get(&st.store, &store::tag_key(repo, tag))
                .await?
                .ok_or_else(|| {
                    RegistryError::ManifestUnknown(format!("{repo} has no tag {tag:?}"))
                })?;
            Digest::parse(&String::from_utf8_lossy(&kv.value))
        }
    }
}

async fn read_manifest(
    st: &ApiState,
    repo: &Repository,
    reference: &Reference,
    head: bool,
) -> Result<Response> {
    let digest = resolve(st, repo, reference).await?;
    let kv = store::get(&st.store, &store::manifest_key(repo, &digest))
        .await?
        .ok_or_else(|| {
            RegistryError::ManifestUnknown(format!("{repo} has no manifest {digest}"))
        })?;
    let stored = store::decode(&kv.value)?;
    let size = stored.bytes.len();
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::from(stored.bytes)
    });
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&stored.header.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    insert_digest(h, &digest);
    Ok(r)
}

async fn put_manifest(
    st: &ApiState,
    repo: &Repository,
    reference: &Reference,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<Response> {
    let parsed = manifest::parse(bytes, content_type)?;
    let digest = Digest::of(bytes);
    if let Reference::Digest(d) = reference {
        if d != &digest {
            return Err(RegistryError::DigestInvalid(format!(
                "the manifest's bytes have digest {digest}, not {d}"
            )));
        }
    }
    // What it refers to must be in this repository, so a manifest cannot make readable a blob
    // its pusher could not read (links are per repository).
    let blob_checks = parsed.blobs.iter().map(|b| async move {
        let held = store::get(&st.store, &store::blob_key(repo, b)).await?;
        Ok::<_, RegistryError>((b, held.is_some()))
    });
    for (b, held) in futures_util::future::try_join_all(blob_checks).await? {
        if !held {
            return Err(RegistryError::ManifestBlobUnknown(format!(
                "blob {b} is not in {repo}; push it before the manifest"
            )));
        }
    }
    for m in &parsed.manifests {
        if store::get(&st.store, &store::manifest_key(repo, m))
            .await?
            .is_none()
        {
            return Err(RegistryError::ManifestUnknown(format!(
                "manifest {m} is not in {repo}; push it before the index that lists it"
            )));
        }
    }
    let value = store::encode(&parsed.header, bytes);
    if value.len() > store::MAX_VALUE_BYTES {
        return Err(RegistryError::ManifestInvalid(format!(
            "manifest and its annotations take {} bytes to store; the limit is {}",
            value.len(),
            store::MAX_VALUE_BYTES
        )));
    }
    let mut txn = Txn::default().and_then(Op::put(store::manifest_key(repo, &digest), value));
    if let Reference::Tag(tag) = reference {
        txn = txn.and_then(Op::put(store::tag_key(repo, tag), digest.to_string()));
    }
    if let Some(subject) = &parsed.subject {
        let mut descriptor = json!({
            "mediaType": parsed.header.media_type,
            "digest": digest.to_string(),
            "size": bytes.len(),
        });
        if let Some(t) = &parsed.header.artifact_type {
            descriptor["artifactType"] = json!(t);
        }
        if let Some(a) = &parsed.header.annotations {
            descriptor["annotations"] = a.clone();
        }
        txn = txn.and_then(Op::put(
            store::referrer_key(repo, subject, &digest),
            descriptor.to_string(),
        ));
    }
    store::write(&st.store, txn).await?;
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{repo}/manifests/{digest}")) {
        h.insert(header::LOCATION, v);
    }
    insert_digest(h, &digest);
    if let Some(s) = parsed
        .subject
        .as_ref()
        .and_then(|s| HeaderValue::from_str(s.as_str()).ok())
    {
        h.insert("OCI-Subject", s);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(r)
}

/// By tag: the tag goes. By digest: the manifest goes, with every tag pointing at it and its
/// entry among its subject's referrers. Blobs stay until garbage collection.
async fn delete_manifest(
    st: &ApiState,
    repo: &Repository,
    reference: &Reference,
) -> Result<Response> {
    let txn = match reference {
        Reference::Tag(tag) => {
            let key = store::tag_key(repo, tag);
            if store::get(&st.store, &key).await?.is_none() {
                return Err(RegistryError::ManifestUnknown(format!(
                    "{repo} has no tag {tag:?}"
                )));
            }
            Txn::delete(key)
        }
        Reference::Digest(d) => {
            let key = store::manifest_key(repo, d);
            let kv = store::get(&st.store, &key).await?.ok_or_else(|| {
                RegistryError::ManifestUnknown(format!("{repo} has no manifest {d}"))
            })?;
            let stored = store::decode(&kv.value)?;
            // Only if unchanged since read: a tag moved here meanwhile is not left dangling
            // unnoticed (the client sees a conflict-free retry instead).
            let mut txn = Txn::default()
                .when(Compare::mod_revision(
                    key.clone(),
                    raft_store::CompareOp::Equal,
                    kv.mod_revision,
                ))
                .and_then(Op::delete(key));
            let (tags, _) = store::list(&st.store, &store::tags_prefix(repo), 0).await?;
            for t in tags.iter().filter(|t| t.value == d.as_str().as_bytes()) {
                txn = txn.and_then(Op::delete(t.key.clone()));
            }
            if let Some(subject) = stored
                .header
                .subject
                .as_deref()
                .and_then(|s| Digest::parse(s).ok())
            {
                txn = txn.and_then(Op::delete(store::referrer_key(repo, &subject, d)));
            }
            txn
        }
    };
    if !store::write(&st.store, txn).await? {
        return Err(RegistryError::Unavailable(
            "the manifest changed while it was deleted; try again".into(),
        ));
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn list_tags(
    st: &ApiState,
    repo: &Repository,
    n: u64,
    last: Option<String>,
) -> Result<Response> {
    let prefix = store::tags_prefix(repo);
    let (kvs, _) = store::list(&st.store, &prefix, 0).await?;
    let all: Vec<String> = kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
        .collect();
    if all.is_empty() && last.is_none() {
        let (manifests, _) = store::list(&st.store, &format!("/oci/manifests/{repo}@"), 1).await?;
        if manifests.is_empty() {
            return Err(RegistryError::NameUnknown(format!(
                "repository {repo} is not known to this registry"
            )));
        }
    }
    let after: Vec<String> = all
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let page: Vec<String> = after.iter().take(n as usize).cloned().collect();
    let mut r = json_answer(
        StatusCode::OK,
        json!({"name": repo.to_string(), "tags": page}),
    );
    if after.len() > page.len() {
        if let Some(l) = page.last() {
            let link = format!("</v2/{repo}/tags/list?n={n}&last={l}>; rel=\"next\"");
            if let Ok(v) = HeaderValue::from_str(&link) {
                r.headers_mut().insert(header::LINK, v);
            }
        }
    }
    Ok(r)
}

async fn referrers(
    st: &ApiState,
    repo: &Repository,
    subject: &Digest,
    artifact_type: Option<String>,
) -> Result<Response> {
    let (kvs, _) = store::list(&st.store, &store::referrers_prefix(repo, subject), 0).await?;
    let manifests: Vec<Value> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|d| {
            artifact_type
                .as_deref()
                .is_none_or(|t| d["artifactType"].as_str() == Some(t))
        })
        .collect();
    let mut r = Response::new(Body::from(
        json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX, "manifests": manifests})
            .to_string(),
    ));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(manifest::OCI_INDEX),
    );
    if artifact_type.is_some() {
        h.insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_carry_the_token_as_password() {
        use base64::Engine as _;
        let b = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(basic_password(&b("me:tok:en")).as_deref(), Some("tok:en"));
        assert_eq!(basic_password(&b("me:")), None);
        assert_eq!(basic_password(&b("no-colon")), None);
        assert_eq!(basic_password("Bearer x"), None);
        assert_eq!(basic_password("Basic !!!"), None);
    }

    #[test]
    fn content_ranges_give_their_start() {
        let mut h = HeaderMap::new();
        assert_eq!(content_range_start(&h).unwrap(), None);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("10-19"));
        assert_eq!(content_range_start(&h).unwrap(), Some(10));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 0-9/10"),
        );
        assert_eq!(content_range_start(&h).unwrap(), Some(0));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("x-9"));
        assert!(content_range_start(&h).is_err());
    }
}
