//! `drover up`: a whole cluster in one process — the replicated store and API server of
//! `drover server` (with the controllers and the scheduler), and a node agent running Wasm
//! pods — for one machine.

use anyhow::Context;

use crate::node::{NodeDir, NodeOptions};
use crate::server::ServerArgs;

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    node: NodeOptions,
}

pub async fn run(mut args: UpArgs) -> anyhow::Result<()> {
    // The node's address, found once. With routed pod networking (root) the API is served
    // there (unless --listen says otherwise), so that pods reach it through the `kubernetes`
    // Service: a pod in a network namespace of its own cannot reach the host's loopback.
    let node_address = args.node.resolve_address();
    args.node.node_address = Some(node_address);
    if args.node.pod_ip_range.is_none() && crate::node::is_root() {
        args.server.default_listen_on(node_address);
    }
    let member = crate::server::start(&args.server).await?;
    let node_name = args.node.name.clone().unwrap_or_else(crate::node::hostname);
    // The node's credential, signed here: the node talks to the API like any other node. It
    // is kept in a file the client reads every minute, and signed again when the signing keys
    // rotate, so the node outlives a rotation.
    let credential = args.server.data_dir().join("pki").join("node-credential");
    let sign = {
        let api = member.api.clone();
        let (node_name, credential) = (node_name.clone(), credential.clone());
        move || {
            let (api, node_name, credential) = (api.clone(), node_name.clone(), credential.clone());
            async move {
                let token = apiserver::nodetokens::issue(
                    &api,
                    &node_name,
                    apiserver::auth::MAX_TOKEN_SECONDS,
                )
                .await
                .with_context(|| format!("cannot make the credential of node {node_name}"))?;
                apiserver::pki::write_private(&credential, &token).map_err(anyhow::Error::msg)
            }
        }
    };
    sign().await?;
    let mut rotations = member.api.auth.signer.subscribe();
    tokio::spawn(async move {
        while rotations.changed().await.is_ok() {
            if let Err(e) = sign().await {
                tracing::error!("{e:#}");
            }
        }
    });
    let node_client =
        kubeclient::connect_with_token_file(&member.url, &member.pki.ca_pem, &credential)?;
    let options = NodeOptions {
        name: Some(node_name.clone()),
        ..args.node.clone()
    };
    let node_dir = NodeDir {
        node_dir: args.server.data_dir().join("node"),
    };
    let token_file = credential.clone();
    let registry = crate::node::cluster_registry(
        &member.url,
        &member.pki.ca_pem,
        std::sync::Arc::new(move || {
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|t| t.trim().to_string())
        }),
    )?;
    let agent = crate::node::agent(
        &options,
        args.server.cluster_cidr(),
        node_dir.node_dir.clone(),
        node_client,
        registry,
    )
    .context("cannot start the node")?;
    let agent_task = tokio::spawn(agent.run());
    let kubeconfig = member.kubeconfig.display().to_string();
    let data_dir = args.server.data_dir().display().to_string();
    eprintln!(
        "\ndrover up: a one-node cluster is running (node {node_name}, API {url}, data in {data_dir}).\n\
         Next, from the repository's root (README.md, \"Next: run a Wasm pod\"):\n  \
           export KUBECONFIG={kubeconfig}\n  \
           kubectl get nodes\n  \
           cargo build --manifest-path examples/Cargo.toml --target-dir examples/target --target wasm32-wasip2 --release\n  \
           ./target/release/drover image import examples/target/wasm32-wasip2/release/hello_world.wasm hello-world:v1\n  \
           kubectl apply -f examples/hello-pod.yaml\n  \
           kubectl wait --for=condition=Ready pod/hello --timeout=60s\n  \
           curl -s http://$(kubectl get pod hello -o jsonpath='{{.status.podIP}}'):8080/\n\
         Stop with Ctrl-C; `drover up` again resumes this cluster.\n",
        url = member.url
    );
    tokio::select! {
        res = member.wait_for_signal() => res,
        res = agent_task => {
            res.context("node agent")??;
            Ok(())
        }
    }
}
