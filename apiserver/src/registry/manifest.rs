//! What a pushed manifest is and what it refers to, read without I/O. Any media type is taken
//! (OCI and Docker images and indexes, CNCF Wasm artifacts, any artifact): the registry only
//! needs the descriptors, to check that what a manifest refers to is in the repository.

use serde_json::Value;

use super::path::Digest;
use super::store::Header;
use super::RegistryError;

/// Manifests are stored whole in the Raft store, whose values are at most 1.5 MiB.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A pushed manifest, understood.
#[derive(Debug)]
pub struct Parsed {
    pub header: Header,
    /// Blobs it needs in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Manifests it needs in the repository (an index's entries).
    pub manifests: Vec<Digest>,
    /// The manifest this one refers to (referrers API).
    pub subject: Option<Digest>,
}

fn invalid(why: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(why.into())
}

/// A descriptor's digest, checked.
fn digest_of(d: &Value, field: &str) -> Result<Digest, RegistryError> {
    let s = d
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{field}.digest is required")))?;
    Digest::parse(s).map_err(|e| invalid(format!("{field}.digest: {e}")))
}

/// Parses `bytes`, pushed with the request's Content-Type `content_type`.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, RegistryError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "manifest is {} bytes; this registry takes manifests up to {MAX_MANIFEST_BYTES}",
            bytes.len()
        )));
    }
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if !doc.is_object() {
        return Err(invalid("a manifest is a JSON object"));
    }
    if doc.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let declared = doc.get("mediaType").and_then(Value::as_str);
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim())
        .filter(|c| !c.is_empty() && *c != "application/octet-stream");
    if let (Some(d), Some(c)) = (declared, content_type) {
        if d != c {
            return Err(invalid(format!(
                "mediaType {d:?} differs from the Content-Type {c:?} it was pushed with"
            )));
        }
    }
    let is_index = doc.get("manifests").is_some();
    let media_type = declared
        .or(content_type)
        .map(str::to_string)
        .unwrap_or_else(|| (if is_index { OCI_INDEX } else { OCI_MANIFEST }).to_string());
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    if is_index {
        let entries = doc["manifests"]
            .as_array()
            .ok_or_else(|| invalid("manifests must be a list"))?;
        for (i, m) in entries.iter().enumerate() {
            manifests.push(digest_of(m, &format!("manifests[{i}]"))?);
        }
    } else {
        let config = doc
            .get("config")
            .ok_or_else(|| invalid("config is required in an image manifest"))?;
        blobs.push(digest_of(config, "config")?);
        let layers = match doc.get("layers") {
            Some(Value::Array(l)) => l.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => return Err(invalid("layers must be a list")),
        };
        for (i, l) in layers.iter().enumerate() {
            let d = digest_of(l, &format!("layers[{i}]"))?;
            // A foreign layer (Windows base images) is fetched from its URLs, not from here.
            if l.get("urls").is_none() {
                blobs.push(d);
            }
        }
    }
    let subject = match doc.get("subject") {
        Some(s) => Some(digest_of(s, "subject")?),
        None => None,
    };
    // As the referrers API defines it: an explicit artifactType, else the config's media type.
    let artifact_type = doc
        .get("artifactType")
        .and_then(Value::as_str)
        .or_else(|| doc.pointer("/config/mediaType").and_then(Value::as_str))
        .map(str::to_string);
    Ok(Parsed {
        header: Header {
            media_type,
            artifact_type,
            subject: subject.as_ref().map(|d| d.to_string()),
            annotations: doc.get("annotations").cloned(),
        },
        blobs,
        manifests,
        subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

    fn d(s: &str) -> String {
        Digest::of(s.as_bytes()).to_string()
    }

    #[test]
    fn an_image_needs_its_config_and_layers_and_an_index_its_manifests() {
        let image = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": d("c"), "size": 1},
            "layers": [{"mediaType": "application/wasm", "digest": d("l"), "size": 1},
                       {"mediaType": "x", "digest": d("f"), "size": 1, "urls": ["https://x"]}]});
        let p = parse(image.to_string().as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.blobs, vec![Digest::of(b"c"), Digest::of(b"l")]);
        assert_eq!(
            p.header.artifact_type.as_deref(),
            Some("application/vnd.wasm.config.v0+json")
        );
        let index = json!({"schemaVersion": 2, "manifests": [{"digest": d("m"), "size": 1}]});
        let p = parse(index.to_string().as_bytes(), Some(DOCKER_LIST)).unwrap();
        assert_eq!(p.manifests, vec![Digest::of(b"m")]);
        assert_eq!(p.header.media_type, DOCKER_LIST);
    }

    #[test]
    fn a_referrer_names_its_subject() {
        let sig = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/example.sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d("{}"), "size": 2},
            "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": d("s"), "size": 1}});
        let p = parse(sig.to_string().as_bytes(), None).unwrap();
        assert_eq!(p.subject, Some(Digest::of(b"s")));
        assert_eq!(
            p.header.artifact_type.as_deref(),
            Some("application/example.sig")
        );
    }

    #[test]
    fn malformed_manifests_say_what_is_wrong() {
        let err = |v: Value, ct: Option<&str>| {
            parse(v.to_string().as_bytes(), ct).unwrap_err().to_string()
        };
        assert!(err(json!({"schemaVersion": 1}), None).contains("schemaVersion"));
        assert!(err(json!({"schemaVersion": 2}), None).contains("config is required"));
        assert!(err(
            json!({"schemaVersion": 2, "config": {"digest": "md5:1"}}),
            None
        )
        .contains("config.digest"));
        assert!(err(
            json!({"schemaVersion": 2, "config": {"digest": d("c")}, "layers": [{}]}),
            None
        )
        .contains("layers[0].digest is required"));
        assert!(err(
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
            Some(OCI_MANIFEST)
        )
        .contains("differs from the Content-Type"));
        assert!(parse(b"[1]", None)
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert!(parse(&vec![b' '; MAX_MANIFEST_BYTES + 1], None)
            .unwrap_err()
            .to_string()
            .contains("bytes"));
    }
}
