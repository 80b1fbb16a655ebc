//! `drover`: one binary for the control plane, the node agent and the command-line client.
//! Thin: each verb parses its flags and calls into the library crates.

mod deploy;
mod formation;
mod image;
mod node;
mod server;
mod shim;
mod store;
mod token;
mod up;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "A WebAssembly-native orchestrator that speaks the Kubernetes API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How `up`, `server` and `node` write their logs: text (coloured only on a terminal) or
    /// json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = server::LogFormat::Text)]
    log_format: server::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole one-node cluster in this process: control plane and a node for Wasm pods.
    Up(up::UpArgs),
    /// Run a control-plane member: the replicated store and the Kubernetes API.
    Server(server::ServerArgs),
    /// Run a node agent that joins a cluster and runs its pods.
    Node(node::NodeArgs),
    /// Deploy a Wasm component as a Knative Service: push it to the cluster's registry,
    /// apply the Service, follow it until it is Ready and print its URL.
    Deploy(deploy::DeployArgs),
    /// Manage the images of this machine's node.
    Image(image::ImageArgs),
    /// Make credentials: `drover token node NAME` for a node to join with.
    Token(token::TokenArgs),
    /// Debug client for the replicated store.
    Store(store::StoreArgs),
    /// The per-container process the node agent starts (internal).
    #[command(hide = true)]
    Shim(shim::ShimArgs),
}

fn main() -> std::process::ExitCode {
    // No transparent huge pages for Drover itself. Where the kernel makes them for every
    // mapping (`always`), each region mimalloc commits ahead is backed by 2 MiB pages as soon
    // as one byte of it is touched: an idle `drover up` held 36 MiB of anonymous memory
    // instead of 10 (BENCHMARKS.md, "Idle memory"). The flag is inherited across fork and
    // exec, so the shim clears it again: containers get the machine's own policy. Either
    // call only changes whether huge pages are made, so a failure is not worth stopping for.
    let cli = Cli::parse();
    let drover_itself = !matches!(cli.command, Command::Shim(_));
    let _ = rustix::thread::disable_transparent_huge_pages(drover_itself);
    let command = match cli.command {
        // Before any thread exists: the shim clones itself into containers.
        Command::Shim(args) => return shim::run(args),
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if matches!(
        command,
        Command::Up(_) | Command::Server(_) | Command::Node(_)
    ) {
        server::init_logging(cli.log_format);
    }
    let result = runtime.block_on(async {
        match command {
            Command::Up(args) => up::run(args).await,
            Command::Server(args) => server::run(args).await,
            Command::Node(args) => node::run(args).await,
            Command::Deploy(args) => deploy::run(args).await,
            Command::Image(args) => image::run(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Store(args) => store::run(args).await,
            Command::Shim(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover: {e:#}");
            match e.downcast_ref::<deploy::Outcome>() {
                Some(outcome) => std::process::ExitCode::from(outcome.exit_code()),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
