//! containerd's default seccomp profile (`contrib/seccomp/seccomp_default.go`, function
//! `DefaultProfile`, containerd v2.0.11, tag commit ea0b49555e46d04b7f7d844d1920f69d095e1df2),
//! as data: the profile containerd (and so Kubernetes' `seccompProfile: RuntimeDefault` on a
//! containerd node) applies to a container.
//!
//! It is an allow-list over a default action of `SCMP_ACT_ERRNO` with errno EPERM (1): containerd
//! writes `defaultAction: SCMP_ACT_ERRNO` without `defaultErrnoRet`, which the OCI runtimes turn
//! into EPERM. On top of one big unconditional allow rule come argument-conditioned rules
//! (`socket` for every address family but AF_ALG and AF_VSOCK, `personality` for five personas),
//! one rule conditioned on the kernel version (ptrace and process_vm_* from Linux 4.8), rules per
//! architecture, rules per capability of the container's bounding set, and, when the container
//! lacks CAP_SYS_ADMIN, a `clone` that may not create namespaces and a `clone3` that fails with
//! ENOSYS (38) so that libc falls back to `clone`.
//!
//! Transcription notes:
//! - Only the x86_64 (`amd64`) and aarch64 (`arm64`) parts are here. containerd also has
//!   per-architecture rules for ppc64le (`sync_file_range2`, `swapcontext`), 386 (`modify_ldt`),
//!   s390/s390x (`s390_pci_mmio_read`, `s390_pci_mmio_write`, `s390_runtime_instr`, and a
//!   non-admin `clone` rule on argument 1 instead of 0) and riscv64 (`riscv_flush_icache`); they
//!   are left out, so the non-admin `clone` rule below carries no architecture.
//! - containerd's `arches()` gives the seccomp architectures of the profile: [`ARCHITECTURES`].
//! - containerd emits the capability rules while walking `process.capabilities.bounding`, so their
//!   order in its output follows the order of the container's capabilities; here they are in the
//!   order of containerd's `switch`.
//! - The kernel-version rule needs a field the brief's shape had not: [`Rule::min_kernel`].
//! - Later containerd releases (v2.2) add `getxattrat`, `listmount`, `listxattrat`,
//!   `lsm_get_self_attr`, `lsm_list_modules`, `lsm_set_self_attr`, `mseal`, `removexattrat`,
//!   `setxattrat`, `statmount`, `uretprobe` to the big list (and `riscv_hwprobe` on riscv64);
//!   v1.7 also allows `io_uring_enter`, `io_uring_register`, `io_uring_setup`, which v2.0 dropped.

/// One rule of the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub names: &'static [&'static str],
    /// "SCMP_ACT_ALLOW" or "SCMP_ACT_ERRNO".
    pub action: &'static str,
    pub errno_ret: Option<u32>,
    /// Argument conditions: (index, value, value_two, op) with op one of "SCMP_CMP_EQ",
    /// "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_GT", etc. (OCI names). Several
    /// conditions in one rule must all hold.
    pub args: &'static [(u32, u64, u64, &'static str)],
    /// The rule applies only when the container has ALL of these capabilities (in containerd:
    /// the capability is in `process.capabilities.bounding`) ...
    pub includes_caps: &'static [&'static str],
    /// ... and none of these (containerd: its `admin` flag, i.e. CAP_SYS_ADMIN not in the
    /// bounding set).
    pub excludes_caps: &'static [&'static str],
    /// The rule applies only on these architectures (containerd's `switch runtime.GOARCH`, Go
    /// names: "amd64", "arm64", "arm"); empty: all.
    pub arches: &'static [&'static str],
    /// The rule applies only when the running kernel is at least (major, minor) (containerd's
    /// `kernelversion.GreaterEqualThan`; containerd leaves the rule out when it cannot read the
    /// kernel version); None: any kernel.
    pub min_kernel: Option<(u32, u32)>,
}

/// The default action of the profile (containerd: SCMP_ACT_ERRNO with errno EPERM = 1).
pub const DEFAULT_ACTION: &str = "SCMP_ACT_ERRNO";
pub const DEFAULT_ERRNO: u32 = 1;

/// containerd's `arches()`: the seccomp architectures of the profile, by Go architecture.
pub const ARCHITECTURES: &[(&str, &[&str])] = &[
    (
        "amd64",
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    ),
    ("arm64", &["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]),
];

/// ENOSYS, which the non-admin `clone3` rule returns.
pub const ENOSYS: u32 = 38;

/// AF_ALG and AF_VSOCK, the address families `socket` may not open (AF_ALG + 1 = AF_NFC lies
/// between them and stays allowed).
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
/// CLONE_NEWCGROUP = 0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 |
/// 0x40000000 | 0x02000000.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// An unconditional allow rule, the base the rules below override.
const ALLOW: Rule = Rule {
    names: &[],
    action: "SCMP_ACT_ALLOW",
    errno_ret: None,
    args: &[],
    includes_caps: &[],
    excludes_caps: &[],
    arches: &[],
    min_kernel: None,
};

/// The rules, in containerd's order.
pub const RULES: &[Rule] = &[
    // The big allow list.
    Rule {
        names: &[
            "accept",
            "accept4",
            "access",
            "adjtimex",
            "alarm",
            "bind",
            "brk",
            "cachestat", // kernel v6.5, libseccomp v2.5.5
            "capget",
            "capset",
            "chdir",
            "chmod",
            "chown",
            "chown32",
            "clock_adjtime",
            "clock_adjtime64",
            "clock_getres",
            "clock_getres_time64",
            "clock_gettime",
            "clock_gettime64",
            "clock_nanosleep",
            "clock_nanosleep_time64",
            "close",
            "close_range",
            "connect",
            "copy_file_range",
            "creat",
            "dup",
            "dup2",
            "dup3",
            "epoll_create",
            "epoll_create1",
            "epoll_ctl",
            "epoll_ctl_old",
            "epoll_pwait",
            "epoll_pwait2",
            "epoll_wait",
            "epoll_wait_old",
            "eventfd",
            "eventfd2",
            "execve",
            "execveat",
            "exit",
            "exit_group",
            "faccessat",
            "faccessat2",
            "fadvise64",
            "fadvise64_64",
            "fallocate",
            "fanotify_mark",
            "fchdir",
            "fchmod",
            "fchmodat",
            "fchmodat2", // kernel v6.6, libseccomp v2.5.5
            "fchown",
            "fchown32",
            "fchownat",
            "fcntl",
            "fcntl64",
            "fdatasync",
            "fgetxattr",
            "flistxattr",
            "flock",
            "fork",
            "fremovexattr",
            "fsetxattr",
            "fstat",
            "fstat64",
            "fstatat64",
            "fstatfs",
            "fstatfs64",
            "fsync",
            "ftruncate",
            "ftruncate64",
            "futex",
            "futex_requeue", // kernel v6.7, libseccomp v2.5.5
            "futex_time64",
            "futex_wait", // kernel v6.7, libseccomp v2.5.5
            "futex_waitv",
            "futex_wake", // kernel v6.7, libseccomp v2.5.5
            "futimesat",
            "getcpu",
            "getcwd",
            "getdents",
            "getdents64",
            "getegid",
            "getegid32",
            "geteuid",
            "geteuid32",
            "getgid",
            "getgid32",
            "getgroups",
            "getgroups32",
            "getitimer",
            "getpeername",
            "getpgid",
            "getpgrp",
            "getpid",
            "getppid",
            "getpriority",
            "getrandom",
            "getresgid",
            "getresgid32",
            "getresuid",
            "getresuid32",
            "getrlimit",
            "get_robust_list",
            "getrusage",
            "getsid",
            "getsockname",
            "getsockopt",
            "get_thread_area",
            "gettid",
            "gettimeofday",
            "getuid",
            "getuid32",
            "getxattr",
            "inotify_add_watch",
            "inotify_init",
            "inotify_init1",
            "inotify_rm_watch",
            "io_cancel",
            "ioctl",
            "io_destroy",
            "io_getevents",
            "io_pgetevents",
            "io_pgetevents_time64",
            "ioprio_get",
            "ioprio_set",
            "io_setup",
            "io_submit",
            "ipc",
            "kill",
            "landlock_add_rule",
            "landlock_create_ruleset",
            "landlock_restrict_self",
            "lchown",
            "lchown32",
            "lgetxattr",
            "link",
            "linkat",
            "listen",
            "listxattr",
            "llistxattr",
            "_llseek",
            "lremovexattr",
            "lseek",
            "lsetxattr",
            "lstat",
            "lstat64",
            "madvise",
            "membarrier",
            "memfd_create",
            "memfd_secret",
            "mincore",
            "mkdir",
            "mkdirat",
            "mknod",
            "mknodat",
            "mlock",
            "mlock2",
            "mlockall",
            "map_shadow_stack", // kernel v6.6, libseccomp v2.5.5
            "mmap",
            "mmap2",
            "mprotect",
            "mq_getsetattr",
            "mq_notify",
            "mq_open",
            "mq_timedreceive",
            "mq_timedreceive_time64",
            "mq_timedsend",
            "mq_timedsend_time64",
            "mq_unlink",
            "mremap",
            "msgctl",
            "msgget",
            "msgrcv",
            "msgsnd",
            "msync",
            "munlock",
            "munlockall",
            "munmap",
            "name_to_handle_at",
            "nanosleep",
            "newfstatat",
            "_newselect",
            "open",
            "openat",
            "openat2",
            "pause",
            "pidfd_open",
            "pidfd_send_signal",
            "pipe",
            "pipe2",
            "pkey_alloc",
            "pkey_free",
            "pkey_mprotect",
            "poll",
            "ppoll",
            "ppoll_time64",
            "prctl",
            "pread64",
            "preadv",
            "preadv2",
            "prlimit64",
            "process_mrelease",
            "pselect6",
            "pselect6_time64",
            "pwrite64",
            "pwritev",
            "pwritev2",
            "read",
            "readahead",
            "readlink",
            "readlinkat",
            "readv",
            "recv",
            "recvfrom",
            "recvmmsg",
            "recvmmsg_time64",
            "recvmsg",
            "remap_file_pages",
            "removexattr",
            "rename",
            "renameat",
            "renameat2",
            "restart_syscall",
            "rmdir",
            "rseq",
            "rt_sigaction",
            "rt_sigpending",
            "rt_sigprocmask",
            "rt_sigqueueinfo",
            "rt_sigreturn",
            "rt_sigsuspend",
            "rt_sigtimedwait",
            "rt_sigtimedwait_time64",
            "rt_tgsigqueueinfo",
            "sched_getaffinity",
            "sched_getattr",
            "sched_getparam",
            "sched_get_priority_max",
            "sched_get_priority_min",
            "sched_getscheduler",
            "sched_rr_get_interval",
            "sched_rr_get_interval_time64",
            "sched_setaffinity",
            "sched_setattr",
            "sched_setparam",
            "sched_setscheduler",
            "sched_yield",
            "seccomp",
            "select",
            "semctl",
            "semget",
            "semop",
            "semtimedop",
            "semtimedop_time64",
            "send",
            "sendfile",
            "sendfile64",
            "sendmmsg",
            "sendmsg",
            "sendto",
            "setfsgid",
            "setfsgid32",
            "setfsuid",
            "setfsuid32",
            "setgid",
            "setgid32",
            "setgroups",
            "setgroups32",
            "setitimer",
            "setpgid",
            "setpriority",
            "setregid",
            "setregid32",
            "setresgid",
            "setresgid32",
            "setresuid",
            "setresuid32",
            "setreuid",
            "setreuid32",
            "setrlimit",
            "set_robust_list",
            "setsid",
            "setsockopt",
            "set_thread_area",
            "set_tid_address",
            "setuid",
            "setuid32",
            "setxattr",
            "shmat",
            "shmctl",
            "shmdt",
            "shmget",
            "shutdown",
            "sigaltstack",
            "signalfd",
            "signalfd4",
            "sigprocmask",
            "sigreturn",
            "socketcall",
            "socketpair",
            "splice",
            "stat",
            "stat64",
            "statfs",
            "statfs64",
            "statx",
            "symlink",
            "symlinkat",
            "sync",
            "sync_file_range",
            "syncfs",
            "sysinfo",
            "tee",
            "tgkill",
            "time",
            "timer_create",
            "timer_delete",
            "timer_getoverrun",
            "timer_gettime",
            "timer_gettime64",
            "timer_settime",
            "timer_settime64",
            "timerfd_create",
            "timerfd_gettime",
            "timerfd_gettime64",
            "timerfd_settime",
            "timerfd_settime64",
            "times",
            "tkill",
            "truncate",
            "truncate64",
            "ugetrlimit",
            "umask",
            "uname",
            "unlink",
            "unlinkat",
            "utime",
            "utimensat",
            "utimensat_time64",
            "utimes",
            "vfork",
            "vmsplice",
            "wait4",
            "waitid",
            "waitpid",
            "write",
            "writev",
        ],
        ..ALLOW
    },
    // socket(2) for every address family except AF_ALG (38) and AF_VSOCK (40), as three
    // single-condition ranges (containerd's comment: one rule with two "!=" conditions on the
    // same argument would behave as OR in runc). socketcall(2), allowed above, is not filtered.
    Rule {
        names: &["socket"],
        args: &[(0, AF_ALG, 0, "SCMP_CMP_LT")],
        ..ALLOW
    },
    Rule {
        names: &["socket"],
        args: &[(0, AF_ALG + 1, 0, "SCMP_CMP_EQ")],
        ..ALLOW
    },
    Rule {
        names: &["socket"],
        args: &[(0, AF_VSOCK, 0, "SCMP_CMP_GT")],
        ..ALLOW
    },
    // personality(2) for PER_LINUX, PER_LINUX32 (0x0008), UNAME26 (0x20000),
    // PER_LINUX32|UNAME26 and the query 0xffffffff.
    Rule {
        names: &["personality"],
        args: &[(0, 0x0, 0, "SCMP_CMP_EQ")],
        ..ALLOW
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0x0008, 0, "SCMP_CMP_EQ")],
        ..ALLOW
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0x20000, 0, "SCMP_CMP_EQ")],
        ..ALLOW
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0x20008, 0, "SCMP_CMP_EQ")],
        ..ALLOW
    },
    Rule {
        names: &["personality"],
        args: &[(0, 0xffff_ffff, 0, "SCMP_CMP_EQ")],
        ..ALLOW
    },
    // Included by kernel version: from Linux 4.8 ptrace can no longer bypass seccomp.
    Rule {
        names: &["process_vm_readv", "process_vm_writev", "ptrace"],
        min_kernel: Some((4, 8)),
        ..ALLOW
    },
    // Included by architecture.
    Rule {
        names: &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        arches: &["arm", "arm64"],
        ..ALLOW
    },
    Rule {
        names: &["arch_prctl", "modify_ldt"],
        arches: &["amd64"],
        ..ALLOW
    },
    // Included by capability.
    Rule {
        names: &["open_by_handle_at"],
        includes_caps: &["CAP_DAC_READ_SEARCH"],
        ..ALLOW
    },
    Rule {
        names: &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        includes_caps: &["CAP_SYS_ADMIN"],
        ..ALLOW
    },
    Rule {
        names: &["reboot"],
        includes_caps: &["CAP_SYS_BOOT"],
        ..ALLOW
    },
    Rule {
        names: &["chroot"],
        includes_caps: &["CAP_SYS_CHROOT"],
        ..ALLOW
    },
    Rule {
        names: &["delete_module", "init_module", "finit_module"],
        includes_caps: &["CAP_SYS_MODULE"],
        ..ALLOW
    },
    Rule {
        names: &["acct"],
        includes_caps: &["CAP_SYS_PACCT"],
        ..ALLOW
    },
    Rule {
        names: &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        includes_caps: &["CAP_SYS_PTRACE"],
        ..ALLOW
    },
    Rule {
        names: &["iopl", "ioperm"],
        includes_caps: &["CAP_SYS_RAWIO"],
        ..ALLOW
    },
    Rule {
        names: &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        includes_caps: &["CAP_SYS_TIME"],
        ..ALLOW
    },
    Rule {
        names: &["vhangup"],
        includes_caps: &["CAP_SYS_TTY_CONFIG"],
        ..ALLOW
    },
    Rule {
        names: &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node", // kernel v5.17, libseccomp v2.5.4
        ],
        includes_caps: &["CAP_SYS_NICE"],
        ..ALLOW
    },
    Rule {
        names: &["syslog"],
        includes_caps: &["CAP_SYSLOG"],
        ..ALLOW
    },
    Rule {
        names: &["bpf"],
        includes_caps: &["CAP_BPF"],
        ..ALLOW
    },
    Rule {
        names: &["perf_event_open"],
        includes_caps: &["CAP_PERFMON"],
        ..ALLOW
    },
    // Without CAP_SYS_ADMIN: clone(2) only when its flags (argument 0 on x86_64 and aarch64;
    // containerd uses argument 1 on s390/s390x) ask for no new namespace ...
    Rule {
        names: &["clone"],
        args: &[(0, CLONE_NAMESPACE_FLAGS, 0, "SCMP_CMP_MASKED_EQ")],
        excludes_caps: &["CAP_SYS_ADMIN"],
        ..ALLOW
    },
    // ... and clone3(2), whose flags seccomp cannot read, fails with ENOSYS instead of the
    // default EPERM so that libc falls back to clone(2) (moby/moby#42681).
    Rule {
        names: &["clone3"],
        action: "SCMP_ACT_ERRNO",
        errno_ret: Some(ENOSYS),
        excludes_caps: &["CAP_SYS_ADMIN"],
        ..ALLOW
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `name` is allowed with no condition of any kind.
    fn allowed_unconditionally(name: &str) -> bool {
        RULES.iter().any(|r| {
            r.action == "SCMP_ACT_ALLOW"
                && r.args.is_empty()
                && r.includes_caps.is_empty()
                && r.excludes_caps.is_empty()
                && r.arches.is_empty()
                && r.min_kernel.is_none()
                && r.names.contains(&name)
        })
    }

    /// The rules that name `name`.
    fn rules_for(name: &str) -> Vec<&'static Rule> {
        RULES.iter().filter(|r| r.names.contains(&name)).collect()
    }

    #[test]
    fn main_allow_rule_has_no_duplicates() {
        let names = RULES[0].names;
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            names.len(),
            "duplicate names in the main allow rule"
        );
        // As many names as containerd v2.0.11's list.
        assert_eq!(names.len(), 352);
    }

    #[test]
    fn basics_are_allowed_unconditionally() {
        for name in ["read", "write", "execve", "exit_group"] {
            assert!(
                allowed_unconditionally(name),
                "{name} should be allowed unconditionally"
            );
        }
    }

    #[test]
    fn mount_only_with_cap_sys_admin() {
        let rules = rules_for("mount");
        assert!(!rules.is_empty());
        for r in rules {
            assert_eq!(r.action, "SCMP_ACT_ALLOW");
            assert!(r.includes_caps.contains(&"CAP_SYS_ADMIN"), "{r:?}");
        }
        assert!(!allowed_unconditionally("mount"));
    }

    #[test]
    fn reboot_only_with_cap_sys_boot() {
        let rules = rules_for("reboot");
        assert!(!rules.is_empty());
        for r in rules {
            assert_eq!(r.action, "SCMP_ACT_ALLOW");
            assert!(r.includes_caps.contains(&"CAP_SYS_BOOT"), "{r:?}");
        }
        assert!(!allowed_unconditionally("reboot"));
    }

    #[test]
    fn clone3_without_cap_sys_admin_is_enosys() {
        let r = rules_for("clone3")
            .into_iter()
            .find(|r| r.excludes_caps.contains(&"CAP_SYS_ADMIN"))
            .expect("a non-admin clone3 rule");
        assert_eq!(r.action, "SCMP_ACT_ERRNO");
        assert_eq!(r.errno_ret, Some(38));
    }
}
