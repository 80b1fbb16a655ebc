//! A pod's volumes on the node: emptyDir and the files of configMap and secret volumes under
//! the pod's directory, hostPath as it is. Containers see them as preopened directories at
//! their mountPath. configMap and secret files are rewritten when the objects change (the pod
//! worker calls [`sync`] again every few seconds), with the modes the volume asks for
//! (`defaultMode`, an item's `mode`; 0644 by default, as Kubernetes).
//!
//! A secret volume is a tmpfs of its own, as the kubelet makes it: a Secret, sealed in the
//! store, never reaches the node's disk in the clear. [`release`] unmounts them when the pod
//! goes (and `drover node --cleanup` after a crash).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod};
use runtime::Mount;

use crate::env::{ConfigError, Sources};

/// Whether `p` is a relative path of plain names (no `..`, no root, no `.`), so joining it
/// to a volume's directory stays inside it.
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && std::path::Path::new(p)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Writes a volume's files: `items` chooses and renames keys; otherwise every key is a file.
/// Files of keys no longer there are removed.
fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Result<(), ConfigError> {
    write_chosen(dir, &choose(data, items, default_mode))
}

/// The files a volume source makes of `data`: `items` choose and rename keys (with their own
/// modes), otherwise every key is a file; modes default to `default_mode`, then 0644.
fn choose(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Vec<(String, Vec<u8>, u32)> {
    let mode = |m: Option<i32>| file_mode(m, default_mode);
    match items {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                data.get(&i.key)
                    .map(|v| (i.path.clone(), v.clone(), mode(i.mode)))
            })
            .collect(),
        None => data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), mode(None)))
            .collect(),
    }
}

fn file_mode(mode: Option<i32>, default_mode: Option<i32>) -> u32 {
    (mode.or(default_mode).unwrap_or(DEFAULT_FILE_MODE) & 0o777) as u32
}

/// Writes `wanted` (path, contents, mode) under `dir`, and removes the files not wanted.
fn write_chosen(dir: &Path, wanted: &[(String, Vec<u8>, u32)]) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| ConfigError(format!("cannot write {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    for (path, value, mode) in wanted {
        if !plain_relative(path) {
            return Err(ConfigError(format!("invalid volume file path {path:?}")));
        }
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let same_mode =
            std::fs::metadata(&file).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode);
        if std::fs::read(&file).ok().as_deref() != Some(value.as_slice()) || !same_mode {
            // Written aside with its mode, then renamed: a reader sees the old or the new file,
            // never half of one, nor one readable by more than it should be.
            let tmp = file.with_extension("drover-tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create_new(true),
                *mode,
            )
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value))
            .map_err(err)?;
            // The umask may have taken bits away.
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode)).map_err(err)?;
            std::fs::rename(&tmp, &file).map_err(err)?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(err)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && !wanted.iter().any(|(p, _, _)| *p == name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// A volume file's mode when the volume says none (Kubernetes' 0644).
const DEFAULT_FILE_MODE: i32 = 0o644;

/// The most a secret volume's tmpfs may hold (a Secret is at most 1 MiB; items may repeat a
/// key).
const SECRET_VOLUME_BYTES: u64 = 16 << 20;

/// Whether `dir` is a mount point (on another device than its parent).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Makes `dir` a tmpfs of its own unless it is one already (the agent restarted): what is
/// written there stays in memory.
pub fn memory_backed(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_mount_point(dir) {
        return Ok(());
    }
    use rustix::mount::{mount, MountFlags};
    let options = std::ffi::CString::new(format!("mode=0755,size={SECRET_VOLUME_BYTES}"))
        .expect("no NUL in the options");
    mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(options.as_c_str()),
    )?;
    Ok(())
}

/// Unmounts the memory-backed volumes of the pod whose directory is `pod_dir`, so that the
/// directory can go (and their contents with the mounts).
pub fn release(pod_dir: &Path) {
    let Ok(volumes) = std::fs::read_dir(pod_dir.join("volumes")) else {
        return;
    };
    for v in volumes.flatten() {
        let path = v.path();
        if is_mount_point(&path) {
            if let Err(e) = rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH) {
                tracing::warn!("cannot unmount {}: {e}", path.display());
            }
        }
    }
}

/// [`release`] for every pod directory under `pods_dir` (`drover node --cleanup`).
pub fn release_all(pods_dir: &Path) {
    for pod in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
        release(&pod.path());
    }
}

/// The files of a projected volume (`dir`, where they were written last time): its Secrets',
/// ConfigMaps' and the pod's fields, and its ServiceAccount tokens, each asked for again once
/// 80% of its life has passed (as the kubelet renews them), else kept as written.
async fn projected_files(
    pod: &Pod,
    volume: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    dir: &Path,
    sources: &Sources,
) -> Result<Vec<(String, Vec<u8>, u32)>, ConfigError> {
    let default_mode = volume.default_mode;
    let mut files = Vec::new();
    for source in volume.sources.iter().flatten() {
        if let Some(s) = &source.secret {
            let name = s.name.clone();
            match sources.secret(&name).await? {
                Some(data) => files.extend(choose(&data, s.items.as_ref(), default_mode)),
                None if s.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret {name:?} not found"))),
            }
        }
        if let Some(cm) = &source.config_map {
            match sources.configmap(&cm.name).await? {
                Some(data) => {
                    let bytes = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                    files.extend(choose(&bytes, cm.items.as_ref(), default_mode));
                }
                None if cm.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap {:?} not found", cm.name))),
            }
        }
        if let Some(d) = &source.downward_api {
            for item in d.items.iter().flatten() {
                let Some(field) = &item.field_ref else {
                    continue; // resourceFieldRef: not projected yet
                };
                let value =
                    crate::env::field_value(pod, &field.field_path, "", "").unwrap_or_default();
                files.push((
                    item.path.clone(),
                    value.into_bytes(),
                    file_mode(item.mode, default_mode),
                ));
            }
        }
        if let Some(t) = &source.service_account_token {
            let seconds = t.expiration_seconds.unwrap_or(3600).max(600);
            let file = dir.join(&t.path);
            let age = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok());
            let fresh = age.is_some_and(|a| a.as_secs() < (seconds as u64) * 8 / 10);
            let token = match std::fs::read(&file) {
                Ok(kept) if fresh => kept,
                _ => sources
                    .token(pod, t.audience.as_deref(), seconds)
                    .await?
                    .into_bytes(),
            };
            files.push((t.path.clone(), token, file_mode(None, default_mode)));
        }
    }
    Ok(files)
}

/// Makes (or refreshes) every volume of `pod` under `pod_dir`; returns volume name → host path.
pub async fn sync(
    pod: &Pod,
    pod_dir: &Path,
    sources: &Sources,
) -> Result<BTreeMap<String, (PathBuf, bool)>, ConfigError> {
    let mut out = BTreeMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let dir = pod_dir.join("volumes").join(&v.name);
        let err = |e: std::io::Error| ConfigError(format!("cannot make volume {:?}: {e}", v.name));
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(err)?;
            // 0777, as the kubelet makes it: containers running as any user may write there.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(err)?;
            out.insert(v.name.clone(), (dir, false));
        } else if let Some(cm) = &v.config_map {
            match sources.configmap(&cm.name).await? {
                Some(data) => {
                    let bytes = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                    write_files(&dir, &bytes, cm.items.as_ref(), cm.default_mode)?;
                }
                None if cm.optional == Some(true) => std::fs::create_dir_all(&dir).map_err(err)?,
                None => {
                    return Err(ConfigError(format!(
                        "configmap {:?} not found (volume {:?})",
                        cm.name, v.name
                    )))
                }
            }
            out.insert(v.name.clone(), (dir, true));
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            memory_backed(&dir).map_err(err)?;
            match sources.secret(&name).await? {
                Some(data) => write_files(&dir, &data, s.items.as_ref(), s.default_mode)?,
                None if s.optional == Some(true) => std::fs::create_dir_all(&dir).map_err(err)?,
                None => {
                    return Err(ConfigError(format!(
                        "secret {name:?} not found (volume {:?})",
                        v.name
                    )))
                }
            }
            out.insert(v.name.clone(), (dir, true));
        } else if let Some(p) = &v.projected {
            memory_backed(&dir).map_err(err)?;
            let files = projected_files(pod, p, &dir, sources).await?;
            write_chosen(&dir, &files)?;
            out.insert(v.name.clone(), (dir, true));
        } else if let Some(h) = &v.host_path {
            let path = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(err)?,
                "Directory" if !path.is_dir() => {
                    return Err(ConfigError(format!(
                        "hostPath {:?} is not a directory (volume {:?})",
                        h.path, v.name
                    )))
                }
                _ => {}
            }
            out.insert(v.name.clone(), (path, false));
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: only emptyDir, configMap, secret, projected and hostPath volumes are supported",
                v.name
            )));
        }
    }
    Ok(out)
}

/// A container's mounts, from its volumeMounts and the pod's volumes.
pub fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, (PathBuf, bool)>,
) -> Result<Vec<Mount>, ConfigError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some((path, always_ro)) = volumes.get(&m.name) else {
            return Err(ConfigError(format!("volume {:?} not found", m.name)));
        };
        let host_path = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if plain_relative(sub) => {
                // A container may have made a part of the subPath a symbolic link in a writable
                // volume; the mount would follow it out of the volume, into the host
                // (CVE-2017-1002101). Checked just before the mount: a link swapped in between
                // is not caught, which is why Kubernetes opens each component with O_NOFOLLOW.
                let mut walked = path.clone();
                for part in std::path::Path::new(sub).components() {
                    walked.push(part);
                    if std::fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink())
                    {
                        return Err(ConfigError(format!(
                            "subPath {sub:?} of volume {:?} goes through a symbolic link",
                            m.name
                        )));
                    }
                }
                path.join(sub)
            }
            Some(sub) => return Err(ConfigError(format!("invalid subPath {sub:?}"))),
            None => path.clone(),
        };
        out.push(Mount {
            host_path,
            guest_path: m.mount_path.clone(),
            read_only: *always_ro || m.read_only == Some(true),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_path_through_a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("data");
        std::fs::create_dir_all(volume.join("ok")).unwrap();
        std::os::unix::fs::symlink("/", volume.join("evil")).unwrap();
        let volumes = BTreeMap::from([("data".to_string(), (volume.clone(), false))]);
        let container = |sub: &str| -> Container {
            serde_json::from_value(serde_json::json!({
                "name": "c",
                "volumeMounts": [{"name": "data", "mountPath": "/d", "subPath": sub}],
            }))
            .unwrap()
        };
        let ok = mounts(&container("ok"), &volumes).unwrap();
        assert_eq!(ok[0].host_path, volume.join("ok"));
        let err = mounts(&container("evil/etc"), &volumes).unwrap_err();
        assert!(err.0.contains("symbolic link"), "{}", err.0);
        assert!(mounts(&container("../x"), &volumes).is_err());
    }

    /// NEEDS ROOT (CI runs as root): a secret volume is a tmpfs, its files have the modes the
    /// volume asks for, and it is gone once released.
    #[test]
    fn secret_files_live_in_memory_with_their_modes_until_released() {
        use std::os::unix::fs::PermissionsExt;
        let pod_dir = tempfile::tempdir().unwrap();
        let dir = pod_dir.path().join("volumes").join("creds");
        memory_backed(&dir).unwrap();
        memory_backed(&dir).unwrap(); // again, as after an agent restart: one mount
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let on = |p: &Path| rustix::fs::statfs(p).unwrap().f_type as i64;
        assert_eq!(on(&dir), TMPFS_MAGIC, "the volume is in memory");
        let data = BTreeMap::from([
            ("password".to_string(), b"hunter2".to_vec()),
            ("user".to_string(), b"admin".to_vec()),
        ]);
        let items: Vec<KeyToPath> = serde_json::from_value(serde_json::json!([
            {"key": "password", "path": "password", "mode": 0o400},
            {"key": "user", "path": "user"},
        ]))
        .unwrap();
        write_files(&dir, &data, Some(&items), Some(0o440)).unwrap();
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("password"), mode("user")), (0o400, 0o440));
        write_files(&dir, &data, None, None).unwrap();
        assert_eq!(
            (mode("password"), mode("user")),
            (0o644, 0o644),
            "Kubernetes' default"
        );
        release(pod_dir.path());
        assert!(!is_mount_point(&dir));
        assert!(
            !dir.join("password").exists(),
            "the contents went with the mount"
        );
    }
}
