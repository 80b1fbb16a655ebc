//! The node's image store: Wasm binaries and OCI container images, content-addressed.
//!
//! ```text
//! images/
//!   blobs/sha256/<hex>     Wasm binaries; OCI manifests, configs and layer blobs as pulled
//!   layers/sha256/<hex>/   a layer blob unpacked for overlayfs, named by the blob's digest
//!   tmp/                   downloads and unpacks under way (unique names), renamed into place
//!   refs.json              reference (`name:tag`, `name@sha256:…`) → image digest
//!   lock, refs.lock        advisory locks (below)
//! ```
//!
//! An image is known by one digest: a Wasm image by its binary's, an OCI image by its
//! manifest's (the image ID pods show). What an image is, is read from its blob: `\0asm` is
//! Wasm, anything else a manifest. Blobs and unpacked layers are shared between images and
//! written once, through `tmp/` and a rename, so whatever has its final name is complete.
//! `drover image import` puts files straight in, pulls ([`crate::registry`]) land here too.
//!
//! The last use of an image is the modification time of its blob, set by [`ImageStore::resolve`];
//! [`ImageStore::gc`] removes the least recently used images first.
//!
//! Several processes may use one store (the node agent, `drover image`). Writers (pulls,
//! imports) hold `lock` shared for as long as they write; deleting content that no reference
//! names (the sweep in [`ImageStore::gc`]) takes it exclusively and only when no writer holds
//! it, so it never deletes a blob that a pull has fetched and not named yet. `refs.json` is
//! replaced atomically under `refs.lock`.
//!
//! Length: one store with one on-disk layout (blobs, manifests, unpacked layers, gc), whose
//! invariants (digests checked, everything renamed into place, gc never under a pod) are kept
//! in one file; the registry client (`registry`) and layer unpacking (`layers`) are apart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageConfiguration, ImageIndex, ImageManifest,
    ImageManifestBuilder, MediaType,
};
use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};

use crate::layers;

pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// An image in the store: what a container runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    /// The reference as the pod names it, normalised (`name:tag`).
    pub reference: String,
    /// `sha256:<hex>` of the Wasm binary, or of an OCI image's manifest (its image ID).
    pub digest: String,
    /// The Wasm binary, or an OCI image's manifest blob.
    pub path: PathBuf,
    pub kind: ImageKind,
}

/// What an image holds: a Wasm binary, or a Linux container's filesystem layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Wasm,
    Oci(OciImage),
}

/// A container image in the store, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciImage {
    pub config: ImageRunConfig,
    /// The unpacked layer directories, bottom (first) layer first.
    pub layers: Vec<PathBuf>,
}

/// The parts of an image's config that say how it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// One image of [`ImageStore::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// Every reference that names the image, sorted.
    pub references: Vec<String>,
    pub digest: String,
    /// Bytes on disk: its blobs and unpacked layers (a layer shared with other images counts
    /// in each of them).
    pub size_bytes: u64,
    pub kind: ImageKind,
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
    #[error(
        "{path} is not a WebAssembly module or component (it does not start with \\0asm){also}"
    )]
    NotWasm { path: String, also: &'static str },
    #[error("invalid image reference {0:?}")]
    BadReference(String),
    #[error("digest mismatch: {what} should be {expected} but is {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("cannot unpack layer {digest}: {source}")]
    Layer {
        digest: String,
        source: std::io::Error,
    },
    /// The image's content is not what an image should be (a manifest, config, layout...).
    #[error("{0}")]
    Invalid(String),
    /// No variant of the image runs on this node.
    #[error("{0}")]
    Platform(String),
}

const WASM_MAGIC: &[u8] = b"\0asm";
/// Manifests and indexes as registries and layouts serve them: OCI's and Docker's.
pub(crate) const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
pub(crate) const INDEX_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

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
    hex_digest(Sha256::digest(bytes))
}

fn hex_digest(hash: impl AsRef<[u8]>) -> String {
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The node's CPU architecture as OCI platforms name it (`amd64`, `arm64`, ...).
pub fn node_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other, // arm, riscv64, s390x, mips64 are spelled alike
    }
}

/// The entry of an image index that runs on this node: `linux` and the node's architecture,
/// or (for Wasm images published in an index) the `wasm` architecture. An index whose one
/// entry names no platform is taken as meaning that entry. `what` names the image in errors.
pub(crate) fn select_platform<'a>(
    index: &'a ImageIndex,
    what: &str,
) -> Result<&'a Descriptor, ImageError> {
    let arch = node_architecture();
    let platform_of = |d: &Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| (p.os().to_string(), p.architecture().to_string()))
    };
    let manifests = index.manifests();
    if let Some(found) = manifests
        .iter()
        .find(|d| platform_of(d).is_some_and(|(os, a)| os == "linux" && a == arch))
        .or_else(|| {
            manifests
                .iter()
                .find(|d| platform_of(d).is_some_and(|(_, a)| a == "wasm"))
        })
    {
        return Ok(found);
    }
    if let [only] = manifests.as_slice() {
        if only.platform().is_none() {
            return Ok(only);
        }
    }
    let available: Vec<String> = manifests
        .iter()
        .map(|d| match d.platform() {
            Some(p) => match p.variant() {
                Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                None => format!("{}/{}", p.os(), p.architecture()),
            },
            None => "(no platform)".into(),
        })
        .collect();
    Err(ImageError::Platform(format!(
        "image {what} has no variant for this node's platform linux/{arch}; it has {}",
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        }
    )))
}

/// A manifest's bytes, read as an image index or a single image's manifest.
pub(crate) enum ManifestOrIndex {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

pub(crate) fn parse_manifest(bytes: &[u8], what: &str) -> Result<ManifestOrIndex, ImageError> {
    let invalid = |e: &dyn std::fmt::Display| {
        ImageError::Invalid(format!("the manifest of {what} cannot be read: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(&e))?;
    if value.get("manifests").is_some() {
        Ok(ManifestOrIndex::Index(Box::new(
            ImageIndex::from_reader(bytes).map_err(|e| invalid(&e))?,
        )))
    } else {
        Ok(ManifestOrIndex::Manifest(Box::new(
            ImageManifest::from_reader(bytes).map_err(|e| invalid(&e))?,
        )))
    }
}

/// Checks what an OCI image's manifest names before any of it is fetched: sha256 digests
/// (they become paths) and layers this store can unpack.
pub(crate) fn check_oci_manifest(manifest: &ImageManifest, what: &str) -> Result<(), ImageError> {
    let digest = manifest.config().digest().to_string();
    if !valid_digest(&digest) {
        return Err(ImageError::Invalid(format!(
            "image {what}: unsupported config digest {digest:?} (only sha256 is)"
        )));
    }
    for layer in manifest.layers() {
        let digest = layer.digest().to_string();
        if !valid_digest(&digest) {
            return Err(ImageError::Invalid(format!(
                "image {what}: unsupported layer digest {digest:?} (only sha256 is)"
            )));
        }
        let media_type = layer.media_type().to_string();
        if !layers::is_layer_media_type(&media_type) {
            return Err(ImageError::Invalid(format!(
                "image {what}: layer {digest} has media type {media_type}, which is not a \
                 filesystem layer (expected a tar, tar+gzip or tar+zstd layer)"
            )));
        }
    }
    Ok(())
}

/// An advisory lock (flock) on a file of the store, released when dropped.
pub(crate) struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    fn acquire(path: &Path, operation: FlockOperation) -> io::Result<FileLock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        loop {
            match rustix::fs::flock(&file, operation) {
                Ok(()) => return Ok(FileLock(file)),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The store on disk; cheap to clone (it is its directory).
#[derive(Clone, Debug)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        for sub in ["blobs/sha256", "layers/sha256", "tmp"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| ImageError::Write {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(ImageStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_err(&self, path: &Path) -> impl Fn(io::Error) -> ImageError {
        let path = path.display().to_string();
        move |source| ImageError::Write {
            path: path.clone(),
            source,
        }
    }

    /// Where the blob `digest` (already checked with [`valid_digest`]) lives.
    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Where the layer blob `digest` is unpacked.
    pub(crate) fn layer_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join("layers/sha256").join(hex)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        valid_digest(digest) && self.blob_path(digest).is_file()
    }

    /// Held (shared) while writing blobs and references: no sweep deletes anything meanwhile.
    /// Blocks while a sweep runs (briefly).
    pub(crate) fn writing(&self) -> Result<FileLock, ImageError> {
        let path = self.dir.join("lock");
        FileLock::acquire(&path, FlockOperation::LockShared).map_err(self.write_err(&path))
    }

    /// A new temporary file in the store, removed when dropped unless renamed into place.
    pub(crate) fn temp_file(&self) -> Result<tempfile::NamedTempFile, ImageError> {
        let tmp = self.tmp_dir();
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(self.write_err(&tmp))
    }

    /// Gives a complete, verified temporary file its name as the blob `digest`.
    pub(crate) fn commit_blob(
        &self,
        file: tempfile::NamedTempFile,
        digest: &str,
    ) -> Result<PathBuf, ImageError> {
        let path = self.blob_path(digest);
        let write_err = self.write_err(&path);
        // On disk before it has its name: a blob is never named and empty after a crash.
        file.as_file().sync_all().map_err(&write_err)?;
        // Renaming over an identical blob that a concurrent pull stored first is harmless.
        file.persist(&path).map_err(|e| write_err(e.error))?;
        Ok(path)
    }

    /// Copies `content` into the store as a blob, checked against `expected` if given;
    /// returns its digest and size. `what` names it in errors.
    pub(crate) fn copy_blob(
        &self,
        mut content: impl Read,
        expected: Option<&str>,
        what: &str,
    ) -> Result<(String, u64), ImageError> {
        let mut file = self.temp_file()?;
        let tmp = self.tmp_dir();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ImageError::Read {
                        path: what.to_string(),
                        source,
                    })
                }
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(self.write_err(&tmp))?;
            size += n as u64;
        }
        let digest = hex_digest(hasher.finalize());
        if let Some(expected) = expected {
            if digest != expected {
                return Err(ImageError::DigestMismatch {
                    what: what.to_string(),
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        self.commit_blob(file, &digest)?;
        Ok((digest, size))
    }

    /// The references (normalised) the store holds `digest` under.
    pub fn names_of(&self, digest: &str) -> Vec<String> {
        self.read_refs()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, d)| d == digest)
            .map(|(name, _)| name)
            .collect()
    }

    fn read_refs(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.dir.join("refs.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::Invalid(format!(
                    "the reference table {} is corrupt: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(ImageError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Changes the reference table: read, changed and replaced under `refs.lock`, so another
    /// process's change in between is never lost.
    fn update_refs(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<(), ImageError> {
        let lock_path = self.dir.join("refs.lock");
        let _lock = FileLock::acquire(&lock_path, FlockOperation::LockExclusive)
            .map_err(self.write_err(&lock_path))?;
        let mut refs = self.read_refs()?;
        change(&mut refs);
        let path = self.dir.join("refs.json");
        let table = serde_json::to_vec_pretty(&refs).expect("a string map serialises");
        let tmp = path.with_extension("json.tmp"); // one writer at a time, under the lock
        std::fs::write(&tmp, table).map_err(self.write_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(self.write_err(&path))
    }

    /// Stores a Wasm binary under `reference`; returns what was stored.
    pub fn add(&self, reference: &str, bytes: &[u8]) -> Result<StoredImage, ImageError> {
        let reference = normalize(reference)?;
        if !bytes.starts_with(WASM_MAGIC) {
            return Err(ImageError::NotWasm {
                path: reference.clone(),
                also: "",
            });
        }
        let _writing = self.writing()?;
        let digest = sha256_digest(bytes);
        if !self.has_blob(&digest) {
            self.copy_blob(bytes, Some(&digest), &reference)?;
        }
        self.tag(&reference, &digest)
    }

    /// Names the stored image `digest` (its blobs and layers all in the store) `reference`.
    pub(crate) fn tag(&self, reference: &str, digest: &str) -> Result<StoredImage, ImageError> {
        let reference = normalize(reference)?;
        // Loaded first: a reference never names an image that cannot be used.
        let image = self
            .load(&reference, digest)?
            .ok_or_else(|| ImageError::Invalid(format!("image {digest} is not in the store")))?;
        self.update_refs(|refs| {
            refs.insert(reference.clone(), digest.to_string());
        })?;
        Ok(image)
    }

    /// Unpacks a layer whose blob is in the store, once: a layer already unpacked is kept.
    pub(crate) fn unpack_layer(&self, layer: &Descriptor) -> Result<PathBuf, ImageError> {
        let digest = layer.digest().to_string();
        let dest = self.layer_path(&digest);
        layers::unpack_layer(&self.blob_path(&digest), &dest, &self.tmp_dir())
            .map_err(|source| ImageError::Layer { digest, source })?;
        Ok(dest)
    }

    /// Imports `file` under `reference` (`drover image import`): a .wasm file; an OCI image
    /// layout (a directory with `oci-layout` and `index.json`, or a tar of one); or a
    /// `docker save` tarball (`manifest.json` and layer tars). A tar may be gzipped.
    pub fn import(&self, file: &Path, reference: &str) -> Result<StoredImage, ImageError> {
        let reference = normalize(reference)?;
        let read_err = |source| ImageError::Read {
            path: file.display().to_string(),
            source,
        };
        if std::fs::metadata(file).map_err(read_err)?.is_dir() {
            let _writing = self.writing()?;
            return self.import_dir(file, &reference, &file.display().to_string());
        }
        let mut head = Vec::with_capacity(512);
        File::open(file)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .map_err(read_err)?;
        if head.starts_with(WASM_MAGIC) {
            let bytes = std::fs::read(file).map_err(read_err)?;
            return self.add(&reference, &bytes);
        }
        let is_tar = head.get(257..262) == Some(b"ustar");
        let is_gzip = head.starts_with(&[0x1f, 0x8b]);
        if !is_tar && !is_gzip {
            return Err(ImageError::NotWasm {
                path: file.display().to_string(),
                also: ", nor an OCI image layout or `docker save` tarball",
            });
        }
        let _writing = self.writing()?;
        // Unpacked whole into tmp/ (removed on drop): a layout's parts are found by name.
        let extracted = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.tmp_dir())
            .map_err(self.write_err(&self.tmp_dir()))?;
        let content =
            layers::decompressed(File::open(file).map_err(read_err)?).map_err(read_err)?;
        tar::Archive::new(content)
            .unpack(extracted.path())
            .map_err(|e| {
                ImageError::Invalid(format!("{} is not a valid tar: {e}", file.display()))
            })?;
        self.import_dir(extracted.path(), &reference, &file.display().to_string())
    }

    /// Imports the image in `dir`, an OCI layout or a `docker save` export; `what` names
    /// what the user gave in errors.
    fn import_dir(
        &self,
        dir: &Path,
        reference: &str,
        what: &str,
    ) -> Result<StoredImage, ImageError> {
        if dir.join("index.json").is_file() {
            self.import_oci_layout(dir, reference, what)
        } else if dir.join("manifest.json").is_file() {
            self.import_docker_save(dir, reference, what)
        } else {
            Err(ImageError::Invalid(format!(
                "{what} is neither an OCI image layout (no index.json) nor a `docker save` \
                 export (no manifest.json)"
            )))
        }
    }

    /// An OCI image layout: `index.json` names the image (by `org.opencontainers.image.ref.name`
    /// when it holds several), blobs are in `blobs/sha256/`.
    fn import_oci_layout(
        &self,
        dir: &Path,
        reference: &str,
        what: &str,
    ) -> Result<StoredImage, ImageError> {
        let layout_blob = |digest: &str| -> Result<File, ImageError> {
            if !valid_digest(digest) {
                return Err(ImageError::Invalid(format!(
                    "{what}: unsupported digest {digest:?} (only sha256 is)"
                )));
            }
            let hex = digest.trim_start_matches("sha256:");
            open_inside(dir, &format!("blobs/sha256/{hex}"), what)
        };
        let read = |digest: &str| -> Result<Vec<u8>, ImageError> {
            let mut bytes = Vec::new();
            layout_blob(digest)?
                .read_to_end(&mut bytes)
                .map_err(|source| ImageError::Read {
                    path: format!("{digest} in {what}"),
                    source,
                })?;
            Ok(bytes)
        };
        let index = ImageIndex::from_reader(open_inside(dir, "index.json", what)?)
            .map_err(|e| ImageError::Invalid(format!("{what}: index.json cannot be read: {e}")))?;
        let mut descriptor = pick_layout_image(&index, reference, what)?;
        // Follow nested indexes (multi-platform images) down to one image's manifest.
        let mut manifest = None;
        for _ in 0..4 {
            let digest = descriptor.digest().to_string();
            let bytes = read(&digest)?;
            if sha256_digest(&bytes) != digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest {digest} in {what}"),
                    expected: digest,
                    actual: sha256_digest(&bytes),
                });
            }
            match parse_manifest(&bytes, what)? {
                ManifestOrIndex::Index(index) => {
                    descriptor = select_platform(&index, what)?.clone()
                }
                ManifestOrIndex::Manifest(m) => {
                    manifest = Some((*m, bytes));
                    break;
                }
            }
        }
        let Some((manifest, manifest_bytes)) = manifest else {
            return Err(ImageError::Invalid(format!(
                "{what}: image indexes nest too deep"
            )));
        };
        if manifest.config().media_type().to_string() == WASM_CONFIG {
            // A Wasm image in the CNCF layout: its one layer is the binary.
            let [layer] = manifest.layers().as_slice() else {
                return Err(ImageError::Invalid(format!(
                    "{what}: a Wasm image has exactly one layer"
                )));
            };
            let bytes = read(layer.digest().as_ref())?;
            return self.add(reference, &bytes);
        }
        check_oci_manifest(&manifest, what)?;
        for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let digest = blob.digest().to_string();
            if self.has_blob(&digest) {
                continue;
            }
            let file = layout_blob(&digest)?;
            self.copy_blob(file, Some(&digest), &format!("blob {digest} in {what}"))?;
        }
        self.finish_import(&manifest, &manifest_bytes, reference)
    }

    /// A `docker save` tarball, unpacked: `manifest.json` lists images as config and layer
    /// files; the manifest a registry would have is made from them.
    fn import_docker_save(
        &self,
        dir: &Path,
        reference: &str,
        what: &str,
    ) -> Result<StoredImage, ImageError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct SavedImage {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let saved: Vec<SavedImage> =
            serde_json::from_reader(BufReader::new(open_inside(dir, "manifest.json", what)?))
                .map_err(|e| {
                    ImageError::Invalid(format!("{what}: manifest.json cannot be read: {e}"))
                })?;
        let image = match saved.as_slice() {
            [] => {
                return Err(ImageError::Invalid(format!(
                    "{what}: manifest.json lists no image"
                )))
            }
            [only] => only,
            several => several
                .iter()
                .find(|s| {
                    s.repo_tags.iter().flatten().any(|tag| {
                        normalize(tag)
                            .is_ok_and(|t| t == reference || reference.ends_with(&format!("/{t}")))
                    })
                })
                .ok_or_else(|| {
                    let tags: Vec<&str> = several
                        .iter()
                        .flat_map(|s| s.repo_tags.iter().flatten().map(String::as_str))
                        .collect();
                    ImageError::Invalid(format!(
                        "{what} holds several images and none is tagged {reference}; it has {}",
                        tags.join(", ")
                    ))
                })?,
        };
        let copy = |name: &str| -> Result<(String, u64), ImageError> {
            let file = open_inside(dir, name, what)?;
            self.copy_blob(file, None, &format!("{name} in {what}"))
        };
        let descriptor = |media_type: &str, (digest, size): (String, u64)| {
            DescriptorBuilder::default()
                .media_type(MediaType::from(media_type))
                .digest(
                    oci_spec::image::Digest::try_from(digest.as_str())
                        .expect("a digest this store computed parses"),
                )
                .size(size)
                .build()
                .expect("every required field is set")
        };
        let config = descriptor(DOCKER_CONFIG, copy(&image.config)?);
        let mut layer_descriptors = Vec::new();
        for name in &image.layers {
            let (digest, size) = copy(name)?;
            let media_type = match layers::Compression::of(&self.blob_path(&digest)) {
                Ok(layers::Compression::Gzip) => DOCKER_LAYER_GZIP,
                Ok(layers::Compression::Zstd) => OCI_LAYER_ZSTD,
                _ => DOCKER_LAYER,
            };
            layer_descriptors.push(descriptor(media_type, (digest, size)));
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::from(DOCKER_MANIFEST))
            .config(config)
            .layers(layer_descriptors)
            .build()
            .expect("every required field is set");
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
        self.finish_import(&manifest, &bytes, reference)
    }

    /// The last steps of an import, its blobs all in: the manifest stored, the layers
    /// unpacked, the reference named.
    fn finish_import(
        &self,
        manifest: &ImageManifest,
        manifest_bytes: &[u8],
        reference: &str,
    ) -> Result<StoredImage, ImageError> {
        let (digest, _) = self.copy_blob(manifest_bytes, None, "the manifest")?;
        read_run_config(
            &self.blob_path(manifest.config().digest().as_ref()),
            reference,
        )?;
        for layer in manifest.layers() {
            self.unpack_layer(layer)?;
        }
        self.tag(reference, &digest)
    }

    /// The stored image a reference names, if the store has it (a missing or damaged image
    /// is None, so that it is pulled again). The table is read from disk each time:
    /// `drover image import` may have added to it from another process. A reference
    /// pinned by digest (`name@sha256:...`, the manifest's digest when pulled) is looked up in
    /// the table first, then as a blob digest. Marks the image used now.
    pub fn resolve(&self, reference: &str) -> Option<StoredImage> {
        let reference = normalize(reference).ok()?;
        let listed = self
            .read_refs()
            .unwrap_or_default()
            .get(&reference)
            .cloned();
        let digest = match (listed, reference.split_once('@')) {
            (Some(d), _) => d,
            (None, Some((_, d))) => d.to_string(),
            (None, None) => return None,
        };
        if !valid_digest(&digest) {
            return None;
        }
        let image = match self.load(&reference, &digest) {
            Ok(image) => image?,
            Err(e) => {
                tracing::warn!("the stored image {reference} ({digest}) is unusable: {e}");
                return None;
            }
        };
        // The last use, for gc. Best effort: a store on a read-only disk still resolves.
        let _ = File::open(&image.path).and_then(|f| f.set_modified(SystemTime::now()));
        Some(image)
    }

    /// The image `digest` as stored: None if its blob is absent; an error if it is damaged.
    fn load(&self, reference: &str, digest: &str) -> Result<Option<StoredImage>, ImageError> {
        let path = self.blob_path(digest);
        let mut head = [0u8; 4];
        match File::open(&path).and_then(|mut f| f.read_exact(&mut head)) {
            Ok(()) if head == WASM_MAGIC => {
                return Ok(Some(StoredImage {
                    reference: reference.to_string(),
                    digest: digest.to_string(),
                    path,
                    kind: ImageKind::Wasm,
                }))
            }
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {} // shorter than 4 bytes: not Wasm; the manifest parse says what it is
        }
        let manifest = self.read_image_manifest(digest)?;
        let config = read_run_config(
            &self.blob_path(manifest.config().digest().as_ref()),
            reference,
        )?;
        let mut layers = Vec::new();
        for layer in manifest.layers() {
            let dir = self.layer_path(layer.digest().as_ref());
            if !dir.is_dir() {
                return Err(ImageError::Invalid(format!(
                    "layer {} is not unpacked",
                    layer.digest()
                )));
            }
            layers.push(dir);
        }
        Ok(Some(StoredImage {
            reference: reference.to_string(),
            digest: digest.to_string(),
            path,
            kind: ImageKind::Oci(OciImage { config, layers }),
        }))
    }

    /// The stored manifest `digest` of an OCI image, checked.
    fn read_image_manifest(&self, digest: &str) -> Result<ImageManifest, ImageError> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|source| ImageError::Read {
            path: path.display().to_string(),
            source,
        })?;
        match parse_manifest(&bytes, digest)? {
            ManifestOrIndex::Manifest(manifest) => {
                check_oci_manifest(&manifest, digest)?;
                Ok(*manifest)
            }
            ManifestOrIndex::Index(_) => Err(ImageError::Invalid(format!(
                "{digest} is an image index, not an image"
            ))),
        }
    }

    /// The files and directories image `digest` consists of (just its blob if it is Wasm or
    /// its manifest cannot be read).
    fn content_of(&self, digest: &str) -> Vec<PathBuf> {
        let mut content = vec![self.blob_path(digest)];
        if let Ok(manifest) = self.read_image_manifest(digest) {
            content.push(self.blob_path(manifest.config().digest().as_ref()));
            for layer in manifest.layers() {
                let digest = layer.digest().to_string();
                content.push(self.blob_path(&digest));
                content.push(self.layer_path(&digest));
            }
        }
        content
    }

    /// Every image in the store with the references that name it.
    pub fn list(&self) -> Vec<ImageSummary> {
        let mut references: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (reference, digest) in self.read_refs().unwrap_or_default() {
            references.entry(digest).or_default().push(reference);
        }
        let mut images = Vec::new();
        for (digest, mut refs) in references {
            let Some(first) = refs.first() else { continue };
            let kind = match self.load(first, &digest) {
                Ok(Some(image)) => image.kind,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("the stored image {first} ({digest}) is unusable: {e}");
                    continue;
                }
            };
            refs.sort();
            let size_bytes = self
                .content_of(&digest)
                .iter()
                .map(|p| layers::disk_usage(p))
                .sum();
            images.push(ImageSummary {
                references: refs,
                digest,
                size_bytes,
                kind,
            });
        }
        images
    }

    /// Removes a reference (or, given an image digest, every reference to that image). The
    /// image's blobs and layers stay until [`ImageStore::gc`] finds nothing names them and
    /// no container uses them. Returns whether anything was removed.
    pub fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let by_digest = valid_digest(reference);
        let reference = if by_digest {
            reference.to_string()
        } else {
            normalize(reference)?
        };
        let mut removed = false;
        self.update_refs(|refs| {
            let before = refs.len();
            if by_digest {
                refs.retain(|_, digest| *digest != reference);
            } else {
                refs.remove(&reference);
            }
            removed = refs.len() != before;
        })?;
        Ok(removed)
    }

    /// Bytes the store takes on disk.
    pub fn disk_usage(&self) -> u64 {
        layers::disk_usage(&self.dir)
    }

    /// Frees disk space. First deletes the blobs and layers that no reference names and no
    /// image in `in_use` (digests of images that containers run) needs, and unfinished
    /// downloads; then, if the store still takes more than `high_water_bytes`, removes the
    /// least recently used images that are not in use until it takes `low_water_bytes` or
    /// less, and deletes their content. Returns how many images were removed.
    ///
    /// Skipped (returns 0) while a pull or import is writing to the store; the next call
    /// does it.
    pub fn gc(
        &self,
        in_use: &HashSet<String>,
        high_water_bytes: u64,
        low_water_bytes: u64,
    ) -> usize {
        let Ok(_sweeping) = FileLock::acquire(
            &self.dir.join("lock"),
            FlockOperation::NonBlockingLockExclusive,
        ) else {
            return 0;
        };
        if !self.sweep(in_use) {
            return 0;
        }
        let mut usage = self.disk_usage();
        if usage <= high_water_bytes {
            return 0;
        }
        let Ok(refs) = self.read_refs() else { return 0 };
        let digests: HashSet<&String> = refs.values().collect();
        let content: HashMap<&String, Vec<PathBuf>> =
            digests.iter().map(|d| (*d, self.content_of(d))).collect();
        let mut users: HashMap<&PathBuf, usize> = HashMap::new();
        for path in content.values().flatten() {
            *users.entry(path).or_default() += 1;
        }
        let last_used = |digest: &str| {
            std::fs::metadata(self.blob_path(digest))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        // Like the kubelet's imageMinimumGCAge: an image used (pulled, imported, resolved)
        // within the last two minutes stays, so an import is never swept before its pod starts.
        let recent = SystemTime::now() - std::time::Duration::from_secs(120);
        let mut candidates: Vec<(SystemTime, &String)> = digests
            .iter()
            .filter(|d| !in_use.contains(d.as_str()) && last_used(d) < recent)
            .map(|d| (last_used(d), *d))
            .collect();
        candidates.sort();
        let mut removed = 0;
        for (_, digest) in candidates {
            if usage <= low_water_bytes {
                break;
            }
            if let Err(e) = self.update_refs(|refs| refs.retain(|_, d| d != digest)) {
                tracing::warn!("image gc stopped: {e}");
                break;
            }
            tracing::info!("image gc: removed {digest}");
            removed += 1;
            for path in &content[digest] {
                let count = users.get_mut(path).expect("counted above");
                *count -= 1;
                if *count == 0 {
                    usage = usage.saturating_sub(layers::disk_usage(path));
                }
            }
        }
        if removed > 0 {
            self.sweep(in_use);
        }
        removed
    }

    /// Deletes the blobs and layers no reference names and no image in `in_use` needs, and
    /// everything in tmp/. Only under the exclusive lock: no writer is at work. Returns false
    /// (and deletes nothing) if the reference table cannot be read.
    fn sweep(&self, in_use: &HashSet<String>) -> bool {
        let Ok(refs) = self.read_refs() else {
            return false;
        };
        let keep: HashSet<PathBuf> = refs
            .values()
            .chain(in_use)
            .filter(|d| valid_digest(d))
            .flat_map(|d| self.content_of(d))
            .collect();
        for sub in ["blobs/sha256", "layers/sha256", "tmp"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if keep.contains(&path) {
                    continue;
                }
                let result = match entry.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
                if let Err(e) = result {
                    tracing::warn!("image gc: cannot delete {}: {e}", path.display());
                }
            }
        }
        true
    }
}

/// Opens `dir/name`, a file that an archive's own index names, refusing names and symlinks
/// that lead out of `dir` (an archive could otherwise have `/etc/shadow` copied into the
/// store). `what` names the archive in errors.
fn open_inside(dir: &Path, name: &str, what: &str) -> Result<File, ImageError> {
    let read_err = |source| ImageError::Read {
        path: format!("{name} in {what}"),
        source,
    };
    let path = dir.join(name).canonicalize().map_err(read_err)?;
    let root = dir.canonicalize().map_err(read_err)?;
    if !path.starts_with(&root) || !path.is_file() {
        return Err(ImageError::Invalid(format!(
            "{what}: {name:?} is not a file inside the image"
        )));
    }
    File::open(&path).map_err(read_err)
}

/// The image of an OCI layout's index that `reference` means: the only one, or the one whose
/// `org.opencontainers.image.ref.name` (a tag or a whole reference) or containerd's
/// `io.containerd.image.name` matches; among several, the one for this node's platform.
fn pick_layout_image(
    index: &ImageIndex,
    reference: &str,
    what: &str,
) -> Result<Descriptor, ImageError> {
    let tag = reference
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map(|(_, tag)| tag);
    let named = |d: &&Descriptor| {
        d.annotations().as_ref().is_some_and(|a| {
            let ref_name = a
                .get("org.opencontainers.image.ref.name")
                .map(String::as_str);
            let full_name = a.get("io.containerd.image.name").map(String::as_str);
            ref_name == Some(reference)
                || (ref_name.is_some() && ref_name == tag)
                || full_name.is_some_and(|n| normalize(n).is_ok_and(|n| n == reference))
        })
    };
    let matching: Vec<Descriptor> = index.manifests().iter().filter(named).cloned().collect();
    let candidates = if matching.is_empty() {
        index.manifests().clone()
    } else {
        matching
    };
    match candidates.as_slice() {
        [] => Err(ImageError::Invalid(format!(
            "{what}/index.json lists no image"
        ))),
        [only] => Ok(only.clone()),
        several => {
            let mut narrowed = index.clone();
            narrowed.set_manifests(several.to_vec());
            select_platform(&narrowed, what).cloned()
        }
    }
}

/// How the image config blob at `path` says to run the image.
fn read_run_config(path: &Path, what: &str) -> Result<ImageRunConfig, ImageError> {
    let config = ImageConfiguration::from_file(path).map_err(|e| {
        ImageError::Invalid(format!("the config of image {what} cannot be read: {e}"))
    })?;
    let Some(config) = config.config() else {
        return Ok(ImageRunConfig::default());
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Ok(ImageRunConfig {
        entrypoint: config.entrypoint().clone().unwrap_or_default(),
        cmd: config.cmd().clone().unwrap_or_default(),
        env: config.env().clone().unwrap_or_default(),
        working_dir: non_empty(config.working_dir()),
        user: non_empty(config.user()),
    })
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

    #[test]
    fn removed_wasm_images_are_swept_by_gc_unless_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = store.add("a:1", b"\0asm\x01\0\0\0a").unwrap();
        let b = store.add("b:1", b"\0asm\x01\0\0\0b").unwrap();
        assert_eq!(store.list().len(), 2);
        assert!(store.remove("a:1").unwrap());
        assert!(!store.remove("a:1").unwrap());
        assert!(store.remove(&b.digest).unwrap());
        // b's blob is kept while a container runs it, though nothing names it.
        let in_use = HashSet::from([b.digest.clone()]);
        assert_eq!(store.gc(&in_use, u64::MAX, u64::MAX), 0);
        assert!(!a.path.exists());
        assert!(b.path.exists());
        assert!(store.list().is_empty());
    }
}
