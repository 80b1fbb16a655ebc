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
}

pub fn run(args: ImageArgs) -> anyhow::Result<()> {
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
    }
}
