//! The image store with OCI container images: pulled from a real registry (docker-registry on
//! loopback, `testkit::registry`), imported from an OCI layout and a `docker save` tarball,
//! and collected by gc.
//!
//! Needs root, as the node agent does (CI runs as root): unpacking keeps files' owners,
//! makes whiteouts as character devices (mknod) and sets `trusted.overlay.opaque`.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use oci_client::secrets::RegistryAuth;
use runtime::images::{ImageError, ImageKind, ImageStore, OciImage, StoredImage};
use runtime::registry::{auth_from_docker_config, PullError, Registries};
use testkit::images::{busybox, busybox_image, busybox_with_deletions, INDEX_HTML};
use testkit::registry::LocalRegistry;

/// Pulls `image` anonymously; returns the result and the progress messages.
async fn pull(store: &ImageStore, image: &str) -> (Result<StoredImage, PullError>, Vec<String>) {
    pull_with(store, image, &RegistryAuth::Anonymous).await
}

async fn pull_with(
    store: &ImageStore,
    image: &str,
    auth: &RegistryAuth,
) -> (Result<StoredImage, PullError>, Vec<String>) {
    let messages = Mutex::new(Vec::new());
    let result = Registries::new(vec![], None)
        .pull(image, store, auth, &|m| messages.lock().unwrap().push(m))
        .await;
    (result, messages.into_inner().unwrap())
}

fn oci(image: &StoredImage) -> &OciImage {
    match &image.kind {
        ImageKind::Oci(oci) => oci,
        ImageKind::Wasm => panic!("{} is a Wasm image", image.reference),
    }
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// The busybox rootfs is all in `layer`: an executable busybox, applet symlinks, the page.
fn assert_busybox_rootfs(layer: &Path) {
    let busybox = std::fs::metadata(layer.join("bin/busybox")).unwrap();
    assert!(busybox.is_file());
    assert_eq!(busybox.permissions().mode() & 0o777, 0o755);
    assert_eq!((busybox.uid(), busybox.gid()), (0, 0));
    for applet in ["sh", "httpd", "wget", "nslookup"] {
        let link = layer.join("bin").join(applet);
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("busybox"));
    }
    assert_eq!(
        std::fs::read_to_string(layer.join("www/index.html")).unwrap(),
        INDEX_HTML
    );
    let tmp = std::fs::metadata(layer.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    let root = std::fs::metadata(layer).unwrap();
    assert_eq!(root.permissions().mode() & 0o777, 0o755);
}

#[tokio::test]
async fn busybox_is_pulled_unpacked_and_its_blobs_reused() {
    let registry = LocalRegistry::start();
    let image = registry.image("busybox:1");
    let digest = busybox_image(&image).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();

    let (pulled, progress) = pull(&store, &image).await;
    let pulled = pulled.unwrap();
    assert_eq!(pulled.digest, digest, "the image ID is the manifest digest");
    assert_eq!(pulled.reference, image);
    assert_eq!(
        pulled.path,
        dir.path().join("blobs/sha256").join(&digest[7..])
    );
    let oci = oci(&pulled);
    assert_eq!(oci.config.cmd, ["sh"]);
    assert_eq!(oci.config.env, ["PATH=/bin:/usr/bin"]);
    assert!(oci.config.entrypoint.is_empty());
    assert_eq!(oci.layers.len(), 1);
    assert_busybox_rootfs(&oci.layers[0]);
    assert!(
        progress
            .iter()
            .any(|m| m.starts_with("pulling layer 1/1 sha256:")),
        "{progress:?}"
    );
    assert_eq!(store.resolve(&image), Some(pulled.clone()));
    assert_eq!(count_entries(&dir.path().join("tmp")), 0);

    // The same image under another name: nothing fetched or unpacked again.
    let blobs = count_entries(&dir.path().join("blobs/sha256"));
    let again = registry.image("again:2");
    busybox_image(&again).await.unwrap();
    let (second, progress) = pull(&store, &again).await;
    let second = second.unwrap();
    assert_eq!(second.digest, digest);
    assert_eq!(second.kind, pulled.kind);
    assert!(
        !progress.iter().any(|m| m.starts_with("pulling layer")),
        "{progress:?}"
    );
    assert!(
        !progress.iter().any(|m| m.starts_with("unpacking")),
        "{progress:?}"
    );
    assert_eq!(count_entries(&dir.path().join("blobs/sha256")), blobs);
    assert_eq!(count_entries(&dir.path().join("layers/sha256")), 1);

    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].references, [again.clone(), image.clone()]);
    assert!(listed[0].size_bytes > 1_000_000, "busybox is about 2 MB");
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_both_succeed() {
    let registry = LocalRegistry::start();
    let image = registry.image("busybox:1");
    busybox_image(&image).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let (a, b) = tokio::join!(pull(&store, &image), pull(&store, &image));
    assert_eq!(a.0.unwrap(), b.0.unwrap());
    assert_eq!(count_entries(&dir.path().join("tmp")), 0);
    assert_eq!(count_entries(&dir.path().join("layers/sha256")), 1);
}

// Root: whiteouts are character devices (mknod), opaque directories `trusted.*` attributes.
#[tokio::test]
async fn whiteouts_and_opaque_directories_become_overlayfs_ones() {
    let registry = LocalRegistry::start();
    let image = registry.image("deleted:1");
    busybox_with_deletions()
        .unwrap()
        .push(&image, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let pulled = pull(&store, &image).await.0.unwrap();
    let layers = &oci(&pulled).layers;
    assert_eq!(layers.len(), 2);
    assert_busybox_rootfs(&layers[0]);
    let top = &layers[1];
    let whiteout = std::fs::symlink_metadata(top.join("www/index.html")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!top.join("www/.wh.index.html").exists());
    assert_eq!(
        std::fs::read(top.join("www/second.html")).unwrap(),
        b"second\n"
    );
    let mut value = [0u8; 8];
    let n = rustix::fs::lgetxattr(top.join("etc"), "trusted.overlay.opaque", &mut value).unwrap();
    assert_eq!(&value[..n], b"y");
    assert!(!top.join("etc/.wh..wh..opq").exists());
    assert_eq!(
        std::fs::read(top.join("etc/motd")).unwrap(),
        b"second layer\n"
    );
    // The directories below stay untouched.
    assert!(rustix::fs::lgetxattr(top.join("www"), "trusted.overlay.opaque", &mut value).is_err());
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_leaves_nothing() {
    let registry = LocalRegistry::start();
    let image = registry.image("corrupt:1");
    busybox_image(&image).await.unwrap();
    // The registry now serves other bytes (of the same size) for the layer.
    let (manifest, _) = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
    .pull_image_manifest(&image.parse().unwrap(), &RegistryAuth::Anonymous)
    .await
    .unwrap();
    let layer = &manifest.layers[0].digest;
    let blob = registry.blob_path(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let err = pull(&store, &image).await.0.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch(_)), "{err:?}");
    assert!(err.to_string().starts_with("digest mismatch"), "{err}");
    assert_eq!(count_entries(&dir.path().join("tmp")), 0);
    assert!(!dir.path().join("blobs/sha256").join(&layer[7..]).exists());
    assert_eq!(count_entries(&dir.path().join("layers/sha256")), 0);
    assert!(store.resolve(&image).is_none());
    assert!(store.list().is_empty());
}

#[tokio::test]
async fn missing_images_and_foreign_platforms_are_clear_errors() {
    let registry = LocalRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    busybox_image(&registry.image("busybox:1")).await.unwrap();
    for missing in ["nothing:1", "busybox:2"] {
        let err = pull(&store, &registry.image(missing)).await.0.unwrap_err();
        assert!(matches!(err, PullError::NotFound(_)), "{err:?}");
        assert!(err.to_string().starts_with("not found: image"), "{err}");
    }

    let other = if testkit::images::host_architecture() == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    };
    let image = registry.image("foreign:1");
    testkit::images::push_single_platform_index(&image, other)
        .await
        .unwrap();
    let err = pull(&store, &image).await.0.unwrap_err();
    assert!(matches!(err, PullError::Platform(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("it has linux/{other}")),
        "{message}"
    );
    assert!(store.list().is_empty());
}

#[tokio::test]
async fn credentials_are_sent_and_refusals_are_clear() {
    let registry = LocalRegistry::start_with_basic_auth("drover", "s3cret");
    let image = registry.image("private:1");
    busybox()
        .unwrap()
        .push(&image, Some(("drover", "s3cret")))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();

    let err = pull(&store, &image).await.0.unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    let wrong = RegistryAuth::Basic("drover".into(), "wrong".into());
    let err = pull_with(&store, &image, &wrong).await.0.unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("unauthorized: the registry refused the credentials"),
        "{err}"
    );

    // As a pod's imagePullSecret gives them.
    let secret = format!(
        r#"{{"auths": {{"http://{}": {{"username": "drover", "password": "s3cret"}}}}}}"#,
        registry.address
    );
    let auth = auth_from_docker_config(&registry.address, &[secret.into_bytes()]);
    let pulled = pull_with(&store, &image, &auth).await.0.unwrap();
    assert_busybox_rootfs(&oci(&pulled).layers[0]);
}

#[tokio::test]
async fn wasm_images_are_still_pulled_as_wasm() {
    let registry = LocalRegistry::start();
    let image = registry.image("hello:1");
    let wasm = b"\0asm\x01\0\0\0".to_vec();
    Registries::new(vec![], None)
        .push(wasm.clone(), &image, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let pulled = pull(&store, &image).await.0.unwrap();
    assert_eq!(pulled.kind, ImageKind::Wasm);
    assert_eq!(pulled.digest, runtime::images::sha256_digest(&wasm));
    assert_eq!(std::fs::read(&pulled.path).unwrap(), wasm);
}

#[test]
fn oci_layouts_and_docker_save_tarballs_are_imported() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let image = busybox().unwrap();

    // A layout directory.
    let layout = dir.path().join("layout");
    let digest = image.write_oci_layout(&layout, "1").unwrap();
    let imported = store.import(&layout, "example.com/busybox:1").unwrap();
    assert_eq!(imported.digest, digest);
    assert_eq!(oci(&imported).config.cmd, ["sh"]);
    assert_busybox_rootfs(&oci(&imported).layers[0]);

    // The same layout as a tar: the same image.
    let layout_tar = dir.path().join("layout.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&layout_tar).unwrap());
    tar.append_dir_all(".", &layout).unwrap();
    tar.finish().unwrap();
    drop(tar);
    let from_tar = store.import(&layout_tar, "from-tar:1").unwrap();
    assert_eq!(from_tar.digest, digest);

    // docker save: layers uncompressed, no manifest of its own.
    let saved = dir.path().join("saved.tar");
    image.write_docker_save(&saved, "saved/busybox:1").unwrap();
    let imported = store.import(&saved, "saved/busybox:1").unwrap();
    assert_ne!(imported.digest, digest, "a manifest of docker media types");
    assert_eq!(oci(&imported).config.env, ["PATH=/bin:/usr/bin"]);
    assert_busybox_rootfs(&oci(&imported).layers[0]);
    assert_eq!(store.resolve("saved/busybox:1"), Some(imported));
    assert_eq!(count_entries(&dir.path().join("images/tmp")), 0);

    // Neither Wasm nor an image.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "junk").unwrap();
    let err = store.import(&junk, "junk:1").unwrap_err();
    assert!(matches!(err, ImageError::NotWasm { .. }), "{err:?}");
    let err = store.import(dir.path(), "dir:1").unwrap_err();
    assert!(
        err.to_string().contains("neither an OCI image layout"),
        "{err}"
    );
}

#[test]
fn a_layout_whose_blob_was_altered_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let layout = dir.path().join("layout");
    busybox().unwrap().write_oci_layout(&layout, "1").unwrap();
    // The biggest blob is the layer.
    let blobs = layout.join("blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let err = store.import(&layout, "altered:1").unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(count_entries(&dir.path().join("images/tmp")), 0);
    assert_eq!(count_entries(&dir.path().join("images/layers/sha256")), 0);
    assert!(store.list().is_empty());
}

#[test]
fn gc_removes_least_recently_used_images_but_never_those_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let layout = |name: &str, image: testkit::images::Image| {
        let path = dir.path().join(name);
        image.write_oci_layout(&path, "1").unwrap();
        path
    };
    let busybox = store
        .import(&layout("a", busybox().unwrap()), "busybox:1")
        .unwrap();
    let deleted = store
        .import(&layout("b", busybox_with_deletions().unwrap()), "deleted:1")
        .unwrap();
    let wasm = store.add("hello:1", b"\0asm\x01\0\0\0").unwrap();
    let base_layer = oci(&busybox).layers[0].clone();
    let top_layer = oci(&deleted).layers[1].clone();
    assert_eq!(oci(&deleted).layers[0], base_layer, "layers are shared");

    // Under the high water mark: nothing goes.
    let nothing = HashSet::new();
    assert_eq!(store.gc(&nothing, u64::MAX, 0), 0);
    assert_eq!(store.list().len(), 3);

    // busybox is the least recently used, but in use; of the others, the older goes first,
    // and one is enough to get under the low mark.
    let in_use = HashSet::from([busybox.digest.clone()]);
    let used = |image: &runtime::images::StoredImage, secs| {
        let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        std::fs::File::open(&image.path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    };
    used(&busybox, 1_000);
    used(&deleted, 2_000);
    used(&wasm, 3_000);
    let usage = store.disk_usage();
    assert_eq!(store.gc(&in_use, 0, usage - 1), 1);
    assert!(store.resolve("deleted:1").is_none());
    assert!(!top_layer.exists());
    assert!(!deleted.path.exists());
    assert!(wasm.path.exists());
    assert_eq!(store.gc(&in_use, 0, 0), 1);
    assert!(store.resolve("hello:1").is_none());
    assert!(!wasm.path.exists());
    assert_eq!(store.resolve("busybox:1"), Some(busybox.clone()));
    assert_busybox_rootfs(&base_layer);

    // An image in use stays even when nothing names it any more.
    assert!(store.remove("busybox:1").unwrap());
    assert_eq!(store.gc(&in_use, 0, 0), 0);
    assert_busybox_rootfs(&base_layer);
    assert_eq!(store.gc(&nothing, 0, 0), 0);
    assert!(!base_layer.exists());
    assert_eq!(count_entries(&dir.path().join("images/blobs/sha256")), 0);
}
