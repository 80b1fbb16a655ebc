//! Blob bytes on this server's disk: content-addressed files under `blobs/sha256/`, and the
//! upload sessions that fill them (`uploads/`, one file per session).
//!
//! Which repository may read a blob is not decided here: that is the link the store holds
//! (`super::store`). A blob file is only named by its digest once its bytes hash to it, and
//! is synced (file and directory) before the upload is acknowledged.
//!
//! Sessions live in this server's memory: a client continues an upload on the server it
//! began it on (a restarted server forgets its sessions, and clients begin again, as they do
//! when any registry answers BLOB_UPLOAD_UNKNOWN).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::path::{Digest, Repository};
use super::RegistryError;

/// A session unused this long is dropped (its file too) by the next session begun.
const SESSION_IDLE: Duration = Duration::from_secs(3600);

/// What one server holds.
pub struct Blobs {
    dir: PathBuf,
    sessions: Sessions,
    limits: Limits,
}

/// Bounds on what a pusher can make this server hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest blob taken.
    pub max_blob_bytes: u64,
    /// Upload sessions open at once on this server.
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blob_bytes: 8 << 30,
            max_sessions: 256,
        }
    }
}

type Sessions = Arc<Mutex<HashMap<String, Session>>>;

/// An upload in progress.
struct Session {
    repository: Repository,
    /// Bytes received so far (the file's length).
    size: u64,
    /// The running hash of those bytes, so finishing does not read the file again.
    hash: ring::digest::Context,
    used: Instant,
    /// Taken while a request writes to it: a second request at once is refused, not mixed in.
    busy: bool,
}

/// A session lent to one request; given back with [`Blobs::put_back`] or ended by
/// [`Blobs::commit`]. Dropped otherwise (its request cancelled or cut off mid-chunk), it ends
/// the session and removes its file: part of a chunk may have been written.
pub struct Lent {
    pub id: String,
    pub size: u64,
    hash: ring::digest::Context,
    file: PathBuf,
    sessions: Sessions,
    settled: bool,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if !self.settled {
            self.sessions.lock().expect("poisoned").remove(&self.id);
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// A file being written, removed unless [`Part::keep`] is called (a cancelled copy leaves
/// nothing behind).
struct Part(PathBuf, bool);

impl Part {
    fn keep(mut self) -> PathBuf {
        self.1 = true;
        self.0.clone()
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Blobs {
    /// Opens (or makes) the store in `dir`; sessions of an earlier run are dropped.
    pub fn open(dir: &Path, limits: Limits) -> std::io::Result<Blobs> {
        let uploads = dir.join("uploads");
        let _ = std::fs::remove_dir_all(&uploads);
        for d in [dir.to_path_buf(), uploads, dir.join("blobs/sha256")] {
            std::fs::create_dir_all(&d)?;
            set_private(&d)?;
        }
        Ok(Blobs {
            dir: dir.to_path_buf(),
            sessions: Arc::default(),
            limits,
        })
    }

    /// Where blob `d` is, once held.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    fn upload_file(&self, id: &str) -> PathBuf {
        self.dir.join("uploads").join(id)
    }

    /// Begins a session for `repository`: its id, unguessable.
    pub fn begin(&self, repository: &Repository) -> Result<String, RegistryError> {
        let mut sessions = self.sessions.lock().expect("poisoned");
        let stale: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| !s.busy && s.used.elapsed() > SESSION_IDLE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            sessions.remove(&id);
            let _ = std::fs::remove_file(self.upload_file(&id));
        }
        if sessions.len() >= self.limits.max_sessions {
            return Err(RegistryError::TooManyRequests(format!(
                "{} uploads are in progress on this server; try again when one has finished",
                sessions.len()
            )));
        }
        // One namespace may not take every session of the server.
        let per_namespace = (self.limits.max_sessions / 4).max(1);
        let ours = sessions
            .values()
            .filter(|s| s.repository.namespace == repository.namespace)
            .count();
        if ours >= per_namespace {
            return Err(RegistryError::TooManyRequests(format!(
                "namespace {} has {ours} uploads in progress on this server, its limit; finish or \
                 cancel one (DELETE its upload) first",
                repository.namespace
            )));
        }
        let id = new_id();
        create_private(&self.upload_file(&id))
            .map_err(|e| RegistryError::Internal(format!("cannot begin an upload: {e}")))?;
        sessions.insert(
            id.clone(),
            Session {
                repository: repository.clone(),
                size: 0,
                hash: ring::digest::Context::new(&ring::digest::SHA256),
                used: Instant::now(),
                busy: false,
            },
        );
        Ok(id)
    }

    /// The bytes received so far by session `id` of `repository`.
    pub fn progress(&self, repository: &Repository, id: &str) -> Result<u64, RegistryError> {
        let sessions = self.sessions.lock().expect("poisoned");
        match sessions.get(id) {
            Some(s) if &s.repository == repository => Ok(s.size),
            _ => Err(unknown_upload(id)),
        }
    }

    /// Lends session `id` to one request, which may then append to it.
    pub fn lend(&self, repository: &Repository, id: &str) -> Result<Lent, RegistryError> {
        let mut sessions = self.sessions.lock().expect("poisoned");
        let s = match sessions.get_mut(id) {
            Some(s) if &s.repository == repository => s,
            _ => return Err(unknown_upload(id)),
        };
        if s.busy {
            return Err(RegistryError::UploadInvalid(format!(
                "upload {id} is being written by another request; send its chunks one at a time"
            )));
        }
        s.busy = true;
        Ok(Lent {
            id: id.to_string(),
            size: s.size,
            hash: s.hash.clone(),
            file: self.upload_file(id),
            sessions: self.sessions.clone(),
            settled: false,
        })
    }

    /// Gives a session back after a request appended to it.
    pub fn put_back(&self, mut lent: Lent) {
        lent.settled = true;
        let mut sessions = self.sessions.lock().expect("poisoned");
        if let Some(s) = sessions.get_mut(&lent.id) {
            s.size = lent.size;
            s.hash = lent.hash.clone();
            s.used = Instant::now();
            s.busy = false;
        }
    }

    /// Ends a session: its file is dropped unless [`Blobs::commit`] took it.
    pub fn end(&self, id: &str) {
        self.sessions.lock().expect("poisoned").remove(id);
        let _ = std::fs::remove_file(self.upload_file(id));
    }

    /// Appends a chunk of the request body to a lent session, within the size limit.
    pub async fn append(&self, lent: &mut Lent, chunk: &[u8]) -> Result<(), RegistryError> {
        if lent.size + chunk.len() as u64 > self.limits.max_blob_bytes {
            return Err(RegistryError::SizeInvalid(format!(
                "blob is larger than this registry's limit of {} bytes",
                self.limits.max_blob_bytes
            )));
        }
        let path = lent.file.clone();
        let data = chunk.to_vec();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
            f.write_all(&data)
        })
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?
        .map_err(|e| RegistryError::Internal(format!("cannot store the upload: {e}")))?;
        lent.hash.update(chunk);
        lent.size += chunk.len() as u64;
        Ok(())
    }

    /// Finishes a lent session as blob `expected`: the bytes must hash to it. The blob file is
    /// durable when this returns. The session is ended either way but for a digest mismatch
    /// from a request that sent nothing more (the client may still send the rest).
    pub async fn commit(&self, mut lent: Lent, expected: &Digest) -> Result<u64, RegistryError> {
        let got = Digest::from_hash(lent.hash.clone().finish().as_ref());
        if &got != expected {
            let size = lent.size;
            self.put_back(lent);
            return Err(RegistryError::DigestInvalid(format!(
                "the {size} bytes uploaded have digest {got}, not {expected}"
            )));
        }
        let size = lent.size;
        let moved = self.adopt(lent.file.clone(), expected).await;
        self.end(&lent.id);
        lent.settled = true;
        moved?;
        Ok(size)
    }

    /// Names the verified file `from` as blob `digest`, durably (file, then directory).
    async fn adopt(&self, from: PathBuf, digest: &Digest) -> Result<(), RegistryError> {
        let (to, dir) = (self.path(digest), self.dir.join("blobs/sha256"));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if to.exists() {
                // Already held (same digest, same bytes), perhaps by a copy renamed a moment
                // ago and not yet synced: sync it, so this caller's answer is as durable.
                std::fs::remove_file(&from)?;
                std::fs::File::open(&to)?.sync_all()?;
                return std::fs::File::open(&dir)?.sync_all();
            }
            std::fs::File::open(&from)?.sync_all()?;
            std::fs::rename(&from, &to)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?
        .map_err(|e| RegistryError::Internal(format!("cannot store the blob: {e}")))
    }

    /// Stores blob `digest` from a stream of its bytes (another server's copy), checking
    /// the digest and the size limit; the stream's own errors come back as `Unavailable`.
    pub async fn receive<S, E>(&self, digest: &Digest, stream: S) -> Result<u64, RegistryError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>>,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        if let Some(size) = self.has(digest) {
            return Ok(size);
        }
        let part = Part(self.upload_file(&format!("{}.copy", new_id())), false);
        let internal =
            |e: std::io::Error| RegistryError::Internal(format!("cannot store a copy: {e}"));
        let mut file = tokio::fs::File::from_std(create_private(&part.0).map_err(internal)?);
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        let mut stream = std::pin::pin!(stream);
        let written: Result<(), RegistryError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    RegistryError::Unavailable(format!("copying blob {digest}: {e}"))
                })?;
                size += chunk.len() as u64;
                if size > self.limits.max_blob_bytes {
                    return Err(RegistryError::SizeInvalid(format!(
                        "blob {digest} is larger than this registry's limit"
                    )));
                }
                hash.update(&chunk);
                file.write_all(&chunk).await.map_err(internal)?;
            }
            file.flush().await.map_err(internal)?;
            let got = Digest::from_hash(hash.finish().as_ref());
            if &got != digest {
                return Err(RegistryError::DigestInvalid(format!(
                    "the copy of blob {digest} has digest {got}"
                )));
            }
            Ok(())
        }
        .await;
        drop(file);
        written?;
        self.adopt(part.keep(), digest).await?;
        Ok(size)
    }
}

fn unknown_upload(id: &str) -> RegistryError {
    RegistryError::UploadUnknown(format!(
        "no upload {id} for this repository on this server; begin the upload again"
    ))
}

/// 128 random bits, hex: sessions are capabilities within a repository.
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn set_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

pub(crate) fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> Repository {
        Repository::parse(name).unwrap()
    }

    #[tokio::test]
    async fn a_session_is_one_repositorys_and_one_requests_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path(), Limits::default()).unwrap();
        let id = blobs.begin(&repo("a/x")).unwrap();
        assert!(matches!(
            blobs.lend(&repo("b/x"), &id),
            Err(RegistryError::UploadUnknown(_))
        ));
        let mut lent = blobs.lend(&repo("a/x"), &id).unwrap();
        assert!(matches!(
            blobs.lend(&repo("a/x"), &id),
            Err(RegistryError::UploadInvalid(_))
        ));
        blobs.append(&mut lent, b"fo").await.unwrap();
        blobs.put_back(lent);
        assert_eq!(blobs.progress(&repo("a/x"), &id).unwrap(), 2);
        let mut lent = blobs.lend(&repo("a/x"), &id).unwrap();
        blobs.append(&mut lent, b"o").await.unwrap();
        let wrong = Digest::of(b"bar");
        let Err(RegistryError::DigestInvalid(why)) = blobs.commit(lent, &wrong).await else {
            panic!("a wrong digest must be refused");
        };
        assert!(why.contains(Digest::of(b"foo").as_str()), "{why}");
        let lent = blobs.lend(&repo("a/x"), &id).unwrap();
        assert_eq!(blobs.commit(lent, &Digest::of(b"foo")).await.unwrap(), 3);
        assert_eq!(
            std::fs::read(blobs.path(&Digest::of(b"foo"))).unwrap(),
            b"foo"
        );
        assert!(blobs.progress(&repo("a/x"), &id).is_err());
    }

    #[tokio::test]
    async fn a_request_cut_off_mid_chunk_ends_its_session_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path(), Limits::default()).unwrap();
        let id = blobs.begin(&repo("a/x")).unwrap();
        let mut lent = blobs.lend(&repo("a/x"), &id).unwrap();
        blobs.append(&mut lent, b"half a ch").await.unwrap();
        drop(lent); // the handler's future dropped: no put_back, no commit
        assert!(matches!(
            blobs.progress(&repo("a/x"), &id),
            Err(RegistryError::UploadUnknown(_))
        ));
        assert!(!blobs.upload_file(&id).exists());
        // Given back, it goes on.
        let id = blobs.begin(&repo("a/x")).unwrap();
        let lent = blobs.lend(&repo("a/x"), &id).unwrap();
        blobs.put_back(lent);
        assert_eq!(blobs.progress(&repo("a/x"), &id).unwrap(), 0);
    }

    #[tokio::test]
    async fn one_namespace_takes_at_most_a_quarter_of_the_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_blob_bytes: 1 << 20,
            max_sessions: 8,
        };
        let blobs = Blobs::open(dir.path(), limits).unwrap();
        for _ in 0..2 {
            blobs.begin(&repo("greedy/x")).unwrap();
        }
        let Err(RegistryError::TooManyRequests(why)) = blobs.begin(&repo("greedy/y")) else {
            panic!("a third session of one namespace must be refused");
        };
        assert!(why.contains("namespace greedy"), "{why}");
        blobs.begin(&repo("other/x")).unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_copy_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path(), Limits::default()).unwrap();
        let stream = futures_util::stream::iter(vec![
            Ok::<_, String>(bytes::Bytes::from_static(b"abc")),
            Err("the peer went away".to_string()),
        ]);
        let d = Digest::of(b"abc");
        assert!(matches!(
            blobs.receive(&d, stream).await,
            Err(RegistryError::Unavailable(_))
        ));
        let left = std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
        let whole =
            futures_util::stream::iter(vec![Ok::<_, String>(bytes::Bytes::from_static(b"abc"))]);
        assert_eq!(blobs.receive(&d, whole).await.unwrap(), 3);
        assert_eq!(blobs.has(&d), Some(3));
    }

    #[tokio::test]
    async fn limits_bound_sizes_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(
            dir.path(),
            Limits {
                max_blob_bytes: 4,
                max_sessions: 1,
            },
        )
        .unwrap();
        let id = blobs.begin(&repo("a/x")).unwrap();
        assert!(matches!(
            blobs.begin(&repo("a/x")),
            Err(RegistryError::TooManyRequests(_))
        ));
        let mut lent = blobs.lend(&repo("a/x"), &id).unwrap();
        assert!(matches!(
            blobs.append(&mut lent, b"12345").await,
            Err(RegistryError::SizeInvalid(_))
        ));
    }
}
