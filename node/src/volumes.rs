//! A pod's volumes on the node: emptyDir and the files of configMap and secret volumes under
//! the pod's directory, hostPath as it is. Containers see them as preopened directories at
//! their mountPath. configMap and secret files are rewritten when the objects change (the pod
//! worker calls [`sync`] again every few seconds).

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
) -> Result<(), ConfigError> {
    let err = |e: std::io::Error| ConfigError(format!("cannot write {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    let wanted: Vec<(String, &Vec<u8>)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v)))
            .collect(),
        None => data.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (path, value) in &wanted {
        if !plain_relative(path) {
            return Err(ConfigError(format!("invalid volume file path {path:?}")));
        }
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        if std::fs::read(&file).ok().as_deref() != Some(value.as_slice()) {
            // Write aside and rename, so a reader sees the old or the new file, never half.
            let tmp = file.with_extension("drover-tmp");
            std::fs::write(&tmp, value).map_err(err)?;
            std::fs::rename(&tmp, &file).map_err(err)?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(err)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && !wanted.iter().any(|(p, _)| *p == name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
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
                    write_files(&dir, &bytes, cm.items.as_ref())?;
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
            match sources.secret(&name).await? {
                Some(data) => write_files(&dir, &data, s.items.as_ref())?,
                None if s.optional == Some(true) => std::fs::create_dir_all(&dir).map_err(err)?,
                None => {
                    return Err(ConfigError(format!(
                        "secret {name:?} not found (volume {:?})",
                        v.name
                    )))
                }
            }
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
                "volume {:?}: only emptyDir, configMap, secret and hostPath volumes are supported",
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
}
