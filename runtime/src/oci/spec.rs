//! What a Linux container runs, decided without I/O: the process (command and args merged with
//! the image's Entrypoint and Cmd, as Kubernetes does), its environment, user, capabilities,
//! and the OCI runtime spec (`config.json`) handed to libcontainer.
//!
//! The spec starts from oci-spec's defaults (runc's: the usual /proc, /dev, /sys mounts, masked
//! and read-only paths) and is changed as JSON, then read back into oci-spec's `Spec`, which
//! checks every field's type.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::images::ImageRunConfig;
use crate::Mount;

/// The capabilities a container has by default: containerd's set, which Kubernetes uses.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, for privileged containers and `add: [ALL]`.
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The program and arguments, as Kubernetes merges them with the image: `command` replaces the
/// Entrypoint (and drops Cmd); `args` replaces Cmd.
pub fn argv(
    image: &ImageRunConfig,
    command: Option<&[String]>,
    args: Option<&[String]>,
) -> Result<Vec<String>, String> {
    // An empty list is no override (as containerd reads `command: []`).
    let command = command.filter(|c| !c.is_empty());
    let args = args.filter(|a| !a.is_empty());
    let argv: Vec<String> = match (command, args) {
        (Some(c), Some(a)) => c.iter().chain(a).cloned().collect(),
        (Some(c), None) => c.to_vec(),
        (None, Some(a)) => image.entrypoint.iter().chain(a).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(
            "no command specified: the image has no Entrypoint or Cmd and the container \
                    no command"
                .into(),
        );
    }
    Ok(argv)
}

/// The image's environment overlaid with the container's (the container's wins).
pub fn environment(image: &[String], container: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<String> = image
        .iter()
        .filter(|kv| {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !container.iter().any(|(k, _)| k == key)
        })
        .cloned()
        .collect();
    env.extend(container.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// The capability set after securityContext `add` and `drop` (names with or without `CAP_`,
/// any case; `ALL` in either list).
pub fn capabilities(add: &[String], drop: &[String], privileged: bool) -> Vec<String> {
    let canonical = |c: &String| {
        let upper = c.to_ascii_uppercase();
        if upper.starts_with("CAP_") || upper == "ALL" {
            upper
        } else {
            format!("CAP_{upper}")
        }
    };
    if privileged {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    let add: Vec<String> = add.iter().map(canonical).collect();
    let drop: Vec<String> = drop.iter().map(canonical).collect();
    let mut caps: Vec<String> = if add.iter().any(|c| c == "ALL") {
        ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    }
    caps.retain(|c| !drop.contains(c));
    for c in add {
        if c != "ALL" && ALL_CAPABILITIES.contains(&c.as_str()) && !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

/// A user (and group) as the image names it (`uid`, `uid:gid`, `name`, `name:group`), made
/// numeric with the image's /etc/passwd and /etc/group contents.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd_entry = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && (f[0] == name || f[2] == name))
                .then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
        })
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, passwd_entry(user).and_then(|(_, g)| g).unwrap_or(0)),
        Err(_) => match passwd_entry(user) {
            Some((Some(uid), gid)) => (uid, gid.unwrap_or(0)),
            _ => {
                return Err(format!(
                    "unable to find user {user}: no matching entries in passwd file"
                ))
            }
        },
    };
    let gid = match grp {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse::<u32>().ok())?
                })
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
    };
    Ok((uid, gid))
}

/// Whether `program` exists in the container's filesystem: the image, with the container's
/// volumes (`mounts`) over it, as runc finds it after mounting them. A path is looked up as it
/// is, a bare name along the container's PATH. Symbolic links count without being followed
/// (they point into the container's filesystem, which the host does not see at the same place).
pub fn find_executable(
    rootfs: &Path,
    mounts: &[Mount],
    program: &str,
    cwd: &str,
    env: &[String],
) -> Result<(), String> {
    let exists = |p: &str| {
        let rel = p.trim_start_matches('/');
        if rel.is_empty() {
            return false;
        }
        // The innermost volume holding the path, else the image.
        let on_volume = mounts
            .iter()
            .filter_map(|m| {
                let guest = m.guest_path.trim_matches('/');
                let rest = if guest.is_empty() {
                    Some(rel)
                } else {
                    rel.strip_prefix(guest)
                        .filter(|r| r.is_empty() || r.starts_with('/'))
                };
                rest.map(|r| (guest.len(), m.host_path.join(r.trim_start_matches('/'))))
            })
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, path)| path);
        let path = on_volume.unwrap_or_else(|| rootfs.join(rel));
        std::fs::symlink_metadata(path).is_ok()
    };
    if program.contains('/') {
        let path = if program.starts_with('/') {
            program.to_string()
        } else {
            format!("{}/{program}", cwd.trim_end_matches('/'))
        };
        return if exists(&path) {
            Ok(())
        } else {
            Err(format!(
                "exec: {program:?}: stat {program}: no such file or directory"
            ))
        };
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if path
        .split(':')
        .any(|dir| exists(&format!("{dir}/{program}")))
    {
        Ok(())
    } else {
        Err(format!(
            "exec: {program:?}: executable file not found in $PATH"
        ))
    }
}

/// Everything the OCI spec of one container is made from.
#[derive(Clone, Debug)]
pub struct SpecInputs<'a> {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// Whether the process runs on a terminal (`tty: true`).
    pub terminal: bool,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub rootfs: &'a Path,
    pub read_only_root: bool,
    /// The pod's network namespace; None: the host's network.
    pub netns: Option<&'a Path>,
    /// The pod's IPC and UTS namespaces (bind-mounted namespace files), shared by its
    /// containers; None: the container gets its own, named `hostname`.
    pub pod_namespaces: Option<(&'a Path, &'a Path)>,
    pub mounts: &'a [Mount],
    /// An absolute cgroup path under Drover's own parent.
    pub cgroups_path: String,
    pub memory_limit: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub pids_limit: i64,
    pub capabilities: Vec<String>,
    pub privileged: bool,
    pub no_new_privileges: bool,
    /// The host's PID and IPC namespaces instead of the container's and the pod's own.
    pub host_pid: bool,
    pub host_ipc: bool,
    /// The `linux.seccomp` of the spec; None: no filter.
    pub seccomp: Option<Value>,
    /// Whether the host has the unified (v2) cgroup hierarchy only: then the container gets a
    /// cgroup namespace, as runc gives it there.
    pub cgroup_v2: bool,
}

/// The runtime's default seccomp filter for a container with `capabilities` (its bounding
/// set): containerd's default profile ([`super::seccomp_default`]), an allow-list over EPERM,
/// with the rules for this machine's architecture, kernel and the container's capabilities —
/// what `seccompProfile: RuntimeDefault` means on a containerd node.
pub fn default_seccomp(capabilities: &[String]) -> Value {
    use super::seccomp_default::{ARCHITECTURES, DEFAULT_ACTION, DEFAULT_ERRNO, RULES};
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let kernel = kernel_version();
    let has = |c: &&str| capabilities.iter().any(|h| h == c);
    let syscalls: Vec<Value> = RULES
        .iter()
        .filter(|r| r.includes_caps.iter().all(&has))
        .filter(|r| !r.excludes_caps.iter().any(&has))
        .filter(|r| r.arches.is_empty() || r.arches.contains(&arch))
        .filter(|r| {
            r.min_kernel
                .is_none_or(|min| kernel.is_some_and(|k| k >= min))
        })
        .map(|r| {
            let mut rule = json!({"names": r.names, "action": r.action});
            if let Some(errno) = r.errno_ret {
                rule["errnoRet"] = json!(errno);
            }
            if !r.args.is_empty() {
                rule["args"] = r
                    .args
                    .iter()
                    .map(|(index, value, value_two, op)| {
                        json!({"index": index, "value": value, "valueTwo": value_two, "op": op})
                    })
                    .collect();
            }
            rule
        })
        .collect();
    let architectures = ARCHITECTURES
        .iter()
        .find(|(a, _)| *a == arch)
        .map_or(&[][..], |(_, list)| *list);
    json!({
        "defaultAction": DEFAULT_ACTION,
        "defaultErrnoRet": DEFAULT_ERRNO,
        "architectures": architectures,
        "syscalls": syscalls,
    })
}

/// The running kernel's (major, minor), from /proc, read once (not at every container start).
fn kernel_version() -> Option<(u32, u32)> {
    static VERSION: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let mut parts = release.trim().split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    })
}

/// The cpu shares of a request, as the kubelet computes them (minimum 2).
pub fn cpu_shares(millis: u64) -> u64 {
    (millis * 1024 / 1000).max(2)
}

/// The CFS quota of a limit over a 100 ms period (minimum 1 ms, as the kubelet).
pub fn cpu_quota(millis: u64) -> i64 {
    ((millis * 100) as i64).max(1000)
}

/// The OCI runtime spec of a container.
pub fn build(i: &SpecInputs) -> Result<Spec, String> {
    let mut spec = serde_json::to_value(Spec::default()).map_err(|e| e.to_string())?;
    // Joining the pod's UTS namespace, the container finds the hostname already set there.
    spec["hostname"] = match i.pod_namespaces {
        Some(_) => Value::Null,
        None => json!(i.hostname),
    };
    spec["root"] = json!({"path": i.rootfs, "readonly": i.read_only_root});
    spec["annotations"] = json!({});

    let caps = json!(i.capabilities);
    let process = &mut spec["process"];
    process["args"] = json!(i.argv);
    let mut env = i.env.clone();
    if i.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        // As container runtimes do for a terminal: programs need to know what it is.
        env.push("TERM=xterm".into());
    }
    process["env"] = json!(env);
    process["terminal"] = json!(i.terminal);
    process["cwd"] = json!(i.cwd);
    process["user"] = json!({"uid": i.uid, "gid": i.gid});
    process["noNewPrivileges"] = json!(i.no_new_privileges);
    process["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
        // A process that runs as non-root keeps no capability across exec (as with containerd).
        "inheritable": [], "ambient": [],
    });
    // No rlimits of its own: the container inherits the node agent's, as under containerd
    // (a fixed high RLIMIT_NOFILE fails where the host's fs.nr_open is lower).
    process["rlimits"] = json!([]);

    let mut namespaces = vec![json!({"type": "mount"})];
    if !i.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    match i.pod_namespaces {
        Some((ipc, uts)) => {
            if !i.host_ipc {
                namespaces.push(json!({"type": "ipc", "path": ipc}));
            }
            namespaces.push(json!({"type": "uts", "path": uts}));
        }
        None => {
            if !i.host_ipc {
                namespaces.push(json!({"type": "ipc"}));
            }
            namespaces.push(json!({"type": "uts"}));
        }
    }
    if let Some(netns) = i.netns {
        namespaces.push(json!({"type": "network", "path": netns}));
    }
    if i.cgroup_v2 {
        namespaces.push(json!({"type": "cgroup"}));
    }
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "pids": {"limit": i.pids_limit},
    });
    if let Some(bytes) = i.memory_limit {
        resources["memory"] = json!({"limit": bytes});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(m) = i.cpu_request_millis.or(i.cpu_limit_millis) {
        cpu.insert("shares".into(), json!(cpu_shares(m)));
    }
    if let Some(m) = i.cpu_limit_millis {
        cpu.insert("quota".into(), json!(cpu_quota(m)));
        cpu.insert("period".into(), json!(100_000));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if i.privileged {
        resources["devices"] = json!([{"allow": true, "access": "rwm"}]);
    }
    let linux = &mut spec["linux"];
    linux["namespaces"] = json!(namespaces);
    linux["cgroupsPath"] = json!(i.cgroups_path);
    linux["resources"] = resources;
    if i.privileged {
        linux["maskedPaths"] = json!([]);
        linux["readonlyPaths"] = json!([]);
    }
    if let Some(filter) = &i.seccomp {
        linux["seccomp"] = filter.clone();
    }

    let mounts = spec["mounts"]
        .as_array_mut()
        .ok_or("the default spec has no mounts")?;
    if i.privileged {
        for m in mounts.iter_mut() {
            if m["destination"] == "/sys" {
                m["options"] = json!(["nosuid", "noexec", "nodev"]);
            }
        }
    }
    for m in i.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.read_only { "ro" } else { "rw" });
        mounts.push(json!({
            "destination": m.guest_path,
            "type": "bind",
            "source": m.host_path,
            "options": options,
        }));
    }
    serde_json::from_value(spec).map_err(|e| format!("invalid container spec: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRunConfig {
        ImageRunConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            working_dir: None,
            user: None,
        }
    }

    #[test]
    fn command_and_args_merge_with_the_image_as_kubernetes_does() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let img = image();
        assert_eq!(
            argv(&img, None, None).unwrap(),
            s(&["/entry", "serve", "--port=80"])
        );
        assert_eq!(
            argv(&img, None, Some(&s(&["x"]))).unwrap(),
            s(&["/entry", "x"])
        );
        assert_eq!(argv(&img, Some(&s(&["sh"])), None).unwrap(), s(&["sh"]));
        assert_eq!(
            argv(&img, Some(&s(&["sh"])), Some(&s(&["-c", "true"]))).unwrap(),
            s(&["sh", "-c", "true"])
        );
        assert!(argv(&ImageRunConfig::default(), None, None).is_err());
        // Empty lists override nothing.
        assert_eq!(
            argv(&img, Some(&[]), Some(&[])).unwrap(),
            s(&["/entry", "serve", "--port=80"])
        );
    }

    #[test]
    fn the_container_environment_wins_over_the_image() {
        let env = environment(&image().env, &[("MODE".into(), "pod".into())]);
        assert_eq!(env, vec!["PATH=/bin", "MODE=pod"]);
    }

    #[test]
    fn capabilities_add_and_drop() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let caps = capabilities(&s(&["net_admin"]), &s(&["KILL", "CAP_CHOWN"]), false);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(!caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(capabilities(&[], &s(&["ALL"]), false), Vec::<String>::new());
        assert_eq!(
            capabilities(&s(&["NET_BIND_SERVICE"]), &s(&["all"]), false),
            vec!["CAP_NET_BIND_SERVICE"]
        );
        assert!(capabilities(&[], &[], true).contains(&"CAP_SYS_ADMIN".to_string()));
        // Unknown names are not passed on to the kernel.
        assert!(!capabilities(&s(&["BOGUS"]), &[], false).contains(&"CAP_BOGUS".to_string()));
    }

    #[test]
    fn users_resolve_through_the_image_files() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n";
        let group = "root:x:0:\nweb:x:77:\n";
        assert_eq!(resolve_user("www", passwd, group), Ok((33, 34)));
        assert_eq!(resolve_user("33", passwd, group), Ok((33, 34)));
        assert_eq!(resolve_user("1000", passwd, group), Ok((1000, 0)));
        assert_eq!(resolve_user("www:web", passwd, group), Ok((33, 77)));
        assert_eq!(resolve_user("www:5", passwd, group), Ok((33, 5)));
        assert!(resolve_user("nobody", passwd, group).is_err());
        assert!(resolve_user("www:nogroup", passwd, group).is_err());
    }

    #[test]
    fn executables_are_found_along_the_path_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/busybox"), b"").unwrap();
        std::os::unix::fs::symlink("/bin/busybox", dir.path().join("bin/sh")).unwrap();
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        assert!(find_executable(dir.path(), &[], "sh", "/", &env).is_ok());
        assert!(find_executable(dir.path(), &[], "/bin/busybox", "/", &env).is_ok());
        assert!(find_executable(dir.path(), &[], "./busybox", "/bin", &env).is_ok());
        assert!(find_executable(dir.path(), &[], "./busybox", "/", &env).is_err());
        let err = find_executable(dir.path(), &[], "nope", "/", &env).unwrap_err();
        assert!(err.contains("executable file not found in $PATH"), "{err}");
        assert!(find_executable(dir.path(), &[], "/", "/", &env).is_err());

        // A program on a volume is found there, the innermost volume first; the image's file
        // under a volume's mount point is hidden by it.
        let volume = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(volume.path().join("bin")).unwrap();
        std::fs::write(volume.path().join("bin/tool"), b"").unwrap();
        let mounts = [
            Mount {
                host_path: volume.path().to_path_buf(),
                guest_path: "/opt/tools".into(),
                read_only: true,
            },
            Mount {
                host_path: dir.path().join("empty"),
                guest_path: "/opt".into(),
                read_only: true,
            },
        ];
        assert!(find_executable(dir.path(), &mounts, "/opt/tools/bin/tool", "/", &env).is_ok());
        let path = vec!["PATH=/opt/tools/bin".to_string()];
        assert!(find_executable(dir.path(), &mounts, "tool", "/", &path).is_ok());
        assert!(find_executable(dir.path(), &mounts, "/opt/toolsbin/tool", "/", &env).is_err());
        let hidden = [Mount {
            host_path: volume.path().to_path_buf(),
            guest_path: "/bin".into(),
            read_only: true,
        }];
        assert!(find_executable(dir.path(), &hidden, "/bin/busybox", "/", &env).is_err());
    }

    #[test]
    fn the_spec_carries_limits_namespaces_and_hardening() {
        let rootfs = Path::new("/var/lib/x/rootfs");
        let netns = Path::new("/run/netns/drover-abc");
        let mounts = [Mount {
            host_path: "/data/v".into(),
            guest_path: "/data".into(),
            read_only: true,
        }];
        let inputs = SpecInputs {
            argv: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            terminal: false,
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            hostname: "web-1".into(),
            rootfs,
            read_only_root: true,
            netns: Some(netns),
            pod_namespaces: None,
            mounts: &mounts,
            cgroups_path: "/drover/abc".into(),
            memory_limit: Some(64 << 20),
            cpu_request_millis: Some(250),
            cpu_limit_millis: Some(500),
            pids_limit: 1024,
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            privileged: false,
            no_new_privileges: true,
            host_pid: false,
            host_ipc: false,
            seccomp: Some(default_seccomp(&[])),
            cgroup_v2: false,
        };
        let spec = build(&inputs).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "web-1");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 1024);
        assert_eq!(v["linux"]["cgroupsPath"], "/drover/abc");
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = v["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        let allowed = |name: &str| {
            rules.iter().any(|r| {
                r["action"] == "SCMP_ACT_ALLOW"
                    && r["args"].is_null()
                    && r["names"].as_array().unwrap().contains(&json!(name))
            })
        };
        assert!(allowed("read") && allowed("execve"));
        assert!(
            !allowed("mount") && !allowed("reboot"),
            "not without their capabilities"
        );
        assert!(
            rules
                .iter()
                .any(|r| r["names"] == json!(["clone"])
                    && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"),
            "clone without new namespaces only"
        );
        assert!(rules
            .iter()
            .any(|r| r["names"] == json!(["clone3"]) && r["errnoRet"] == 38));
        let admin = default_seccomp(&["CAP_SYS_ADMIN".to_string()]);
        let admin_rules = admin["syscalls"].as_array().unwrap();
        assert!(admin_rules
            .iter()
            .any(|r| r["names"].as_array().unwrap().contains(&json!("mount"))));
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/netns/drover-abc"));
        let data = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert!(data["options"].as_array().unwrap().contains(&json!("ro")));

        let host = build(&SpecInputs {
            host_pid: true,
            host_ipc: true,
            seccomp: None,
            argv: inputs.argv.clone(),
            env: inputs.env.clone(),
            cwd: inputs.cwd.clone(),
            hostname: inputs.hostname.clone(),
            cgroups_path: inputs.cgroups_path.clone(),
            capabilities: inputs.capabilities.clone(),
            ..inputs
        })
        .unwrap();
        let v = serde_json::to_value(&host).unwrap();
        let types: Vec<&Value> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| &n["type"])
            .collect();
        assert!(
            !types.contains(&&json!("pid")) && !types.contains(&&json!("ipc")),
            "{types:?}"
        );
        assert!(v["linux"]["seccomp"].is_null(), "Unconfined");

        let privileged = build(&SpecInputs {
            privileged: true,
            seccomp: None,
            ..inputs
        })
        .unwrap();
        let v = serde_json::to_value(&privileged).unwrap();
        assert!(v["linux"]["seccomp"].is_null());
        assert_eq!(v["linux"]["maskedPaths"], json!([]));
    }
}
