//! `drover image`: the images in this machine's node store (Wasm modules and Linux container
//! images): list, pull, remove, import, and push Wasm modules to a registry.

use std::path::PathBuf;

use anyhow::Context;
use runtime::images::{ImageKind, ImageStore};
use runtime::registry::{Registries, RegistryAuth};

use crate::node::NodeDir;

#[derive(clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// List the images in the node's store.
    Ls {
        #[command(flatten)]
        dir: NodeDir,
    },
    /// Pull an image (a Linux container image or a Wasm image) into the node's store.
    Pull {
        reference: String,
        /// A registry (host:port) to reach over plain HTTP (loopback ones always are).
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
        #[arg(long, requires = "password")]
        username: Option<String>,
        /// The password (or token) for --username; better given in the environment.
        #[arg(long, env = "DROVER_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        dir: NodeDir,
    },
    /// Remove an image's reference (given a digest, every reference to that image). What no
    /// reference names any more is deleted by the node's next image gc, unless a container
    /// runs it.
    Rm {
        reference: String,
        #[command(flatten)]
        dir: NodeDir,
    },
    /// Import into the node's store under NAME:TAG, so pods can use it without a registry
    /// (`image: NAME:TAG`, imagePullPolicy IfNotPresent or Never): a .wasm file, an OCI image
    /// layout (directory or tar), or a `docker save` tarball.
    Import {
        /// A .wasm file, an OCI image layout directory or tar, or a `docker save` tar.
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

fn open_store(dir: &NodeDir) -> anyhow::Result<ImageStore> {
    let path = dir.node_dir.join("images");
    ImageStore::open(&path).with_context(|| format!("opening the image store {}", path.display()))
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b} B"),
    }
}

pub async fn run(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Ls { dir } => {
            let store = open_store(&dir)?;
            let images = tokio::task::spawn_blocking(move || store.list()).await?;
            println!(
                "{:<50} {:<5} {:<19} {:>9}",
                "REFERENCE", "KIND", "DIGEST", "SIZE"
            );
            for image in images {
                let kind = match image.kind {
                    ImageKind::Wasm => "wasm",
                    ImageKind::Oci(_) => "oci",
                };
                let digest = image.digest.get(..19).unwrap_or(&image.digest);
                for reference in &image.references {
                    println!(
                        "{reference:<50} {kind:<5} {digest:<19} {:>9}",
                        human_size(image.size_bytes)
                    );
                }
            }
            Ok(())
        }
        ImageCommand::Pull {
            reference,
            insecure,
            username,
            password,
            dir,
        } => {
            let store = open_store(&dir)?;
            let auth = match (username, password) {
                (Some(username), Some(password)) => RegistryAuth::Basic(username, password),
                _ => RegistryAuth::Anonymous,
            };
            let image = Registries::new(insecure, None)
                .pull(&reference, &store, &auth, &|step| eprintln!("{step}"))
                .await?;
            println!("{} {}", image.reference, image.digest);
            Ok(())
        }
        ImageCommand::Rm { reference, dir } => {
            let store = open_store(&dir)?;
            if !store.remove(&reference)? {
                anyhow::bail!("the node's store has no image {reference}");
            }
            println!("removed {reference}");
            Ok(())
        }
        ImageCommand::Import {
            file,
            reference,
            dir,
        } => {
            let store = open_store(&dir)?;
            let image =
                tokio::task::spawn_blocking(move || store.import(&file, &reference)).await??;
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
            let digest = Registries::new(insecure, None)
                .push(wasm, &reference, &RegistryAuth::Anonymous)
                .await?;
            println!("{reference} {digest}");
            Ok(())
        }
    }
}
