//! `drover token node NAME`: a credential for a node to join with (`drover node --token`),
//! from the API's `nodes/NAME/token` subresource (admins only). `drover token server`: the
//! token a new server joins with (`drover server --join ADDR --token-file FILE`).
//! `drover token generate`: a shared secret for servers that form a cluster together
//! (`--initial-cluster`). `drover token rotate`: a new key signs the cluster's tokens; the old ones verify for the
//! grace period, then every token they signed (nodes', ServiceAccounts') is dead.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Print a token for the node NAME (it may change only its own Node, Lease and pods).
    Node {
        name: String,
        /// An admin kubeconfig (default: $KUBECONFIG, else DATA_DIR/admin.kubeconfig).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// How long the token is valid.
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Print the cluster's join token for new servers (system:masters only). Whoever holds it
    /// can make a member of the cluster: keep it as secret as the CA key.
    Server {
        /// An admin kubeconfig (default: $KUBECONFIG, else DATA_DIR/admin.kubeconfig).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Print a new shared secret for servers that form a cluster together (`drover server
    /// --initial-cluster ... --token-file FILE` on each). Needs no cluster: run it once, before
    /// the members start, and keep it as secret as the CA key.
    Generate,
    /// Rotate the keys the cluster signs tokens with (system:masters only). Tokens signed
    /// before keep working for the grace period, then stop: give nodes new tokens
    /// (`drover token node NAME`) before it ends. `--grace 0s` revokes every signed token now.
    Rotate {
        /// How long tokens signed with the keys before keep working.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// An admin kubeconfig (default: $KUBECONFIG, else DATA_DIR/admin.kubeconfig).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

async fn admin_client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let path = kubeconfig
        .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
        .unwrap_or_else(|| crate::server::default_data_dir().join("admin.kubeconfig"));
    let file = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Generate => {
            println!("{}", apiserver::pki::new_shared_secret());
            Ok(())
        }
        TokenCommand::Node {
            name,
            kubeconfig,
            ttl,
        } => {
            let client = admin_client(kubeconfig).await?;
            let body = serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": ttl.as_secs()},
            });
            let req = http::Request::post(format!("/api/v1/nodes/{name}/token"))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body)?)?;
            let answer: serde_json::Value = client
                .request(req)
                .await
                .with_context(|| format!("cannot get a token for node {name}"))?;
            let token = answer["status"]["token"]
                .as_str()
                .context("the API answered without a token")?;
            println!("{token}");
            Ok(())
        }
        TokenCommand::Rotate { grace, kubeconfig } => {
            let client = admin_client(kubeconfig).await?;
            let req = http::Request::post(format!(
                "{}?graceSeconds={}",
                apiserver::rotation::PATH_ROTATE,
                grace.as_secs()
            ))
            .body(Vec::new())?;
            let answer: serde_json::Value = client
                .request(req)
                .await
                .context("cannot rotate the signing keys (an admin kubeconfig is needed)")?;
            println!(
                "tokens are now signed with key {}",
                answer["kid"].as_str().unwrap_or("?")
            );
            for key in answer["keys"].as_array().into_iter().flatten() {
                if let Some(until) = key["verifyUntil"].as_u64() {
                    let when = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(until),
                    );
                    println!(
                        "tokens signed with key {} work until {when}",
                        key["kid"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(())
        }
        TokenCommand::Server { kubeconfig } => {
            let client = admin_client(kubeconfig).await?;
            let req = http::Request::get(apiserver::join::PATH_JOIN_TOKEN).body(Vec::new())?;
            let token = client
                .request_text(req)
                .await
                .context("cannot get the join token (an admin kubeconfig is needed)")?;
            println!("{}", token.trim());
            Ok(())
        }
    }
}
