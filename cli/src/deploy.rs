//! `drover deploy FILE.wasm`: from a Wasm component to a live URL. Pushes the file to the
//! cluster's own registry (the kubeconfig's server, its CA and credential), applies a Knative
//! Service whose image is pinned to the pushed digest (so every deploy of new bytes is a new
//! revision, and the same bytes are none), and follows the Service until it is Ready, saying
//! what happens on the way. Exit codes scripts can use: 0 ready, 1 failed, 3 timed out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{json, Value};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    drover deploy target/wasm32-wasip2/release/hello.wasm\n  \
    drover deploy hello.wasm --name greeter --namespace team-a --timeout 2m")]
pub struct DeployArgs {
    /// The Wasm component to deploy (a .wasm file built for wasm32-wasip2).
    pub file: PathBuf,
    /// The Knative Service's name (default: the file's name, made a valid DNS label).
    #[arg(long)]
    pub name: Option<String>,
    /// The namespace (default: the kubeconfig context's, else "default").
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How long to wait for the Service to be Ready.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

/// How a deploy ended, as the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum Outcome {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    TimedOut(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Failed(_) => 1,
            Outcome::TimedOut(_) => 3,
        }
    }
}

/// A DNS label from a file name: lower case, other characters as '-', at most 63.
pub fn service_name(file: &std::path::Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        format!("fn-{name}").trim_end_matches('-').to_string()
    } else {
        name
    }
}

/// What the kubeconfig's current context gives: the server, its CA, the token, the namespace.
struct Target {
    server: String,
    ca_pem: String,
    token: String,
    namespace: Option<String>,
    config: kube::config::Kubeconfig,
}

fn target(path: Option<PathBuf>) -> anyhow::Result<Target> {
    let config = match path {
        Some(p) => kube::config::Kubeconfig::read_from(&p)
            .with_context(|| format!("cannot read the kubeconfig {}", p.display()))?,
        None => kube::config::Kubeconfig::read().context(
            "no kubeconfig: pass --kubeconfig, or set KUBECONFIG (drover up prints where it is)",
        )?,
    };
    let context_name = config
        .current_context
        .clone()
        .context("the kubeconfig has no current context")?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .with_context(|| format!("the kubeconfig has no context {context_name:?}"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .with_context(|| format!("the kubeconfig has no cluster {:?}", context.cluster))?;
    let user = context.user.clone().unwrap_or_default();
    let token = config
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.clone())
        .and_then(|a| a.token)
        .map(|t| secrecy::ExposeSecret::expose_secret(&t).to_string())
        .with_context(|| {
            format!("the kubeconfig's user {user:?} has no token: the cluster registry takes bearer tokens")
        })?;
    let ca_pem = match &cluster.certificate_authority_data {
        Some(data) => {
            use base64::Engine as _;
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data.trim())?)?
        }
        None => match &cluster.certificate_authority {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the cluster's CA {file}"))?,
            None => anyhow::bail!("the kubeconfig's cluster has no certificate authority"),
        },
    };
    Ok(Target {
        server: cluster
            .server
            .clone()
            .context("the kubeconfig's cluster has no server")?,
        ca_pem,
        token,
        namespace: context.namespace.clone(),
        config,
    })
}

pub async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if !wasm.starts_with(b"\0asm") {
        return Err(Outcome::Failed(format!(
            "{} is not WebAssembly; build it for wasm32-wasip2 (cargo build --target wasm32-wasip2 --release)",
            args.file.display()
        ))
        .into());
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| service_name(&args.file));
    if let Some(why) = api::object::invalid_label(&name) {
        anyhow::bail!("--name {name:?}: {why}");
    }
    let target = target(args.kubeconfig.clone())?;
    let namespace = args
        .namespace
        .clone()
        .or(target.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let started = Instant::now();

    // 1. The bytes, into the cluster's registry.
    let registry = crate::node::cluster_registry(&target.server, &target.ca_pem, {
        let token = target.token.clone();
        Arc::new(move || Some(token.clone()))
    })?;
    let address = registry.address.clone();
    let registries = runtime::registry::Registries::new(vec![], Some(registry));
    let auth = runtime::registry::RegistryAuth::Bearer(target.token.clone());
    let size = wasm.len();
    let digest = registries
        .push(wasm, &format!("{address}/{namespace}/{name}:latest"), &auth)
        .await
        .map_err(|e| Outcome::Failed(format!("pushing to the cluster registry: {e}")))?;
    let short = digest.get(..19).unwrap_or(&digest);
    println!(
        "pushed   {namespace}/{name}@{short}… ({}) in {} ms",
        human_size(size),
        started.elapsed().as_millis()
    );

    // 2. The Knative Service, pinned to those bytes.
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(target.config, &Default::default()).await?,
    )?;
    let resource = ApiResource {
        group: "serving.knative.dev".into(),
        version: "v1".into(),
        api_version: "serving.knative.dev/v1".into(),
        kind: "Service".into(),
        plural: "services".into(),
    };
    let services: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
    let image = format!(
        "{}/{namespace}/{name}@{digest}",
        runtime::registry::CLUSTER_REGISTRY_ALIAS
    );
    let manifest = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
    });
    let applied = services
        .patch(
            &name,
            &PatchParams::apply("drover-deploy").force(),
            &Patch::Apply(&manifest),
        )
        .await
        .map_err(|e| {
            Outcome::Failed(format!("applying Knative Service {namespace}/{name}: {e}"))
        })?;
    let generation = applied.metadata.generation.unwrap_or_default();
    println!("applied  service {namespace}/{name} (generation {generation})");

    // 3. Followed until Ready, or failed, or out of time.
    let deadline = started + args.timeout;
    let mut said = String::new();
    loop {
        let svc = services.get(&name).await.map_err(|e| {
            Outcome::Failed(format!("reading Knative Service {namespace}/{name}: {e}"))
        })?;
        let status = &svc.data["status"];
        let progress = Progress::of(status, generation);
        let line = progress.line();
        if !line.is_empty() && line != said {
            println!("{line}");
            said = line;
        }
        match progress.state {
            State::Ready => {
                let url = status["url"].as_str().unwrap_or_default();
                println!("ready    {url} in {:.1} s", started.elapsed().as_secs_f64());
                return Ok(());
            }
            State::Failed(why) => return Err(Outcome::Failed(why).into()),
            State::Waiting => {}
        }
        if Instant::now() > deadline {
            return Err(Outcome::TimedOut(format!(
                "{namespace}/{name} was not Ready within {}; see kubectl describe ksvc {name} -n {namespace}",
                humantime::format_duration(args.timeout)
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, PartialEq)]
enum State {
    Waiting,
    Ready,
    Failed(String),
}

/// Where a Knative Service stands, from its status (pure).
#[derive(Debug, PartialEq)]
struct Progress {
    state: State,
    revision: Option<String>,
}

impl Progress {
    fn of(status: &Value, generation: i64) -> Progress {
        let observed = status["observedGeneration"].as_i64().unwrap_or_default();
        let revision = status["latestCreatedRevisionName"]
            .as_str()
            .map(str::to_string);
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready");
        let state = match ready {
            _ if observed < generation => State::Waiting,
            Some(c)
                if c["status"] == "True"
                    && status["latestReadyRevisionName"] == status["latestCreatedRevisionName"] =>
            {
                State::Ready
            }
            Some(c) if c["status"] == "False" => State::Failed(format!(
                "{}: {}",
                c["reason"].as_str().unwrap_or("NotReady"),
                c["message"].as_str().unwrap_or("no message")
            )),
            _ => State::Waiting,
        };
        Progress { state, revision }
    }

    fn line(&self) -> String {
        match (&self.state, &self.revision) {
            (State::Waiting, Some(r)) => {
                format!("created  revision {r}, waiting for it to be ready")
            }
            _ => String::new(),
        }
    }
}

fn human_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_files_as_dns_labels() {
        assert_eq!(service_name("a/hello_world.wasm".as_ref()), "hello-world");
        assert_eq!(service_name("Greeter.wasm".as_ref()), "greeter");
        assert_eq!(service_name("9lives.wasm".as_ref()), "fn-9lives");
        assert_eq!(service_name("__.wasm".as_ref()), "fn");
    }

    #[test]
    fn progress_waits_for_this_generation_and_its_revision() {
        let ready = json!({"observedGeneration": 2, "latestCreatedRevisionName": "a-2",
            "latestReadyRevisionName": "a-2", "url": "http://a.default.example.com",
            "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(Progress::of(&ready, 2).state, State::Ready);
        assert_eq!(Progress::of(&ready, 3).state, State::Waiting);
        let older_ready = json!({"observedGeneration": 2, "latestCreatedRevisionName": "a-2",
            "latestReadyRevisionName": "a-1", "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(Progress::of(&older_ready, 2).state, State::Waiting);
        let failed = json!({"observedGeneration": 2, "latestCreatedRevisionName": "a-2",
            "conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": "boom"}]});
        assert_eq!(
            Progress::of(&failed, 2).state,
            State::Failed("RevisionFailed: boom".into())
        );
        assert_eq!(
            Progress::of(
                &json!({"observedGeneration": 2, "latestCreatedRevisionName": "a-2"}),
                2
            )
            .line(),
            "created  revision a-2, waiting for it to be ready"
        );
    }
}
