//! `drover image`: puts Wasm images into a node's image store.

use std::path::PathBuf;

use crate::node::NodeDir;

#[derive(clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// Import a .wasm file into the node's store under NAME:TAG, so pods can use it without a
    /// registry (`image: NAME:TAG`, imagePullPolicy IfNotPresent or Never).
    Import {
        file: PathBuf,
        reference: String,
        #[command(flatten)]
        dir: NodeDir,
    },
    /// Push a .wasm file to an OCI registry as REGISTRY/NAME:TAG, in the CNCF Wasm layout.
    Push {
        file: PathBuf,
        reference: String,
        /// A registry (host:port) to reach over plain HTTP (loopback ones always are).
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
    },
}

pub async fn run(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Import {
            file,
            reference,
            dir,
        } => {
            let store = runtime::images::ImageStore::open(&dir.node_dir.join("images"))?;
            let image = store.import(&file, &reference)?;
            println!("{} {}", image.reference, image.digest);
            Ok(())
        }
        ImageCommand::Push {
            file,
            reference,
            insecure,
        } => {
            let wasm = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let digest = runtime::registry::Registries::new(insecure)
                .push(wasm, &reference)
                .await?;
            println!("{reference} {digest}");
            Ok(())
        }
    }
}
