//! Container images made in memory for tests, pushed to a registry with oci-client (see
//! [`crate::registry::LocalRegistry`]) or written as an OCI image layout or a `docker save`
//! tarball for imports.
//!
//! [`busybox`] is a small, real Linux image: Debian's static busybox (`/bin/busybox` from the
//! `busybox-static` package) with applet symlinks in `/bin`, `/www/index.html`, and
//! `Cmd ["sh"]`, `Env PATH=/bin:/usr/bin`. Layers are built with [`Layer`], whiteouts included:
//!
//! ```no_run
//! # async fn example(registry: &testkit::registry::LocalRegistry) -> anyhow::Result<()> {
//! use testkit::images::{busybox, Layer};
//! let mut image = busybox()?;
//! image.layers.push(Layer::new().whiteout("www/index.html").opaque("etc").into_tar());
//! let digest = image.push(&registry.image("deleted:1"), None).await?;
//! # Ok(()) }
//! ```
//!
//! Everything is deterministic (fixed times, gzip without timestamps): the same image pushed
//! twice has the same digests.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    ImageIndexEntry, OciImageIndex, OciImageManifest, IMAGE_CONFIG_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

/// The busybox the `busybox-static` package installs.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked in the busybox image's /bin.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "httpd", "echo", "true", "false", "sleep", "cat", "ls", "nslookup", "wget", "hostname",
    "id", "ps", "mount", "head", "dd", "kill", "readlink",
];

/// What `/www/index.html` says in the busybox image.
pub const INDEX_HTML: &str = "<h1>hello from busybox</h1>\n";

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// One layer's files, as a tar in the making. Owned by root, fixed times.
pub struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Layer {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut header, path, std::io::empty())
            .expect("writing to memory");
        self
    }

    pub fn file(mut self, path: &str, mode: u32, contents: &[u8]) -> Layer {
        let mut header = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        self.tar
            .append_data(&mut header, path, contents)
            .expect("writing to memory");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut header, path, target)
            .expect("writing to memory");
        self
    }

    /// A hard link to `target`, a file earlier in this layer.
    pub fn hardlink(mut self, path: &str, target: &str) -> Layer {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0);
        self.tar
            .append_link(&mut header, path, target)
            .expect("writing to memory");
        self
    }

    /// Deletes `path` (a file or a directory) of the layers below: an OCI whiteout,
    /// `.wh.NAME` next to it.
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let whiteout = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&whiteout, 0o644, b"")
    }

    /// Hides everything the layers below have in directory `dir` (`dir/.wh..wh..opq`); what
    /// this layer puts in it stays.
    pub fn opaque(self, dir: &str) -> Layer {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    /// The layer as an uncompressed tar.
    pub fn into_tar(self) -> Vec<u8> {
        self.tar.into_inner().expect("writing to memory")
    }
}

/// An image: layer tars (bottom first) and the config that says how to run it.
#[derive(Clone, Debug)]
pub struct Image {
    /// Uncompressed tars; pushed and written gzipped (docker save: as they are).
    pub layers: Vec<Vec<u8>>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// OCI's name for the CPU: `amd64`, `arm64`, ...
    pub architecture: String,
    pub os: String,
}

/// This machine's architecture as OCI platforms name it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    // No name and no time in the header: the same tar always gives the same blob.
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// A registry client for tests: plain HTTP to the registry of `reference`, as for loopback.
fn client(reference: &Reference) -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(Client::try_from(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()]),
        ..Default::default()
    })?)
}

fn registry_auth(auth: Option<(&str, &str)>) -> RegistryAuth {
    match auth {
        Some((username, password)) => RegistryAuth::Basic(username.into(), password.into()),
        None => RegistryAuth::Anonymous,
    }
}

impl Image {
    /// An image of these layers for this machine, with nothing configured.
    pub fn new(layers: Vec<Layer>) -> Image {
        Image {
            layers: layers.into_iter().map(Layer::into_tar).collect(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            user: None,
            architecture: host_architecture().into(),
            os: "linux".into(),
        }
    }

    /// The image config (OCI's JSON).
    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(|tar| sha256(tar)).collect();
        let mut config = serde_json::json!({
            "Entrypoint": self.entrypoint,
            "Cmd": self.cmd,
            "Env": self.env,
        });
        if let Some(dir) = &self.working_dir {
            config["WorkingDir"] = dir.as_str().into();
        }
        if let Some(user) = &self.user {
            config["User"] = user.as_str().into();
        }
        let config = serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        serde_json::to_vec(&config).expect("JSON serialises")
    }

    fn layers_and_config(&self) -> (Vec<ImageLayer>, Config) {
        let layers = self
            .layers
            .iter()
            .map(|tar| ImageLayer::new(gzip(tar), IMAGE_LAYER_GZIP_MEDIA_TYPE.into(), None))
            .collect();
        let config = Config::new(self.config_json(), IMAGE_CONFIG_MEDIA_TYPE.into(), None);
        (layers, config)
    }

    /// Pushes the image as `push_to` (`127.0.0.1:PORT/name:tag`), with basic auth if given;
    /// returns the manifest's digest.
    pub async fn push(&self, push_to: &str, auth: Option<(&str, &str)>) -> anyhow::Result<String> {
        let reference: Reference = push_to.parse().with_context(|| format!("{push_to:?}"))?;
        let client = client(&reference)?;
        let auth = registry_auth(auth);
        let (layers, config) = self.layers_and_config();
        let manifest = OciImageManifest::build(&layers, &config, None);
        client
            .push(&reference, &layers, config, &auth, Some(manifest))
            .await
            .with_context(|| format!("pushing {push_to}"))?;
        client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .with_context(|| format!("the digest of {push_to}"))
    }

    /// Writes the image as an OCI image layout in `dir` (created), its manifest annotated with
    /// `org.opencontainers.image.ref.name` = `ref_name`; returns the manifest's digest.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) -> anyhow::Result<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let write_blob = |bytes: &[u8]| -> anyhow::Result<String> {
            let digest = sha256(bytes);
            std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes)?;
            Ok(digest)
        };
        let (layers, config) = self.layers_and_config();
        let manifest = OciImageManifest::build(&layers, &config, None);
        for layer in &layers {
            write_blob(&layer.data)?;
        }
        write_blob(&config.data)?;
        let manifest = serde_json::to_vec(&manifest)?;
        let digest = write_blob(&manifest)?;
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
            manifests: vec![ImageIndexEntry {
                media_type: OCI_IMAGE_MEDIA_TYPE.into(),
                digest: digest.clone(),
                size: manifest.len() as i64,
                platform: None,
                annotations: Some(BTreeMap::from([(
                    "org.opencontainers.image.ref.name".to_string(),
                    ref_name.to_string(),
                )])),
                artifact_type: None,
            }],
            artifact_type: None,
            annotations: None,
        };
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(digest)
    }

    /// Writes the image as `docker save` (before Docker 25) does: a tar of `manifest.json`,
    /// the config as `<hex>.json` and each layer as `<hex>/layer.tar`, tagged `repo_tag`.
    pub fn write_docker_save(&self, tar_path: &Path, repo_tag: &str) -> anyhow::Result<()> {
        let mut tar = tar::Builder::new(std::fs::File::create(tar_path)?);
        let mut add = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
            let mut header = Layer::header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            tar.append_data(&mut header, name, bytes)?;
            Ok(())
        };
        let config = self.config_json();
        let config_name = format!("{}.json", sha256(&config).trim_start_matches("sha256:"));
        add(&config_name, &config)?;
        let mut layer_names = Vec::new();
        for layer in &self.layers {
            let name = format!("{}/layer.tar", sha256(layer).trim_start_matches("sha256:"));
            add(&name, layer)?;
            layer_names.push(name);
        }
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": layer_names,
        }]);
        add("manifest.json", &serde_json::to_vec(&manifest)?)?;
        tar.into_inner()?.sync_all()?;
        Ok(())
    }
}

/// The busybox image's one layer.
pub fn busybox_layer() -> anyhow::Result<Layer> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} is missing: install the busybox-static package"))?;
    let mut layer = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox);
    for applet in BUSYBOX_APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(layer
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .dir("tmp", 0o1777)
        .dir("www", 0o755)
        .file("www/index.html", 0o644, INDEX_HTML.as_bytes()))
}

/// The busybox image: one layer, `Cmd ["sh"]`, `Env PATH=/bin:/usr/bin`.
pub fn busybox() -> anyhow::Result<Image> {
    let mut image = Image::new(vec![busybox_layer()?]);
    image.cmd = vec!["sh".into()];
    image.env = vec!["PATH=/bin:/usr/bin".into()];
    Ok(image)
}

/// Builds the busybox image and pushes it as `push_to` (`127.0.0.1:PORT/busybox:1`); returns
/// the manifest's digest.
pub async fn busybox_image(push_to: &str) -> anyhow::Result<String> {
    busybox()?.push(push_to, None).await
}

/// busybox with a second layer that deletes: `/www/index.html` (a whiteout), everything
/// that was in `/etc` (an opaque directory, which gets `/etc/motd` instead), and adds
/// `/www/second.html`.
pub fn busybox_with_deletions() -> anyhow::Result<Image> {
    let mut image = busybox()?;
    image.layers.push(
        Layer::new()
            .dir("etc", 0o755)
            .opaque("etc")
            .file("etc/motd", 0o644, b"second layer\n")
            .dir("www", 0o755)
            .whiteout("www/index.html")
            .file("www/second.html", 0o644, b"second\n")
            .into_tar(),
    );
    Ok(image)
}

/// Pushes, as `push_to`, an image index whose only image (busybox, pushed as
/// `<repository>:only-<architecture>`) is for linux/`architecture`; returns the index's digest.
/// For tests of nodes that find no image for their platform.
pub async fn push_single_platform_index(
    push_to: &str,
    architecture: &str,
) -> anyhow::Result<String> {
    let reference: Reference = push_to.parse().with_context(|| format!("{push_to:?}"))?;
    let mut image = busybox()?;
    image.architecture = architecture.into();
    let image_ref = format!(
        "{}/{}:only-{architecture}",
        reference.registry(),
        reference.repository()
    );
    let digest = image.push(&image_ref, None).await?;
    let client = client(&reference)?;
    let (manifest, _) = client
        .pull_manifest_raw(
            &image_ref.parse()?,
            &RegistryAuth::Anonymous,
            &[OCI_IMAGE_MEDIA_TYPE],
        )
        .await?;
    let platform = serde_json::from_value(serde_json::json!({
        "architecture": architecture,
        "os": "linux",
    }))?;
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
        manifests: vec![ImageIndexEntry {
            media_type: OCI_IMAGE_MEDIA_TYPE.into(),
            digest,
            size: manifest.len() as i64,
            platform: Some(platform),
            annotations: None,
            artifact_type: None,
        }],
        artifact_type: None,
        annotations: None,
    };
    client
        .push_manifest_list(&reference, &RegistryAuth::Anonymous, index)
        .await
        .with_context(|| format!("pushing the index {push_to}"))?;
    Ok(client
        .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        .await?)
}
