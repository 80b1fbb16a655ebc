//! `drover shim`: the per-container process the node agent starts (see runtime::oci::shim).
//! Not for people: hidden from `--help`. It runs before any async runtime exists, because it
//! clones itself into containers and must be single-threaded when it does.

use std::path::PathBuf;
use std::process::ExitCode;

use runtime::oci::shim;

#[derive(clap::Args)]
pub struct ShimArgs {
    #[command(subcommand)]
    command: ShimCommand,
}

#[derive(clap::Subcommand)]
enum ShimCommand {
    /// Create and start a container, copy its output to its log, report its end.
    Run {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        cgroup: String,
        /// Serve `kubectl attach` on this Unix socket.
        #[arg(long)]
        attach_socket: Option<PathBuf>,
        /// Keep the container's stdin open for attachments (`stdin: true`).
        #[arg(long)]
        stdin: bool,
        /// Close it after the first attachment's input ends (`stdinOnce: true`).
        #[arg(long)]
        stdin_once: bool,
        /// Run the container on a terminal (`tty: true`).
        #[arg(long)]
        tty: bool,
    },
    /// Run a command inside a running container, with this process's stdio.
    Exec {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        id: String,
        /// Write the command's host pid here once it runs.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Run the command on a terminal made in the container, whose controlling side is
        /// sent to this Unix socket (an OCI console socket).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Kill and delete a container left behind.
    Delete {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        id: String,
    },
}

pub fn run(args: ShimArgs) -> ExitCode {
    // libcontainer reports through tracing; its own errors are repeated in the shim's
    // messages, so its log is off unless DROVER_SHIM_LOG asks for it.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROVER_SHIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .try_init();
    match args.command {
        ShimCommand::Run {
            root,
            id,
            bundle,
            log,
            cgroup,
            attach_socket,
            stdin,
            stdin_once,
            tty,
        } => shim::run(shim::RunArgs {
            root,
            id,
            bundle,
            log,
            cgroup,
            attach_socket,
            stdin,
            stdin_once,
            tty,
        }),
        ShimCommand::Exec {
            root,
            id,
            pid_file,
            console_socket,
            argv,
        } => shim::exec(
            &root,
            &id,
            argv,
            pid_file.as_deref(),
            console_socket.as_deref(),
        ),
        ShimCommand::Delete { root, id } => shim::delete(&root, &id),
    }
}
