//! The node's image store: Wasm binaries kept content-addressed (`blobs/sha256/<hex>`), and a
//! table of image references (`refs.json`: `name:tag` → digest). `drover image import` puts a
//! file straight in; registry pulls land here too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// An image in the store: what a container runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    /// The reference as the pod names it, normalised (`name:tag`).
    pub reference: String,
    /// `sha256:<hex>` of the Wasm binary.
    pub digest: String,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the image store at {path} cannot be written: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly module or component (it does not start with \\0asm)")]
    NotWasm { path: String },
    #[error("invalid image reference {0:?}")]
    BadReference(String),
}

pub struct ImageStore {
    dir: PathBuf,
    refs: Mutex<BTreeMap<String, String>>,
}

/// `name` → `name:latest`; `name:tag` and `name@sha256:...` stay as they are.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let r = reference.trim();
    if r.is_empty() || r.contains(char::is_whitespace) {
        return Err(ImageError::BadReference(reference.into()));
    }
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') || last.contains('@') {
        Ok(r.to_string())
    } else {
        Ok(format!("{r}:latest"))
    }
}

/// Whether `d` is `sha256:` and 64 lowercase hex digits (anything else never becomes a path).
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl ImageStore {
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        let write_err = |source| ImageError::Write {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(write_err)?;
        let refs = match std::fs::read(dir.join("refs.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            refs: Mutex::new(refs),
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Stores `bytes` under `reference`; returns what was stored.
    pub fn add(&self, reference: &str, bytes: &[u8]) -> Result<StoredImage, ImageError> {
        let reference = normalize(reference)?;
        if !bytes.starts_with(b"\0asm") {
            return Err(ImageError::NotWasm {
                path: reference.clone(),
            });
        }
        let digest = sha256_digest(bytes);
        let path = self.blob_path(&digest);
        let write_err = |source| ImageError::Write {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            // Write aside, then rename: a reader never sees half a blob.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes).map_err(write_err)?;
            std::fs::rename(&tmp, &path).map_err(write_err)?;
        }
        let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(bytes) = std::fs::read(self.dir.join("refs.json")) {
            if let Ok(on_disk) = serde_json::from_slice(&bytes) {
                *refs = on_disk;
            }
        }
        refs.insert(reference.clone(), digest.clone());
        let table = serde_json::to_vec_pretty(&*refs).expect("a string map serialises");
        let refs_path = self.dir.join("refs.json");
        let tmp = refs_path.with_extension("tmp");
        std::fs::write(&tmp, table).map_err(write_err)?;
        std::fs::rename(&tmp, &refs_path).map_err(write_err)?;
        Ok(StoredImage {
            reference,
            digest,
            path,
        })
    }

    /// Imports a file under `reference` (`drover image import`).
    pub fn import(&self, file: &Path, reference: &str) -> Result<StoredImage, ImageError> {
        let bytes = std::fs::read(file).map_err(|source| ImageError::Read {
            path: file.display().to_string(),
            source,
        })?;
        if !bytes.starts_with(b"\0asm") {
            return Err(ImageError::NotWasm {
                path: file.display().to_string(),
            });
        }
        self.add(reference, &bytes)
    }

    /// The stored image a reference names, if the store has it. The table is read from disk
    /// each time: `drover image import` may have added to it from another process. A reference
    /// pinned by digest (`name@sha256:...`, the manifest's digest when pulled) is looked up in
    /// the table first, then as a blob digest.
    pub fn resolve(&self, reference: &str) -> Option<StoredImage> {
        let reference = normalize(reference).ok()?;
        let listed = {
            let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(bytes) = std::fs::read(self.dir.join("refs.json")) {
                if let Ok(on_disk) = serde_json::from_slice(&bytes) {
                    *refs = on_disk;
                }
            }
            refs.get(&reference).cloned()
        };
        let digest = match (listed, reference.split_once('@')) {
            (Some(d), _) => d,
            (None, Some((_, d))) => d.to_string(),
            (None, None) => return None,
        };
        if !valid_digest(&digest) {
            return None;
        }
        let path = self.blob_path(&digest);
        path.exists().then_some(StoredImage {
            reference,
            digest,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_images_resolve_by_name_and_digest_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.wasm");
        std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        let img = store.import(&file, "hello").unwrap();
        assert_eq!(img.reference, "hello:latest");
        assert_eq!(store.resolve("hello:latest"), Some(img.clone()));
        assert_eq!(
            store
                .resolve(&format!("hello@{}", img.digest))
                .unwrap()
                .digest,
            img.digest
        );
        assert!(store.resolve("other").is_none());
        let again = ImageStore::open(&dir.path().join("images")).unwrap();
        assert_eq!(again.resolve("hello").unwrap().digest, img.digest);
        std::fs::write(&file, b"not wasm").unwrap();
        assert!(matches!(
            store.import(&file, "bad"),
            Err(ImageError::NotWasm { .. })
        ));
        assert_eq!(normalize("reg:5000/a/b").unwrap(), "reg:5000/a/b:latest");
        // A digest is never a path.
        assert!(store.resolve("x@sha256:../../../etc/passwd").is_none());
        assert!(!valid_digest("sha256:ABC"));
        assert_eq!(normalize("reg:5000/a/b:v1").unwrap(), "reg:5000/a/b:v1");
    }
}
