//! Joining a server to a cluster with a join token (`drover token server`), both sides.
//!
//! The token is `drover1:sha256:<CA hash>:<secret>` (`pki::join_token`), as kubeadm's and
//! k3s's are: the hash lets the new server trust the cluster before it has any certificate of
//! it; the secret proves to the cluster that the operator sent the server.
//!
//! 1. The new server opens TLS to any member's API address. The member sends its serving
//!    certificate followed by the cluster CA; the new server accepts the connection only if one
//!    of them hashes to the token's CA hash and signs the serving certificate.
//! 2. Over that connection it `POST`s `/drover/v1/join` with the secret as bearer token and
//!    its peer address. The member checks the secret (in constant time) and answers with the
//!    cluster id, a member certificate for that address (signed by the CA, naming the cluster),
//!    the encryption key and the peer addresses of the voters.
//! 3. The new server keeps these in its data dir and joins the store over mutual TLS.
//!
//! Members started together (`--initial-cluster`) have no CA to hash yet: they share a secret
//! from `drover token generate` instead (`drover1:secret:<hex>`). Before step 1, the new server
//! asks the member for its CA's hash signed with that secret over a nonce of its own
//! ([`discover_ca`]); the join then goes on as with a full token.
//!
//! Nothing is copied by hand. Whoever holds the token can become a member, so it is as secret as
//! the CA key; `GET /drover/v1/join-token` gives it to `system:masters` only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use api::rbac::User;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::respond::{bad_request, failure};
use crate::state::ApiState;

pub const PATH_JOIN: &str = "/drover/v1/join";
pub const PATH_JOIN_TOKEN: &str = "/drover/v1/join-token";
pub const PATH_JOIN_CA: &str = "/drover/v1/join-ca";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinRequest {
    peer_address: String,
}

/// What a joining server receives.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinGrant {
    pub cluster_id: String,
    pub ca: String,
    pub member_cert: String,
    pub member_key: String,
    /// The encryption key's file contents (base64).
    pub encryption_key: String,
    /// Peer addresses to join through: the answering member's, then the other voters'.
    pub peers: Vec<String>,
}

impl JoinGrant {
    pub fn credentials(&self) -> raft_store::MemberCredentials {
        raft_store::MemberCredentials {
            ca_pem: self.ca.clone(),
            cert_pem: self.member_cert.clone(),
            key_pem: self.member_key.clone(),
        }
    }
}

fn same_secret(a: &[u8], b: &[u8]) -> bool {
    // Constant time: how much of a guess matched must not show in the answer's timing.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The cluster's secrets, or the 503 a joiner retries on (the store has no leader yet, or
/// the first member has not stored them yet).
async fn secrets_or_unavailable(st: &ApiState) -> Result<crate::pki::ClusterSecrets, Response> {
    st.cluster_secrets().await.map_err(|e| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("cannot read the cluster's secrets: {e}"),
        )
    })
}

/// `POST /drover/v1/join`: the member side of step 2.
pub async fn grant(State(st): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let secrets = match secrets_or_unavailable(&st).await {
        Ok(s) => s,
        Err(unavailable) => return unavailable,
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(api::credentials::bearer_token)
        .unwrap_or("");
    if !same_secret(offered.trim().as_bytes(), secrets.join_secret.as_bytes()) {
        tracing::debug!("a join was refused: wrong join secret");
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("the join request is not valid: {e}")),
    };
    let peer: SocketAddr = match req.peer_address.parse() {
        Ok(a) => a,
        Err(_) => {
            return bad_request(&format!(
                "peerAddress {:?} is not an IP:port",
                req.peer_address
            ))
        }
    };
    if peer.ip().is_unspecified() {
        return bad_request("peerAddress must be an address the other members can reach, not 0.0.0.0 (pass --peer-listen IP:PORT)");
    }
    let cluster_id = st.store.identity.cluster_id.clone();
    let creds = match secrets.member_credentials(&cluster_id, peer.ip()) {
        Ok(c) => c,
        Err(e) => {
            return failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e);
        }
    };
    tracing::info!(%peer, "issued a member certificate to a joining server");
    let grant = JoinGrant {
        cluster_id,
        ca: creds.ca_pem,
        member_cert: creds.cert_pem,
        member_key: creds.key_pem,
        encryption_key: st.sealer.key_file_text(),
        // This member first: it just answered, so the join goes through a member that is up
        // (it forwards to the leader); the other voters after it.
        peers: std::iter::once(st.store.identity.addr.clone())
            .chain(
                st.store
                    .status()
                    .voters
                    .into_values()
                    .filter(|a| *a != st.store.identity.addr),
            )
            .collect(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&grant).expect("serialises"),
    )
        .into_response()
}

/// `GET /drover/v1/join-token`: the token, for `system:masters` only (not for whatever RBAC
/// grants on non-resource URLs: it makes members).
pub async fn token(State(st): State<Arc<ApiState>>, user: Option<Extension<User>>) -> Response {
    let admin = user.is_some_and(|Extension(u)| u.groups.iter().any(|g| g == "system:masters"));
    if !admin {
        return failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "only system:masters may read the join token",
        );
    }
    match st.cluster_secrets().await {
        Ok(secrets) => match crate::pki::join_token(&secrets) {
            Ok(token) => (StatusCode::OK, format!("{token}\n")).into_response(),
            Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e),
        },
        Err(e) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("cannot read the cluster's secrets: {e}"),
        ),
    }
}

/// Why a join failed, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Token(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "{addr} is not the cluster the join token names (TLS: {reason}); check --join and the token"
    )]
    NotTheCluster { addr: String, reason: String },
    #[error(
        "{addr} refused the join token's secret; get a current token with `drover token server`"
    )]
    Refused { addr: String },
    #[error("the join through {addr} failed: {msg}")]
    Failed { addr: String, msg: String },
    #[error("{addr} cannot take a join now: {msg}")]
    Unavailable { addr: String, msg: String },
}

impl JoinError {
    /// Whether asking again later may succeed: the member is not up yet, still starting, or
    /// busy. A refused secret, another cluster or a bad token will not change by waiting.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JoinError::Connect { .. } | JoinError::Unavailable { .. }
        )
    }
}

/// Step 1: TLS to the member at `addr`, trusting only a server certificate signed by the CA
/// whose hash is `ca_hash` (any server when there is none yet: see [`discover_ca`]).
async fn connect(
    addr: &str,
    ca_hash: Option<&str>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, JoinError> {
    let failed = |msg: String| JoinError::Failed {
        addr: addr.to_string(),
        msg,
    };
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
        .ok_or_else(|| JoinError::Token(format!("--join {addr}: expected HOST:PORT")))?;
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string())
            .map_err(|_| JoinError::Token(format!("--join {addr}: bad host name")))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            ca_hash: ca_hash.map(str::to_string),
            provider,
        }))
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| JoinError::Connect {
        addr: addr.to_string(),
        source: std::io::ErrorKind::TimedOut.into(),
    })?
    .map_err(|source| JoinError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    // Bounded: a member whose listener is bound but not yet served never answers the hello.
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp);
    tokio::time::timeout(std::time::Duration::from_secs(10), handshake)
        .await
        .map_err(|_| JoinError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no TLS handshake within 10s",
            ),
        })?
        .map_err(|e| {
            // Only a certificate that fails the check says "another cluster"; a closed or
            // reset connection (a member still starting) is just unreachable.
            let checked = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|tls| {
                    matches!(
                        tls,
                        rustls::Error::InvalidCertificate(_) | rustls::Error::General(_)
                    )
                });
            if checked {
                JoinError::NotTheCluster {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            } else {
                JoinError::Connect {
                    addr: addr.to_string(),
                    source: e,
                }
            }
        })
}

/// Whether the member at `addr` serves the cluster whose CA is `ca_pem` (a restarted member
/// given --join checks that it still points at its own cluster). Unreachable is not an answer.
pub async fn check_same_cluster(addr: &str, ca_pem: &str) -> Result<(), JoinError> {
    let hash = crate::pki::ca_hash(ca_pem).map_err(JoinError::Token)?;
    connect(addr, Some(&hash)).await.map(|_| ())
}

/// Steps 1 and 2 on the joining side: asks the member at `addr` (its API address) for a member
/// certificate for `peer_address`. A shared secret without a CA hash first has the member
/// prove it knows the secret ([`discover_ca`]).
pub async fn request_grant(
    addr: &str,
    token: &str,
    peer_address: SocketAddr,
) -> Result<JoinGrant, JoinError> {
    let token = crate::pki::parse_join_token(token).map_err(JoinError::Token)?;
    let ca_hash = match &token.ca_hash {
        Some(hash) => hash.clone(),
        None => discover_ca(addr, &token.secret).await?,
    };
    let failed = |msg: String| JoinError::Failed {
        addr: addr.to_string(),
        msg,
    };
    let tls = connect(addr, Some(&ca_hash)).await?;
    let body = serde_json::to_vec(&JoinRequest {
        peer_address: peer_address.to_string(),
    })
    .expect("serialises");
    let (status, bytes) = post(tls, addr, PATH_JOIN, Some(&token.secret), body).await?;
    if status == StatusCode::UNAUTHORIZED {
        return Err(JoinError::Refused {
            addr: addr.to_string(),
        });
    }
    let grant: JoinGrant =
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("bad answer: {e}")))?;
    if crate::pki::ca_hash(&grant.ca).map_err(failed)? != ca_hash {
        return Err(failed(
            "the CA it sent is not the one the token names".into(),
        ));
    }
    Ok(grant)
}

/// One request over a TLS connection made for it; an answer other than 2xx or 401 is an error
/// (5xx and 429 retryable: the member is starting, or busy).
async fn post(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), JoinError> {
    let failed = |msg: String| JoinError::Failed {
        addr: addr.to_string(),
        msg,
    };
    let unavailable = |msg: String| JoinError::Unavailable {
        addr: addr.to_string(),
        msg,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path)
        .header(header::HOST, addr)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(secret) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {secret}"));
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(body)))
        .expect("a valid request");
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| unavailable("no answer within 30s".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    let text = || format!("{status}: {}", String::from_utf8_lossy(&bytes));
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(unavailable(text()));
    }
    if !status.is_success() && status != StatusCode::UNAUTHORIZED {
        return Err(failed(text()));
    }
    Ok((status, bytes))
}

/// The message a member signs, with the shared secret, to prove which CA is the cluster's.
fn ca_proof_message(nonce: &str, ca_hash: &str) -> Vec<u8> {
    format!("drover join-ca\0{nonce}\0{ca_hash}").into_bytes()
}

fn ca_proof_key(secret: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes())
}

/// For a shared secret (no CA hash yet): asks the member at `addr` for its CA's hash, signed
/// with the secret over a fresh nonce. Only a holder of the secret can sign it, and the nonce
/// keeps an old answer from being replayed; the secret itself is not sent (the connection is
/// not verified yet: anyone could be at the other end). The join then goes on pinned to that CA,
/// as with a full token.
pub async fn discover_ca(addr: &str, secret: &str) -> Result<String, JoinError> {
    let tls = connect(addr, None).await?;
    let nonce = crate::pki::hex(&rand::random::<[u8; 32]>());
    let body = serde_json::to_vec(&CaChallenge {
        nonce: nonce.clone(),
    })
    .expect("serialises");
    let (status, bytes) = post(tls, addr, PATH_JOIN_CA, None, body).await?;
    let not_ours = |reason: &str| JoinError::NotTheCluster {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    if status != StatusCode::OK {
        return Err(not_ours(&format!(
            "it answered the CA challenge with {status}"
        )));
    }
    let answer: CaProof =
        serde_json::from_slice(&bytes).map_err(|_| not_ours("its CA proof is unreadable"))?;
    let proof = decode_hex(&answer.proof).ok_or_else(|| not_ours("its CA proof is not hex"))?;
    ring::hmac::verify(
        &ca_proof_key(secret),
        &ca_proof_message(&nonce, &answer.ca_hash),
        &proof,
    )
    .map_err(|_| not_ours("it does not know the shared secret"))?;
    Ok(answer.ca_hash)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Serialize, Deserialize)]
struct CaChallenge {
    nonce: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaProof {
    ca_hash: String,
    proof: String,
}

/// `POST /drover/v1/join-ca`: the member side of [`discover_ca`]. Open to anyone: the answer
/// says only which CA the cluster has (public: every serving certificate names it), signed.
pub async fn prove_ca(State(st): State<Arc<ApiState>>, body: Bytes) -> Response {
    let challenge: CaChallenge = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(&format!("the CA challenge is not valid: {e}")),
    };
    // A nonce of the joiner's making: 128 to 512 bits, hex.
    let nonce = &challenge.nonce;
    if !(32..=128).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad_request("nonce: must be 32 to 128 hex digits");
    }
    let secrets = match secrets_or_unavailable(&st).await {
        Ok(s) => s,
        Err(unavailable) => return unavailable,
    };
    let ca_hash = match crate::pki::ca_hash(&secrets.ca_pem) {
        Ok(h) => h,
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e),
    };
    let tag = ring::hmac::sign(
        &ca_proof_key(&secrets.join_secret),
        &ca_proof_message(nonce, &ca_hash),
    );
    let answer = CaProof {
        ca_hash,
        proof: crate::pki::hex(tag.as_ref()),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&answer).expect("serialises"),
    )
        .into_response()
}

/// Accepts a server whose chain holds the CA the token names and whose certificate that CA
/// signed (for the address dialled). Nothing else is trusted before the join. Without a hash
/// it accepts any server: only for [`discover_ca`], which sends nothing secret and trusts only
/// an answer signed with the shared secret (the handshake's signature is still checked, so the
/// peer holds the key of the certificate it shows).
#[derive(Debug)]
struct PinnedCa {
    ca_hash: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pinned) = &self.ca_hash else {
            return Ok(ServerCertVerified::assertion());
        };
        let hash_of = |der: &CertificateDer<'_>| {
            crate::pki::hex(ring::digest::digest(&ring::digest::SHA256, der.as_ref()).as_ref())
        };
        let ca = intermediates
            .iter()
            .find(|der| hash_of(der) == *pinned)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server did not present the CA whose hash the token holds".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
