//! Layer blobs (tar, tar+gzip, tar+zstd) unpacked into directories that overlayfs can stack as
//! lower layers: OCI whiteouts become overlayfs ones (`.wh.NAME` → a 0/0 character device
//! `NAME`; `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory), and ownership,
//! permissions, symlinks, hardlinks and extended attributes are kept.
//!
//! A layer is unpacked into a temporary directory and renamed into place, so a layer
//! directory is either complete or absent; two unpacks of the same layer race harmlessly
//! (the loser's copy is deleted).
//!
//! Making whiteout devices, setting `trusted.*` attributes and keeping file owners need root,
//! as the node agent is; without root, owners are left as they are and a layer with
//! whiteouts cannot be unpacked.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Media types of filesystem layers (compression is told from the content, not the type).
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

pub fn is_layer_media_type(media_type: &str) -> bool {
    LAYER_MEDIA_TYPES.contains(&media_type)
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Unpacks the layer blob `blob` into `dest` (created; its parent must exist), through a
/// temporary directory under `tmp_dir` on the same filesystem. Does nothing if `dest` exists:
/// layer directories are only ever complete.
pub fn unpack_layer(blob: &Path, dest: &Path, tmp_dir: &Path) -> io::Result<()> {
    if dest.exists() {
        return Ok(());
    }
    // Removed on drop: an error leaves nothing half-unpacked behind.
    let tmp = tempfile::Builder::new()
        .prefix("layer-")
        .tempdir_in(tmp_dir)?;
    let reader = decompressed(File::open(blob)?)?;
    unpack_tar(reader, tmp.path())?;
    // The layer's root is the container's `/` where no upper layer says otherwise.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    match std::fs::rename(tmp.path(), dest) {
        Ok(()) => Ok(()),
        // Another pull unpacked the same layer first: theirs is as good as ours.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// How a blob is compressed, told from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn from_magic(magic: &[u8]) -> Compression {
        match magic {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    pub fn of(path: &Path) -> io::Result<Compression> {
        let mut magic = Vec::with_capacity(4);
        File::open(path)?.take(4).read_to_end(&mut magic)?;
        Ok(Compression::from_magic(&magic))
    }
}

/// The content of `file`, decompressed as its first bytes say (gzip, zstd, or as it is).
pub fn decompressed(file: File) -> io::Result<Box<dyn Read>> {
    use std::io::BufRead;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let compression = Compression::from_magic(reader.fill_buf()?);
    Ok(match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Compression::None => Box::new(reader),
    })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// An entry's path inside the layer, refused if it is absolute or climbs out with `..`.
fn relative_path(path: &Path) -> io::Result<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir => {
                return Err(invalid(format!(
                    "the entry {} leaves the layer (it has a `..` component)",
                    path.display()
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "the entry {} has an absolute path",
                    path.display()
                )))
            }
        }
    }
    Ok(relative)
}

/// `root/relative` as a real directory, creating what is missing, and refusing to pass
/// through a symlink or a file (which could lead a whiteout outside the layer).
fn real_dir(root: &Path, relative: &Path) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for part in relative.components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "{} is not a directory (a whiteout below it would leave the layer)",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&dir)?,
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Replaces whatever is at `path` with an overlayfs whiteout (a 0/0 character device).
fn make_whiteout(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .map_err(|e| io::Error::other(format!("cannot make the whiteout {}: {e}", path.display())))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).map_err(|e| {
        io::Error::other(format!(
            "cannot set the attribute {name} on {}: {e}",
            path.display()
        ))
    })
}

/// Unpacks a layer's tar into the (empty) directory `root`, converting whiteouts.
fn unpack_tar(reader: impl Read, root: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(rustix::process::geteuid().is_root());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    // Directories are finished last, as tar's own unpack does: a read-only directory must
    // not stop its contents from being written first.
    let mut directories = Vec::new();
    let mut opaque_dirs = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = relative_path(&entry.path()?)?;
        let Some(name) = path.file_name().and_then(OsStr::to_str) else {
            if path.as_os_str().is_empty() {
                continue; // `./`, the layer's root
            }
            // Not UTF-8, so certainly not a whiteout.
            unpack_entry(&mut entry, root, &path)?;
            continue;
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == OPAQUE_MARKER {
            opaque_dirs.push(real_dir(root, parent)?);
        } else if name.starts_with(".wh..wh.") {
            // Other AUFS bookkeeping (`.wh..wh.plnk`, ...): nothing overlayfs needs.
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            // `.wh.`, `.wh..` and `.wh...` would name the directory itself or its parent.
            if matches!(hidden, "" | "." | "..") {
                return Err(invalid(format!(
                    "the whiteout {} names no file",
                    path.display()
                )));
            }
            make_whiteout(&real_dir(root, parent)?.join(hidden))?;
        } else if entry.header().entry_type() == tar::EntryType::Directory {
            directories.push((path, entry));
        } else {
            unpack_entry(&mut entry, root, &path)?;
        }
    }
    // Deepest first, so a parent's permissions are set after its children exist.
    directories.sort_by(|(a, _), (b, _)| b.cmp(a));
    for (path, mut entry) in directories {
        unpack_entry(&mut entry, root, &path)?;
        // tar sets extended attributes on files only; directories can carry them too.
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions()? {
            Some(extensions) => extensions
                .filter_map(Result::ok)
                .filter_map(|ext| {
                    let name = ext.key().ok()?.strip_prefix(PAX_XATTR_PREFIX)?;
                    Some((name.to_string(), ext.value_bytes().to_vec()))
                })
                .collect(),
            None => Vec::new(),
        };
        for (name, value) in xattrs {
            set_xattr(&root.join(&path), &name, &value)?;
        }
    }
    for dir in opaque_dirs {
        set_xattr(&dir, OPAQUE_XATTR, b"y")?;
    }
    Ok(())
}

/// One entry through tar, which refuses to write through a symlink that leads outside `root`
/// and hardlinks to files outside it.
fn unpack_entry<R: Read>(entry: &mut tar::Entry<R>, root: &Path, path: &Path) -> io::Result<()> {
    let unpacked = entry
        .unpack_in(root)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if !unpacked {
        return Err(invalid(format!(
            "the entry {} would be unpacked outside the layer",
            path.display()
        )));
    }
    Ok(())
}

/// Bytes `path` takes on disk (all of it, if a directory); a file with several links counts
/// once. Symlinks are not followed.
pub fn disk_usage(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(children) = std::fs::read_dir(&path) {
                pending.extend(children.filter_map(Result::ok).map(|c| c.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar whose one entry has `name` written into the header as is (tar's builder refuses
    /// `..`, so the name is put in by hand).
    fn tar_with_raw_name(name: &[u8], kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(0);
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, io::empty()).unwrap();
        builder.into_inner().unwrap()
    }

    fn unpack_bytes(tar: &[u8]) -> (tempfile::TempDir, io::Result<()>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let result = unpack_tar(tar, &root);
        (dir, result)
    }

    #[test]
    fn entries_that_leave_the_layer_are_refused() {
        for name in [&b"../escaped"[..], b"a/../../escaped", b"/etc/escaped"] {
            let (dir, result) =
                unpack_bytes(&tar_with_raw_name(name, tar::EntryType::Regular, None));
            assert!(result.is_err(), "{}", String::from_utf8_lossy(name));
            assert!(!dir.path().join("escaped").exists());
        }
        // Through a symlink made by the same layer.
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder.append_link(&mut link, "out", "..").unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(1);
        file.set_mode(0o644);
        builder
            .append_data(&mut file, "out/escaped", &b"x"[..])
            .unwrap();
        let (dir, result) = unpack_bytes(&builder.into_inner().unwrap());
        assert!(result.is_err());
        assert!(!dir.path().join("escaped").exists());
        // Whiteouts of the directory itself or of its parent.
        for name in [".wh.", ".wh..", ".wh..."] {
            let mut builder = tar::Builder::new(Vec::new());
            let mut file = tar::Header::new_gnu();
            file.set_size(0);
            file.set_mode(0o644);
            builder
                .append_data(&mut file, format!("d/{name}"), io::empty())
                .unwrap();
            let (dir, result) = unpack_bytes(&builder.into_inner().unwrap());
            assert!(result.is_err(), "{name}");
            assert!(dir.path().join("root").is_dir());
        }
        // A hardlink to a file outside.
        let (_dir, result) = unpack_bytes(&tar_with_raw_name(
            b"passwd",
            tar::EntryType::Link,
            Some("/etc/passwd"),
        ));
        assert!(result.is_err());
    }

    #[test]
    fn a_corrupt_layer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        // A gzip header followed by garbage.
        std::fs::write(&blob, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5]).unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let dest = dir.path().join("layer");
        assert!(unpack_layer(&blob, &dest, &tmp).is_err());
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }
}
