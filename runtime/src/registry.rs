//! Pulls from OCI registries into the image store: Linux container images (manifests and
//! indexes, OCI's and Docker's), and Wasm images in the CNCF Wasm layout (a manifest whose
//! config has media type `application/vnd.wasm.config.v0+json` and whose one layer is
//! `application/wasm`; the older `application/vnd.wasm.content.layer.v1+wasm` is accepted too).
//!
//! An index resolves to the node's platform (linux and the node's architecture). Every blob is
//! verified against its digest as it streams into the store's `tmp/` (oci-client hashes it)
//! and named only once complete; blobs the store has are not fetched again. Layers are
//! unpacked on blocking threads, once per layer. Authentication: anonymous, basic, or a
//! bearer token; oci-client does the token exchange a registry asks for.
//!
//! Registries on loopback addresses are reached over plain HTTP, as Docker does; others over
//! HTTPS unless listed as insecure.

use std::net::IpAddr;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer, LayerDescriptor};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, ImageManifest};

use crate::images::{
    check_oci_manifest, parse_manifest, select_platform, sha256_digest, ImageError, ImageStore,
    ManifestOrIndex, StoredImage, INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, WASM_CONFIG,
};

/// How a pull authenticates: `Anonymous`, `Basic(username, password)` or `Bearer(token)`.
pub use oci_client::secrets::RegistryAuth;

pub const WASM_LAYER: &str = "application/wasm";
pub const WASM_LAYER_LEGACY: &str = "application/vnd.wasm.content.layer.v1+wasm";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {0:?}: {1}")]
    Reference(String, String),
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    NotWasm(String),
    /// The registry has no such image (or repository).
    #[error("{0}")]
    NotFound(String),
    /// The registry refused the credentials, or wants some.
    #[error("{0}")]
    Unauthorized(String),
    /// No variant of the image is for this node's platform.
    #[error("{0}")]
    Platform(String),
    /// A blob's content does not have the digest the manifest names.
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    #[error("{0}")]
    Store(#[from] crate::images::ImageError),
}

/// Whether a registry host (`host[:port]`) is on this machine's loopback.
fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(registry, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The credentials for `registry` (`host[:port]`, as in an image reference) in the contents of
/// `.dockerconfigjson` secrets (or the older `.dockercfg`), the first that has them; anonymous
/// if none does. Entries may be keyed `host`, `https://host` or `https://host/v1/`, and
/// docker.io is also index.docker.io and registry-1.docker.io. An entry gives a username and
/// password, or `auth` (base64 of `username:password`), or a `registrytoken` (bearer).
pub fn auth_from_docker_config(registry: &str, dockerconfigjsons: &[Vec<u8>]) -> RegistryAuth {
    let wanted = registry_host(registry);
    for json in dockerconfigjsons {
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(json) else {
            continue;
        };
        // `.dockercfg` is the `auths` map itself.
        let Some(auths) = config.get("auths").unwrap_or(&config).as_object() else {
            continue;
        };
        let found = auths
            .iter()
            .filter(|(key, _)| registry_host(key) == wanted)
            .find_map(|(_, entry)| credentials(entry));
        if let Some(auth) = found {
            return auth;
        }
    }
    RegistryAuth::Anonymous
}

/// A docker config key or registry name as one host spelling: no scheme, no path,
/// Docker Hub's aliases as `docker.io`.
fn registry_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

fn credentials(entry: &serde_json::Value) -> Option<RegistryAuth> {
    let field = |name| {
        entry
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Some(RegistryAuth::Basic(username.into(), password.into()));
    }
    if let Some(auth) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        if let Some((username, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return Some(RegistryAuth::Basic(username.into(), password.into()));
        }
    }
    field("registrytoken").map(|token| RegistryAuth::Bearer(token.into()))
}

/// An error with its causes, as `error: cause: cause` (reqwest's own message leaves out why
/// a connection failed).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
        source = source.and_then(|s| s.source());
    }
    message
}

/// What a registry's answer means for a pull of `image`.
fn pull_error(e: OciDistributionError, image: &str, auth: &RegistryAuth) -> PullError {
    use OciDistributionError as E;
    let unauthorized = || match auth {
        RegistryAuth::Anonymous => PullError::Unauthorized(format!(
            "unauthorized: the registry refused to serve {image:?} without credentials (the \
             image may not exist, or it needs an imagePullSecret)"
        )),
        _ => PullError::Unauthorized(format!(
            "unauthorized: the registry refused the credentials for {image:?}"
        )),
    };
    let not_found = |detail: &dyn std::fmt::Display| {
        PullError::NotFound(format!(
            "not found: image {image:?} does not exist in its registry ({detail})"
        ))
    };
    let digest_mismatch = |d: &DigestError| match d {
        DigestError::VerificationError { expected, actual } => Some(PullError::DigestMismatch(
            format!("the registry sent content with digest {actual} for {expected} of {image:?}"),
        )),
        _ => None,
    };
    match &e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => unauthorized(),
        E::ServerError {
            code: 401 | 403, ..
        } => unauthorized(),
        E::ServerError { code: 404, url, .. } => not_found(url),
        E::RegistryError { envelope, .. } => {
            let has =
                |codes: &[OciErrorCode]| envelope.errors.iter().any(|e| codes.contains(&e.code));
            if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                unauthorized()
            } else if has(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::NotFound,
                OciErrorCode::BlobUnknown,
            ]) {
                not_found(envelope)
            } else {
                PullError::Registry(format!("pulling {image:?} failed: {}", with_causes(&e)))
            }
        }
        E::DigestError(d) => digest_mismatch(d).unwrap_or_else(|| {
            PullError::Registry(format!("pulling {image:?} failed: {}", with_causes(&e)))
        }),
        _ => PullError::Registry(format!("pulling {image:?} failed: {}", with_causes(&e))),
    }
}

/// Runs store work (file I/O, unpacking) on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PullError::Registry(format!("an image store task failed: {e}")))?
        .map_err(PullError::from)
}

/// `sha256:0123456789ab`, for progress messages.
fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b} B"),
    }
}

/// The name that always means the cluster's own registry, whatever address its API servers
/// have (`kubectl run --image=registry.drover.internal/default/hello:1`). `.internal` is the
/// top-level domain set aside for private names: it never resolves on the Internet.
pub const CLUSTER_REGISTRY_ALIAS: &str = "registry.drover.internal";

/// The cluster's own registry (the API servers' `/v2/`), known to the node by the API address
/// it uses and by [`CLUSTER_REGISTRY_ALIAS`]: reached at that address over HTTPS trusting only
/// the cluster CA (no insecure-registry setting), with the node's own credential when the
/// pod's pull secrets give none.
#[derive(Clone)]
pub struct ClusterRegistry {
    /// `host:port` of the API server the node talks to: where its pulls go.
    pub address: String,
    pub ca_pem: String,
    /// The node's credential, read at each pull (it is renewed while the node runs).
    pub token: std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

pub struct Registries {
    insecure: Vec<String>,
    cluster: Option<ClusterRegistry>,
}

impl Registries {
    /// `insecure`: registries (`host:port`) to reach over plain HTTP besides loopback ones;
    /// `cluster`: the cluster's own, if the node has one.
    pub fn new(insecure: Vec<String>, cluster: Option<ClusterRegistry>) -> Registries {
        // oci-client's HTTP stack needs a process-wide rustls provider; ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries { insecure, cluster }
    }

    /// The namespace of `image`'s repository when the image is in the cluster's registry.
    pub fn cluster_namespace<'a>(&self, image: &'a str) -> Option<&'a str> {
        let (host, path) = image.split_once('/')?;
        self.cluster_named(host)?;
        path.split_once('/').map(|(ns, _)| ns)
    }

    /// The node's own credential for `image`, when it is in the cluster's registry. Only for
    /// pods of the repository's namespace: the node authorizer lets a node pull what any of
    /// its pods runs, so a pod of another namespace must not borrow that right.
    pub fn node_credential(&self, image: &str, pod_namespace: &str) -> Option<RegistryAuth> {
        if self.cluster_namespace(image)? != pod_namespace {
            return None;
        }
        let token = (self.cluster.as_ref()?.token)()?;
        Some(RegistryAuth::Bearer(token))
    }

    /// The cluster's registry, if `registry` (`host[:port]`) names it.
    fn cluster_named(&self, registry: &str) -> Option<&ClusterRegistry> {
        self.cluster
            .as_ref()
            .filter(|c| registry == CLUSTER_REGISTRY_ALIAS || registry == c.address)
    }

    fn client(&self, registry: &str) -> Result<Client, PullError> {
        if let Some(c) = self.cluster_named(registry) {
            return Client::try_from(ClientConfig {
                protocol: ClientProtocol::Https,
                tls_certs_only: vec![oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: c.ca_pem.as_bytes().to_vec(),
                }],
                ..Default::default()
            })
            .map_err(|e| PullError::Registry(e.to_string()));
        }
        let plain = is_loopback(registry) || self.insecure.iter().any(|r| r == registry);
        let protocol = if plain {
            ClientProtocol::HttpsExcept(vec![registry.to_string()])
        } else {
            ClientProtocol::Https
        };
        Client::try_from(ClientConfig {
            protocol,
            ..Default::default()
        })
        .map_err(|e| PullError::Registry(e.to_string()))
    }

    fn parse(image: &str) -> Result<Reference, PullError> {
        image
            .parse::<Reference>()
            .map_err(|e| PullError::Reference(image.into(), e.to_string()))
    }

    /// Pulls `image` into `store` under the reference the pod uses, reporting each step
    /// through `progress` ("pulling layer 2/3 sha256:abcd… (1.2 MB)").
    pub async fn pull(
        &self,
        image: &str,
        store: &ImageStore,
        auth: &RegistryAuth,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<StoredImage, PullError> {
        let mut reference = Self::parse(image)?;
        let client = self.client(reference.resolve_registry())?;
        if let Some(c) = self.cluster_named(reference.resolve_registry()) {
            // The alias is reached at the API address; the stored image keeps the pod's name.
            reference = match reference.digest() {
                Some(d) => Reference::with_digest(
                    c.address.clone(),
                    reference.repository().to_string(),
                    d.to_string(),
                ),
                None => Reference::with_tag(
                    c.address.clone(),
                    reference.repository().to_string(),
                    reference.tag().unwrap_or("latest").to_string(),
                ),
            };
        }
        progress(format!("resolving {image}"));
        let (manifest, manifest_bytes, manifest_digest) =
            Self::fetch_manifest(&client, &reference, auth, image).await?;
        if manifest.config().media_type().to_string() == WASM_CONFIG {
            return Self::pull_wasm(&client, &reference, auth, image, &manifest, store).await;
        }
        check_oci_manifest(&manifest, image)?;
        // Held until the image is named: no gc sweep deletes its blobs before.
        let writing = {
            let store = store.clone();
            blocking(move || store.writing()).await?
        };
        Self::fetch_blob(&client, &reference, auth, image, manifest.config(), store).await?;
        let layers = manifest.layers();
        let total = layers.len();
        for (i, layer) in layers.iter().enumerate() {
            let digest = layer.digest().to_string();
            let n = i + 1;
            if store.has_blob(&digest) {
                progress(format!(
                    "layer {n}/{total} {} is already here",
                    short_digest(&digest)
                ));
                continue;
            }
            progress(format!(
                "pulling layer {n}/{total} {}… ({})",
                short_digest(&digest),
                human_size(layer.size())
            ));
            Self::fetch_blob(&client, &reference, auth, image, layer, store).await?;
        }
        for (i, layer) in layers.iter().enumerate() {
            let digest = layer.digest().to_string();
            if store.layer_path(&digest).is_dir() {
                continue;
            }
            progress(format!(
                "unpacking layer {}/{total} {}…",
                i + 1,
                short_digest(&digest)
            ));
            let (store, layer) = (store.clone(), layer.clone());
            blocking(move || store.unpack_layer(&layer)).await?;
        }
        let (store, image) = (store.clone(), image.to_string());
        blocking(move || {
            store.copy_blob(&manifest_bytes[..], Some(&manifest_digest), "the manifest")?;
            let stored = store.tag(&image, &manifest_digest);
            drop(writing);
            stored
        })
        .await
    }

    /// The image manifest `reference` names: through its index, the one for this node.
    /// Returns it with its bytes and digest.
    async fn fetch_manifest(
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        image: &str,
    ) -> Result<(ImageManifest, Vec<u8>, String), PullError> {
        let accepted: Vec<&str> = MANIFEST_MEDIA_TYPES
            .iter()
            .chain(INDEX_MEDIA_TYPES)
            .copied()
            .collect();
        // oci-client checks the bytes against the digest when the reference has one.
        let (bytes, _) = client
            .pull_manifest_raw(reference, auth, &accepted)
            .await
            .map_err(|e| pull_error(e, image, auth))?;
        let index = match parse_manifest(&bytes, image)? {
            ManifestOrIndex::Manifest(manifest) => {
                return Ok((*manifest, bytes.to_vec(), sha256_digest(&bytes)))
            }
            ManifestOrIndex::Index(index) => index,
        };
        let entry = select_platform(&index, image).map_err(|e| match e {
            ImageError::Platform(message) => PullError::Platform(message),
            other => other.into(),
        })?;
        let digest = entry.digest().to_string();
        let (bytes, _) = client
            .pull_manifest_raw(
                &reference.clone_with_digest(digest.clone()),
                auth,
                &accepted,
            )
            .await
            .map_err(|e| pull_error(e, image, auth))?;
        match parse_manifest(&bytes, image)? {
            ManifestOrIndex::Manifest(manifest) => Ok((*manifest, bytes.to_vec(), digest)),
            ManifestOrIndex::Index(_) => Err(PullError::Registry(format!(
                "image {image:?}: the index entry {digest} for this platform is an index again"
            ))),
        }
    }

    /// Streams one blob into the store unless it is there: into a temporary file, verified
    /// against its digest as it comes, named once complete.
    async fn fetch_blob(
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        image: &str,
        blob: &Descriptor,
        store: &ImageStore,
    ) -> Result<(), PullError> {
        let digest = blob.digest().to_string();
        if store.has_blob(&digest) {
            return Ok(());
        }
        let tmp = store.temp_file()?;
        let write_err = |source| {
            PullError::Store(ImageError::Write {
                path: tmp.path().display().to_string(),
                source,
            })
        };
        let mut file = tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(write_err)?);
        let descriptor = LayerDescriptor {
            digest: &digest,
            // Never fetched from elsewhere: foreign URLs could be anywhere.
            urls: &None,
        };
        // On error `tmp` is dropped here, and with it the partial file.
        client
            .pull_blob(reference, &descriptor, &mut file)
            .await
            .map_err(|e| pull_error(e, image, auth))?;
        drop(file);
        let store = store.clone();
        blocking(move || store.commit_blob(tmp, &digest).map(drop)).await
    }

    /// A Wasm image: its one layer, verified, stored as the image.
    async fn pull_wasm(
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        image: &str,
        manifest: &ImageManifest,
        store: &ImageStore,
    ) -> Result<StoredImage, PullError> {
        let [layer] = manifest.layers().as_slice() else {
            return Err(PullError::NotWasm(format!(
                "image {image:?} has {} layers; a Wasm image has exactly one",
                manifest.layers().len()
            )));
        };
        let media_type = layer.media_type().to_string();
        if media_type != WASM_LAYER && media_type != WASM_LAYER_LEGACY {
            return Err(PullError::NotWasm(format!(
                "the layer of Wasm image {image:?} has media type {media_type}, not {WASM_LAYER}"
            )));
        }
        let digest = layer.digest().to_string();
        let mut data = Vec::new();
        client
            .pull_blob(
                reference,
                &LayerDescriptor {
                    digest: &digest,
                    urls: &None,
                },
                &mut data,
            )
            .await
            .map_err(|e| pull_error(e, image, auth))?;
        if !data.starts_with(b"\0asm") {
            return Err(PullError::NotWasm(format!(
                "the layer of image {image:?} is not WebAssembly"
            )));
        }
        let (store, image) = (store.clone(), image.to_string());
        blocking(move || store.add(&image, &data)).await
    }

    /// Pushes a .wasm file as `image` in the CNCF Wasm layout with `auth`; returns the
    /// manifest digest.
    pub async fn push(
        &self,
        wasm: Vec<u8>,
        image: &str,
        auth: &RegistryAuth,
    ) -> Result<String, PullError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(PullError::NotWasm("the file is not WebAssembly".into()));
        }
        let reference = Self::parse(image)?;
        let client = self.client(reference.resolve_registry())?;
        let component = wasm.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00]);
        let layer = ImageLayer::new(wasm, WASM_LAYER.to_string(), None);
        let config = serde_json::json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": "wasm",
            "os": if component { "wasip2" } else { "wasip1" },
            "layerDigests": [layer.sha256_digest()],
        });
        let config = Config::new(
            serde_json::to_vec(&config).expect("serialises"),
            WASM_CONFIG.to_string(),
            None,
        );
        let layers = vec![layer];
        let manifest = OciImageManifest::build(&layers, &config, None);
        client
            .push(&reference, &layers, config, auth, Some(manifest))
            .await
            .map_err(|e| PullError::Registry(format!("push to {image:?} failed: {e}")))?;
        client
            .fetch_manifest_digest(&reference, auth)
            .await
            .map_err(|e| PullError::Registry(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_in_docker_configs() {
        let hub = br#"{"auths": {"https://index.docker.io/v1/": {"auth": "dTpw"}}}"#.to_vec();
        let local =
            br#"{"auths": {"127.0.0.1:5000": {"username": "u2", "password": "p2"}}}"#.to_vec();
        let legacy = br#"{"https://ghcr.io": {"auth": "dTM6cDM="}}"#.to_vec();
        let configs = [b"not json".to_vec(), hub, local, legacy];
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        let found = |registry| auth_from_docker_config(registry, &configs);
        assert_eq!(found("docker.io"), basic("u", "p"));
        assert_eq!(found("index.docker.io"), basic("u", "p"));
        assert_eq!(found("127.0.0.1:5000"), basic("u2", "p2"));
        assert_eq!(found("ghcr.io"), basic("u3", "p3"));
        assert_eq!(found("quay.io"), RegistryAuth::Anonymous);
        assert_eq!(found("127.0.0.1:5001"), RegistryAuth::Anonymous);
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
