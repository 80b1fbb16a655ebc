//! Encryption at rest: Secrets (and the cluster's CA key and admin token) are sealed with
//! AES-256-GCM before they reach the store, so neither the store's files nor its peer traffic
//! hold them in plaintext, as kube-apiserver's `aesgcm` EncryptionConfiguration provider does.
//!
//! Sealed values are `k8s:enc:aesgcm:v1:drover:` + a random 96-bit nonce + ciphertext and tag;
//! the key's store path is the associated data, so a sealed value cannot be moved to another
//! key. A value under a sealed prefix without the marker is refused on read (tamper evidence:
//! only a writer around the API server could have put it there).
//! The key is a file each member holds (`DATA_DIR/encryption.key`, 32 random bytes in base64):
//! the first member makes it, and a server joining with a join token receives it over TLS from
//! the member it joins through (`join`) — the key never travels through the store.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use raft_store::{KeyValue, Op, Txn};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const MARKER: &[u8] = b"k8s:enc:aesgcm:v1:drover:";

/// The store keys whose values are sealed.
const SEALED_PREFIXES: &[&str] = &["/registry/core/secrets/", "/drover/pki/"];

pub struct SecretBox {
    key: LessSafeKey,
    /// The key itself, for handing to a server that joins with a join token.
    raw: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the encryption key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the encryption key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the encryption key {path} is not 32 bytes in base64")]
    Malformed { path: String },
    #[error(
        "{path} is missing: this member joins an existing cluster, whose Secrets are encrypted; \
         join with --token-file (the key comes with it), or copy encryption.key from the data dir \
         of a running member to {path}"
    )]
    MissingForJoin { path: String },
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key")),
            raw: *key,
        }
    }

    /// The key as its file holds it (base64), for a server that joins the cluster.
    pub fn key_file_text(&self) -> String {
        STANDARD.encode(self.raw)
    }

    /// Keeps a key received from the cluster (`key_file_text` of a member) in `path` (0600).
    pub fn install(path: &Path, text: &str) -> Result<SecretBox, KeyFileError> {
        let shown = path.display().to_string();
        let bytes = STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(KeyFileError::Malformed {
                path: shown.clone(),
            })?;
        // Atomically: a crash leaves no key file or the whole key, never a cut one.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, text.trim())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| KeyFileError::Write {
                path: shown,
                source,
            })?;
        Ok(SecretBox::new(&bytes))
    }

    /// Reads the key file; makes a new key when it is missing and `may_create` (the first member
    /// of a new cluster).
    pub fn load_or_create(path: &Path, may_create: bool) -> Result<SecretBox, KeyFileError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(KeyFileError::Malformed { path: shown })?;
                Ok(SecretBox::new(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !may_create {
                    return Err(KeyFileError::MissingForJoin { path: shown });
                }
                let key: [u8; 32] = rand::random();
                write_private(path, &STANDARD.encode(key)).map_err(|source| {
                    KeyFileError::Write {
                        path: shown,
                        source,
                    }
                })?;
                Ok(SecretBox::new(&key))
            }
            Err(source) => Err(KeyFileError::Read {
                path: shown,
                source,
            }),
        }
    }

    fn sealed_key(key: &[u8]) -> bool {
        SEALED_PREFIXES
            .iter()
            .any(|p| key.starts_with(p.as_bytes()))
    }

    /// The value to store under `key`: sealed if the key is one of the sensitive ones.
    pub fn seal(&self, key: &[u8], value: Vec<u8>) -> Vec<u8> {
        if !Self::sealed_key(key) {
            return value;
        }
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut in_out = value;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(key),
                &mut in_out,
            )
            .expect("AES-GCM sealing of an in-memory buffer");
        let mut out = Vec::with_capacity(MARKER.len() + NONCE_LEN + in_out.len());
        out.extend_from_slice(MARKER);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&in_out);
        out
    }

    /// The plaintext of a stored value. A value under a sealed prefix that is not sealed was
    /// not written by an API server (every write there is sealed): it is refused, not served.
    pub fn open(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
        let Some(rest) = stored.strip_prefix(MARKER) else {
            if Self::sealed_key(key) {
                return Err(format!(
                    "{} is not sealed, so it was not written by an API server: refused",
                    String::from_utf8_lossy(key)
                ));
            }
            return Ok(stored.to_vec());
        };
        if rest.len() < NONCE_LEN {
            return Err("the sealed value is truncated".into());
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key), &mut buf)
            .map_err(|_| {
                format!(
                    "cannot decrypt {}: this member's encryption.key is not the one it was written with",
                    String::from_utf8_lossy(key)
                )
            })?;
        Ok(plain.to_vec())
    }

    /// Opens a key-value read from the store in place; a value that cannot be opened is
    /// logged and left empty (its readers then see an empty object, never ciphertext).
    pub fn open_kv(&self, kv: &mut KeyValue) {
        if !kv.value.starts_with(MARKER) && !Self::sealed_key(&kv.key) {
            return;
        }
        match self.open(&kv.key, &kv.value) {
            Ok(plain) => kv.value = plain,
            Err(e) => {
                tracing::error!("{e}");
                kv.value.clear();
            }
        }
    }

    /// The transaction with every put to a sensitive key sealed.
    pub fn seal_txn(&self, mut txn: Txn) -> Txn {
        for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
            if let Op::Put { key, value } = op {
                if Self::sealed_key(key) {
                    *value = self.seal(key, std::mem::take(value));
                }
            }
        }
        txn
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sealed_and_other_objects_are_not() {
        let b = SecretBox::new(&[7; 32]);
        let key = b"/registry/core/secrets/default/s";
        let sealed = b.seal(key, b"{\"data\":\"hunter2\"}".to_vec());
        assert!(sealed.starts_with(MARKER));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.open(key, &sealed).unwrap(), b"{\"data\":\"hunter2\"}");
        // Bound to its key, and to its key file.
        assert!(b
            .open(b"/registry/core/secrets/default/t", &sealed)
            .is_err());
        assert!(SecretBox::new(&[8; 32]).open(key, &sealed).is_err());
        let cm = b"/registry/core/configmaps/default/c";
        assert_eq!(b.seal(cm, b"plain".to_vec()), b"plain");
        assert_eq!(b.open(cm, b"plain").unwrap(), b"plain");
        // A plaintext value where a sealed one belongs was planted around the API server.
        let planted = b"{\"data\":{\"token\":\"bWluZQ==\"}}";
        assert!(b.open(key, planted).unwrap_err().contains("not sealed"));
        let mut kv = KeyValue {
            key: key.to_vec(),
            value: planted.to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
        };
        b.open_kv(&mut kv);
        assert!(kv.value.is_empty(), "a planted value is never served");
    }

    #[test]
    fn the_key_file_is_made_once_and_required_for_a_join() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encryption.key");
        assert!(matches!(
            SecretBox::load_or_create(&path, false),
            Err(KeyFileError::MissingForJoin { .. })
        ));
        let first = SecretBox::load_or_create(&path, true).unwrap();
        let again = SecretBox::load_or_create(&path, false).unwrap();
        let key = b"/registry/core/secrets/a/b";
        assert_eq!(
            again.open(key, &first.seal(key, b"x".to_vec())).unwrap(),
            b"x"
        );
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(
            SecretBox::load_or_create(&path, true),
            Err(KeyFileError::Malformed { .. })
        ));
    }
}
