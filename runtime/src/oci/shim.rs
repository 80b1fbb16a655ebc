//! The container shim: `drover shim run|exec|delete`, one short-lived process per container
//! (and per exec), where libcontainer does its work.
//!
//! Why a process of its own, as containerd has its shims: libcontainer starts a container by
//! cloning the calling process, and the clone runs Rust code (allocations included) before it
//! execs. Cloned from the node agent, a multi-threaded tokio process, the child could find a
//! lock (the allocator's) held by a thread that does not exist in it, and hang. The shim is
//! single-threaded while it clones. It also keeps a container's output flowing to its log
//! file on its own, and kills the container when the agent that started it goes away.
//!
//! `run` talks to the agent over its stdin and stdout: it writes one JSON [`Report`] per line
//! (started, or failed; then exited), and reads commands, one per line (`TERM`, `KILL`).
//! End of input means the agent is gone: the container is killed.

use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::get_executor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxSeccomp, Spec};
use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};

use crate::logs::{LogFile, Stream};

/// What the shim tells the agent, one JSON object per line on its stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// The container's process runs (its pid on the host).
    Started { pid: i32 },
    /// It could not be created or started: why.
    Failed { message: String },
    /// It ended: its exit code, or the signal that ended it, and whether the kernel's OOM
    /// killer acted in its cgroup.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
    },
}

/// `drover shim run`'s arguments.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// libcontainer's state directory (one per node).
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    /// The container's log file (CRI format).
    pub log: PathBuf,
    /// The container's cgroup, relative to each hierarchy's mount (its OOM count is read there).
    pub cgroup: String,
    /// Where `kubectl attach` connects ([`super::attach`]).
    pub attach_socket: Option<PathBuf>,
    /// The container's `stdin`, `stdinOnce` and `tty`.
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

fn report(r: &Report) {
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(r).expect("a report serialises");
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Files removed when it is dropped.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A Unix listener at `path`, in place of whatever a previous run left there. Its directory
/// is root's alone: whoever can connect to an attach socket types into the container.
fn bind_fresh(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(path);
    std::os::unix::net::UnixListener::bind(path)
}

fn builder(root: &Path, id: &str) -> Result<ContainerBuilder, String> {
    ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(root)
        .map_err(|e| format!("container state directory {}: {e}", root.display()))
}

/// Creates and starts the container, copies its output to the log, waits for it, reports,
/// and deletes it (its cgroup and state go with it).
pub fn run(args: RunArgs) -> ExitCode {
    let log = match LogFile::create(&args.log) {
        Ok(l) => l,
        Err(e) => {
            report(&Report::Failed {
                message: format!("cannot open the log {}: {e}", args.log.display()),
            });
            return ExitCode::FAILURE;
        }
    };
    // The sockets go with the shim, however it ends.
    let _sockets = RemoveOnDrop(
        args.attach_socket
            .iter()
            .flat_map(|p| [p.clone(), p.with_extension("console")])
            .collect(),
    );
    // The attach socket is bound now, while the shim has one thread; it serves once the
    // container runs.
    let attach_listener = match args.attach_socket.as_deref().map(bind_fresh).transpose() {
        Ok(l) => l,
        Err(e) => {
            report(&Report::Failed {
                message: format!("cannot make the attach socket: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    // A terminal (`tty: true`) is made by libcontainer in the container's devpts and handed
    // over through a console socket; otherwise stdout and stderr are pipes, and stdin a pipe
    // too when the container keeps one open (`stdin: true`), else /dev/null.
    let console = match (args.tty, &args.attach_socket) {
        (true, Some(socket)) => {
            let path = socket.with_extension("console");
            match bind_fresh(&path) {
                Ok(l) => Some((l, path)),
                Err(e) => {
                    report(&Report::Failed {
                        message: format!("cannot make the console socket: {e}"),
                    });
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let pipes = (|| -> std::io::Result<_> {
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let (in_r, in_w) = if args.stdin {
            let (r, w) = std::io::pipe()?;
            (
                OwnedFd::from(r),
                Some(std::fs::File::from(OwnedFd::from(w))),
            )
        } else {
            (OwnedFd::from(std::fs::File::open("/dev/null")?), None)
        };
        Ok((
            out_r,
            OwnedFd::from(out_w),
            err_r,
            OwnedFd::from(err_w),
            in_r,
            in_w,
        ))
    })();
    let (out_r, out_w, err_r, err_w, in_r, in_w) = match pipes {
        Ok(p) => p,
        Err(e) => {
            report(&Report::Failed {
                message: format!("cannot make the container's pipes: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    let created = builder(&args.root, &args.id).and_then(|b| {
        let b = match &console {
            Some((_, path)) => b.with_console_socket(Some(path)),
            None => b.with_stdin(in_r).with_stdout(out_w).with_stderr(err_w),
        };
        b.as_init(&args.bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| e.to_string())
    });
    // The terminal was sent while the container was created.
    let terminal = match (&created, &console) {
        (Ok(_), Some((listener, path))) => {
            match crate::terminal::receive_blocking(listener, path) {
                Ok(t) => Some(std::fs::File::from(t)),
                Err(e) => {
                    if let Ok(mut c) = created {
                        let _ = c.delete(true);
                    }
                    report(&Report::Failed {
                        message: format!("no terminal from the container: {e}"),
                    });
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    if let Some((_, path)) = &console {
        let _ = std::fs::remove_file(path);
    }
    let mut container = match created {
        Ok(c) => c,
        Err(message) => {
            delete_quietly(&args.root, &args.id);
            report(&Report::Failed { message });
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        report(&Report::Failed {
            message: e.to_string(),
        });
        return ExitCode::FAILURE;
    }
    let Some(pid) = container.pid().and_then(|p| Pid::from_raw(p.as_raw())) else {
        let _ = container.delete(true);
        report(&Report::Failed {
            message: "the container started without a process".into(),
        });
        return ExitCode::FAILURE;
    };
    report(&Report::Started {
        pid: pid.as_raw_nonzero().get(),
    });

    // From here on the shim may have threads: it clones no more.
    let attachments = super::attach::Attachments::default();
    let copy = |mut from: std::fs::File, stream: Stream, channel: u8| {
        let (log, attachments) = (log.clone(), attachments.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        log.write(stream, &buf[..n]);
                        attachments.send(channel, &buf[..n]);
                    }
                }
            }
        })
    };
    let mut copiers = Vec::new();
    let mut input = in_w;
    let mut shared_terminal = None;
    match terminal {
        // Everything the terminal shows is the container's stdout (as in the kubelet's logs).
        Some(t) => {
            let reader = t.try_clone();
            let writer = t.try_clone();
            let t = std::sync::Arc::new(t);
            if let Ok(r) = reader {
                copiers.push(copy(r, Stream::Stdout, super::attach::STDOUT));
            }
            if args.stdin {
                input = writer.ok();
            }
            shared_terminal = Some(t);
        }
        None => {
            copiers.push(copy(
                std::fs::File::from(OwnedFd::from(out_r)),
                Stream::Stdout,
                super::attach::STDOUT,
            ));
            copiers.push(copy(
                std::fs::File::from(OwnedFd::from(err_r)),
                Stream::Stderr,
                super::attach::STDERR,
            ));
        }
    }
    if let Some(listener) = attach_listener {
        super::attach::serve(
            listener,
            attachments.clone(),
            super::attach::Options {
                input: input.map(|f| std::sync::Arc::new(std::sync::Mutex::new(Some(f)))),
                stdin_once: args.stdin_once,
                terminal: shared_terminal.clone(),
            },
        );
    }
    // Set once the process is reaped: its pid may then belong to another process.
    let reaped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gone = reaped.clone();
    let signal = move |sig: Signal| {
        if !gone.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    };
    std::thread::spawn(move || {
        let stdin = std::io::stdin().lock();
        for line in stdin.lines() {
            match line.as_deref().map(str::trim) {
                Ok("TERM") => signal(Signal::TERM),
                Ok("KILL") => signal(Signal::KILL),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // The agent is gone: nobody would ever stop this container.
        signal(Signal::KILL);
    });

    let (code, signal) = loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    break (Some(code), None);
                }
                if let Some(sig) = status.terminating_signal() {
                    break (None, Some(sig));
                }
            }
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break (None, None),
        }
    };
    reaped.store(true, std::sync::atomic::Ordering::SeqCst);
    // The pid namespace died with its first process, so every writer of the pipes is gone;
    // a terminal reads EIO once nothing in the container holds it.
    for c in copiers {
        let _ = c.join();
    }
    attachments.close();
    log.finish();
    let oom_killed = oom_kills(&args.cgroup) > 0;
    let _ = container.refresh_status();
    if let Err(e) = container.delete(true) {
        eprintln!("drover shim: deleting container {}: {e}", args.id);
    }
    report(&Report::Exited {
        code,
        signal,
        oom_killed,
    });
    ExitCode::SUCCESS
}

/// How often the OOM killer acted in a container's cgroup, on cgroup v1 or v2.
pub fn oom_kills(cgroup: &str) -> u64 {
    let rel = cgroup.trim_start_matches('/');
    let candidates = [
        (
            format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"),
            "oom_kill ",
        ),
        (format!("/sys/fs/cgroup/{rel}/memory.events"), "oom_kill "),
        (
            format!("/sys/fs/cgroup/unified/{rel}/memory.events"),
            "oom_kill ",
        ),
    ];
    candidates
        .iter()
        .filter_map(|(path, key)| std::fs::read_to_string(path).ok().map(|t| (t, key)))
        .filter_map(|(text, key)| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

/// `drover shim exec`: runs `argv` inside a running container with the shim's own stdio, and
/// exits with its exit code (128 + the signal that ended it; 126 when it could not start).
/// With `pid_file`, the command's host pid is written there once it runs, so whoever started
/// the shim can kill the command itself (killing the shim does not end it). With
/// `console_socket`, the command runs on a terminal libcontainer makes in the container's own
/// devpts (the terminal's controlling side goes to that socket, as runc's `--console-socket`)
/// instead of on the shim's stdio.
pub fn exec(
    root: &Path,
    id: &str,
    argv: Vec<String>,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
) -> ExitCode {
    let process_file = root
        .join(id)
        .join(format!("exec-{}.json", std::process::id()));
    let terminal = console_socket.is_some();
    let started =
        confined_exec(root, id, &argv, terminal, &process_file).and_then(|(seccomp, process)| {
            builder(root, id)?
                .with_console_socket(console_socket)
                .with_executor(ConfinedExec { seccomp })
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map_err(|e| e.to_string())
        });
    let _ = std::fs::remove_file(&process_file);
    let pid = match started.map(|p| Pid::from_raw(p.as_raw())) {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            eprintln!("cannot exec {argv:?} in container {id}: no process");
            return ExitCode::from(126);
        }
        Err(e) => {
            eprintln!("cannot exec {argv:?} in container {id}: {e}");
            return ExitCode::from(126);
        }
    };
    if let Some(file) = pid_file {
        if let Err(e) = std::fs::write(file, pid.as_raw_nonzero().to_string()) {
            eprintln!("cannot write {}: {e}", file.display());
        }
    }
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return ExitCode::from(code as u8);
                }
                if let Some(sig) = status.terminating_signal() {
                    return ExitCode::from((128 + sig) as u8);
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                eprintln!("waiting for {argv:?}: {e}");
                return ExitCode::from(126);
            }
        }
    }
}

/// What an exec'd process of container `id` runs with: the container's own process (user and
/// groups, capabilities, no_new_privs, environment, working directory, rlimits) with `argv`,
/// written to `process_file` for libcontainer, and the container's seccomp filter.
///
/// Without it libcontainer's exec (a "tenant") runs as root with the container's capabilities
/// merged into a default set and no seccomp filter: it rebuilds the `linux` section from the
/// namespaces and cgroup alone (libcontainer 0.7, `TenantContainerBuilder`).
fn confined_exec(
    root: &Path,
    id: &str,
    argv: &[String],
    terminal: bool,
    process_file: &Path,
) -> Result<(Option<LinuxSeccomp>, PathBuf), String> {
    let container =
        Container::load(root.join(id)).map_err(|e| format!("no container {id}: {e}"))?;
    let config = container.bundle().join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| format!("{} has no process", config.display()))?;
    process
        .set_args(Some(argv.to_vec()))
        .set_terminal(Some(terminal));
    if terminal {
        // As container runtimes do for a terminal: programs need to know what it is.
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
            process.set_env(Some(env));
        }
    }
    let text = serde_json::to_vec(&process).map_err(|e| e.to_string())?;
    // The container's environment (its Secrets among it): for root's eyes only.
    std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(process_file)
    .and_then(|mut f| f.write_all(&text))
    .map_err(|e| format!("{}: {e}", process_file.display()))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    Ok((seccomp, process_file.to_path_buf()))
}

/// Runs an exec'd process as libcontainer would, with the container's seccomp filter
/// installed last, right before the exec, as the container's own init installs it (after the
/// user, capabilities and no_new_privs are set: Drover's filtered containers always have
/// no_new_privs, which lets an unprivileged process install a filter). A filter that cannot
/// be installed fails the exec.
#[derive(Clone)]
struct ConfinedExec {
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for ConfinedExec {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(filter) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(filter).map_err(|e| {
                ExecutorError::Other(format!("cannot install the seccomp filter: {e}"))
            })?;
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }
}

/// `drover shim delete`: kills and deletes a container left behind (its shim was killed, or
/// the node restarted), with its cgroup and state.
pub fn delete(root: &Path, id: &str) -> ExitCode {
    match Container::load(root.join(id)) {
        Ok(mut c) => {
            let _ = c.refresh_status();
            match c.delete(true) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot delete container {id}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("no container {id} in {}: {e}", root.display());
            ExitCode::FAILURE
        }
    }
}

fn delete_quietly(root: &Path, id: &str) {
    if let Ok(mut c) = Container::load(root.join(id)) {
        let _ = c.delete(true);
    }
}
