//! Wasm images in OCI registries, in the CNCF Wasm layout: a manifest whose config has media
//! type `application/vnd.wasm.config.v0+json` and whose one layer is `application/wasm` (the
//! older `application/vnd.wasm.content.layer.v1+wasm` is accepted too). Pulls are verified by
//! digest (oci-client checks the manifest and every blob) and land in the image store.
//!
//! Registries on loopback addresses are reached over plain HTTP, as Docker does; others over
//! HTTPS unless listed as insecure.

use std::net::IpAddr;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::images::{ImageStore, StoredImage};

pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
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

pub struct Registries {
    insecure: Vec<String>,
}

impl Registries {
    /// `insecure`: registries (`host:port`) to reach over plain HTTP besides loopback ones.
    pub fn new(insecure: Vec<String>) -> Registries {
        // oci-client's HTTP stack needs a process-wide rustls provider; ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries { insecure }
    }

    fn client(&self, registry: &str) -> Result<Client, PullError> {
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

    /// Pulls `image` into `store` under the reference the pod uses.
    pub async fn pull(&self, image: &str, store: &ImageStore) -> Result<StoredImage, PullError> {
        let reference = Self::parse(image)?;
        let client = self.client(reference.resolve_registry())?;
        let pulled = client
            .pull(
                &reference,
                &RegistryAuth::Anonymous,
                vec![WASM_LAYER, WASM_LAYER_LEGACY],
            )
            .await
            .map_err(|e| {
                PullError::Registry(format!("failed to pull and unpack image {image:?}: {e}"))
            })?;
        let [layer] = pulled.layers.as_slice() else {
            return Err(PullError::NotWasm(format!(
                "image {image:?} has {} layers; a Wasm image has exactly one",
                pulled.layers.len()
            )));
        };
        if !layer.data.starts_with(b"\0asm") {
            return Err(PullError::NotWasm(format!(
                "the layer of image {image:?} is not WebAssembly"
            )));
        }
        Ok(store.add(image, &layer.data)?)
    }

    /// Pushes a .wasm file as `image` in the CNCF Wasm layout; returns the manifest digest.
    pub async fn push(&self, wasm: Vec<u8>, image: &str) -> Result<String, PullError> {
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
            .push(
                &reference,
                &layers,
                config,
                &RegistryAuth::Anonymous,
                Some(manifest),
            )
            .await
            .map_err(|e| PullError::Registry(format!("push to {image:?} failed: {e}")))?;
        client
            .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
            .await
            .map_err(|e| PullError::Registry(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
