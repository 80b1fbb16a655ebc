//! The real kubectl (v1.32, on every machine here) against a real `drover server`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::Cluster;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_drover"))
}

struct Kubectl {
    _cluster: Cluster,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    async fn start(ip: u8) -> Kubectl {
        let cluster = Cluster::start(bin(), ip, 1)
            .await
            .expect("start drover server");
        let kubeconfig = cluster.members[0].data_dir.join("admin.kubeconfig");
        let k = Kubectl {
            _cluster: cluster,
            kubeconfig,
            dir: tempfile::tempdir().unwrap(),
        };
        // The system namespaces are written right after the member comes up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !k.run(&["get", "namespace", "kube-system"]).0 {
            assert!(Instant::now() < deadline, "kube-system never appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
        k
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path()) // no cache shared between tests
            .output()
            .expect("kubectl is installed on every machine here");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(!ok, "kubectl {args:?} should have failed:\n{out}");
        err
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

const MANIFEST: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: invoice-config
  namespace: shop
  labels: {app: invoice, environment: prod}
data:
  currency: EUR
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: other-config
  namespace: shop
  labels: {app: invoice, environment: dev}
data:
  currency: USD
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_info_namespaces_and_discovery() {
    let k = Kubectl::start(101).await;
    assert!(k.ok(&["cluster-info"]).contains("is running at https://"));
    let ns = k.ok(&["get", "namespaces"]);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            ns.lines()
                .any(|l| l.starts_with(name) && l.contains("Active")),
            "{name} missing:\n{ns}"
        );
    }
    let resources = k.ok(&["api-resources"]);
    for line in [
        "deployments",
        "configmaps",
        "networkpolicies",
        "horizontalpodautoscalers",
    ] {
        assert!(resources.contains(line), "{line} missing:\n{resources}");
    }
    assert!(k.ok(&["version"]).contains("Server Version: v1.32"));
    // explain reads the OpenAPI v3 schemas, descriptions included.
    let explained = k.ok(&["explain", "deployment.spec.template.spec.containers.ports"]);
    assert!(
        explained.contains("FIELD: ports <[]ContainerPort>"),
        "{explained}"
    );
    assert!(
        explained.contains("containerPort\t<integer> -required-"),
        "{explained}"
    );
    let pods = k.ok(&["explain", "pods"]);
    assert!(pods.contains("Pod is a collection of containers"), "{pods}");
    let hpa = k.ok(&["explain", "hpa.spec", "--api-version=autoscaling/v1"]);
    assert!(hpa.contains("targetCPUUtilizationPercentage"), "{hpa}");
    let err = k.fails(&["explain", "pods.spec.nonsense"]);
    assert!(err.contains("nonsense"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_label_annotate_patch_watch_delete() {
    let k = Kubectl::start(102).await;
    let file = k.write("shop.yaml", MANIFEST);
    let out = k.ok(&["apply", "-f", &file]);
    assert!(
        out.contains("namespace/shop created") && out.contains("configmap/invoice-config created"),
        "{out}"
    );
    // Applying again changes nothing.
    let out = k.ok(&["apply", "-f", &file]);
    assert!(out.contains("configmap/invoice-config unchanged"), "{out}");
    // An edited manifest is patched in.
    let edited = k.write(
        "shop2.yaml",
        &MANIFEST.replace("currency: EUR", "currency: CHF"),
    );
    assert!(k
        .ok(&["apply", "-f", &edited])
        .contains("configmap/invoice-config configured"));
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "invoice-config",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.currency}"
        ]),
        "CHF"
    );

    // Selectors, output formats.
    let out = k.ok(&[
        "get",
        "configmaps",
        "-n",
        "shop",
        "-l",
        "environment=prod,app=invoice",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "configmap/invoice-config");
    let all = k.ok(&["get", "configmaps", "--all-namespaces"]);
    assert!(
        all.contains("shop") && all.contains("other-config"),
        "{all}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "cm", "invoice-config", "-n", "shop", "-o", "json"]))
            .unwrap();
    assert_eq!(json["metadata"]["labels"]["app"], "invoice");
    assert!(json["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert!(k
        .ok(&["get", "cm", "invoice-config", "-n", "shop", "-o", "yaml"])
        .contains("currency: CHF"));

    k.ok(&["label", "cm", "invoice-config", "-n", "shop", "tier=web"]);
    k.ok(&[
        "annotate",
        "cm",
        "invoice-config",
        "-n",
        "shop",
        "owner=billing",
    ]);
    k.ok(&[
        "patch",
        "cm",
        "invoice-config",
        "-n",
        "shop",
        "-p",
        r#"{"data":{"rounding":"up"}}"#,
    ]);
    let described = k.ok(&["describe", "cm", "invoice-config", "-n", "shop"]);
    assert!(
        described.contains("tier=web")
            && described.contains("owner: billing")
            && described.contains("rounding"),
        "{described}"
    );

    // A watch sees a change made while it runs.
    let mut watch = Command::new("kubectl")
        .args([
            "get",
            "cm",
            "-n",
            "shop",
            "-w",
            "-o",
            "name",
            "--request-timeout=20s",
        ])
        .env("KUBECONFIG", &k.kubeconfig)
        .env("HOME", k.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    k.ok(&[
        "create",
        "-f",
        &k.write(
            "new.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, namespace: shop}\n",
        ),
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    watch.kill().unwrap();
    let seen = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        seen.contains("configmap/late"),
        "the watch did not see the new object:\n{seen}"
    );

    // Delete by label, then the rest with the manifest.
    assert!(k
        .ok(&["delete", "cm", "-n", "shop", "-l", "environment=dev"])
        .contains("other-config"));
    k.ok(&["delete", "-f", &edited, "--ignore-not-found"]);
    let err = k.fails(&["get", "cm", "late", "-n", "shop"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "deleting the namespace deletes its contents: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_kubernetes_errors() {
    let k = Kubectl::start(103).await;
    let bad = k.write(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    );
    let err = k.fails(&["create", "-f", &bad]);
    assert!(
        err.contains("metadata.name") && err.contains("Invalid value"),
        "{err}"
    );
    let wrong_type = k.write(
        "three.yaml",
        &DEPLOYMENT.replace("replicas: 3", "replicas: three"),
    );
    let err = k.fails(&["apply", "-f", &wrong_type]);
    assert!(
        err.contains("spec.replicas") && err.contains("invalid"),
        "{err}"
    );
    // Semantic rules: every bad field is named, as kube-apiserver lists them.
    let mismatched = DEPLOYMENT
        .replace(
            "      labels: {app: hw}\n    spec:",
            "      labels: {app: other}\n    spec:",
        )
        .replace(
            "        - containerPort: 8080",
            "        - containerPort: 80800",
        );
    let err = k.fails(&["apply", "-f", &k.write("mismatch.yaml", &mismatched)]);
    assert!(
        err.contains("The Deployment \"hw-demo-deployment\" is invalid")
            && err.contains("spec.template.metadata.labels: Invalid value")
            && err.contains("`selector` does not match template `labels`")
            && err.contains(
                "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 80800"
            ),
        "{err}"
    );
    let typo = k.write(
        "typo.yaml",
        &DEPLOYMENT.replace("image: example", "imagee: example"),
    );
    let err = k.fails(&["apply", "-f", &typo]);
    assert!(
        err.contains("unknown field \"spec.template.spec.containers[0].imagee\""),
        "{err}"
    );
    let err = k.fails(&["get", "cm", "missing"]);
    assert!(err.contains("configmaps \"missing\" not found"), "{err}");
    let err = k.fails(&["--token=not-the-token", "get", "namespaces"]);
    assert!(err.contains("Unauthorized"), "{err}");
    let missing_ns = k.write(
        "nons.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: nowhere}\n",
    );
    let err = k.fails(&["create", "-f", &missing_ns]);
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
    let dup = k.write(
        "dup.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\n",
    );
    k.ok(&["create", "-f", &dup]);
    let err = k.fails(&["create", "-f", &dup]);
    assert!(err.contains("already exists"), "{err}");
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: hw-demo-deployment
  labels: {app: hw}
spec:
  replicas: 3
  selector:
    matchLabels: {app: hw}
  template:
    metadata:
      labels: {app: hw}
    spec:
      containers:
      - name: hw
        image: example/hello-world:1
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: hw-svc
spec:
  type: NodePort
  selector: {app: hw}
  ports:
  - port: 8080
    nodePort: 30080
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_scale_set_image_status_and_columns() {
    let k = Kubectl::start(104).await;
    let file = k.write("hw.yaml", DEPLOYMENT);
    k.ok(&["apply", "-f", &file]);
    let wide = k.ok(&["get", "deployments", "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    for col in [
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ] {
        assert!(header.contains(col), "{wide}");
    }
    assert!(
        wide.contains("0/3") && wide.contains("example/hello-world:1"),
        "{wide}"
    );
    assert_eq!(
        k.ok(&["get", "service", "hw-svc", "-o", "name"]),
        "service/hw-svc\n"
    );
    let svc = k.ok(&["get", "service", "hw-svc"]);
    assert!(
        svc.contains("NodePort") && svc.contains("8080:30080/TCP"),
        "{svc}"
    );
    assert!(k
        .ok(&["get", "all"])
        .contains("deployment.apps/hw-demo-deployment"));

    // kubectl scale goes through the scale subresource.
    assert!(k
        .ok(&["scale", "deployment", "hw-demo-deployment", "--replicas=5"])
        .contains("scaled"));
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "hw-demo-deployment",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );
    k.ok(&[
        "set",
        "image",
        "deployment/hw-demo-deployment",
        "hw=example/hello-world:2",
    ]);
    let image = k.ok(&[
        "get",
        "deploy",
        "hw-demo-deployment",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "example/hello-world:2");

    // Status is written only through /status (here by the Deployment controller); the main
    // endpoint leaves it alone.
    k.ok(&[
        "patch",
        "deploy",
        "hw-demo-deployment",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":99}}"#,
    ]);
    let ready = k.ok(&[
        "get",
        "deploy",
        "hw-demo-deployment",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_ne!(ready, "99");
    let err = k.fails(&["scale", "deployment", "hw-demo-deployment", "--replicas=-1"]);
    assert!(err.contains("replicas"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generators_send_protobuf_and_it_is_understood() {
    let k = Kubectl::start(105).await;
    // These kubectl commands use client-go's typed clients, which send protobuf bodies.
    k.ok(&["create", "namespace", "gen"]);
    k.ok(&[
        "create",
        "configmap",
        "c1",
        "-n",
        "gen",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "gen",
        "--from-literal=pw=hunter2",
    ]);
    k.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "gen",
        "--image=nginx:1",
        "--replicas=2",
    ]);
    k.ok(&[
        "expose",
        "deployment",
        "web",
        "-n",
        "gen",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
    ]);
    k.ok(&[
        "run",
        "one",
        "-n",
        "gen",
        "--image=busybox",
        "--labels=app=one",
    ]);
    k.ok(&[
        "autoscale",
        "deployment",
        "web",
        "-n",
        "gen",
        "--cpu-percent=50",
        "--min=1",
        "--max=10",
    ]);

    assert_eq!(
        k.ok(&["get", "cm", "c1", "-n", "gen", "-o", "jsonpath={.data.b}"]),
        "2"
    );
    let secret = k.ok(&["get", "secret", "s1", "-n", "gen"]);
    assert!(
        secret.contains("Opaque"),
        "secrets default to Opaque: {secret}"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "secret",
            "s1",
            "-n",
            "gen",
            "-o",
            "jsonpath={.data.pw}"
        ]),
        "aHVudGVyMg=="
    );
    let svc: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "svc", "web", "-n", "gen", "-o", "json"])).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["selector"]["app"], "web");
    assert_eq!(svc["spec"]["type"], "NodePort");
    let pod = k.ok(&["get", "pods", "-n", "gen", "-l", "app=one"]);
    assert!(
        pod.contains("one") && pod.contains("0/1") && pod.contains("Pending"),
        "{pod}"
    );
    let deploy: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "web", "-n", "gen", "-o", "json"])).unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1"
    );
    assert_eq!(
        deploy["spec"]["strategy"]["type"], "RollingUpdate",
        "defaults are filled in"
    );
    // kubectl autoscale writes autoscaling/v1; it is stored and served as v2 too.
    let hpa = k.ok(&["get", "hpa", "-n", "gen"]);
    assert!(
        hpa.contains("Deployment/web") && hpa.contains("cpu: <unknown>/50%"),
        "{hpa}"
    );
    let v2 = k.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v2/namespaces/gen/horizontalpodautoscalers/web",
    ]);
    assert!(v2.contains("\"averageUtilization\":50"), "{v2}");
    let v1 = k.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v1/namespaces/gen/horizontalpodautoscalers/web",
    ]);
    assert!(v1.contains("\"targetCPUUtilizationPercentage\":50"), "{v1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_of_a_cluster_answers_with_the_same_credentials() {
    let c = Cluster::start(bin(), 106, 2).await.expect("two members");
    let dir = tempfile::tempdir().unwrap();
    // Each member writes its kubeconfig once it has its certificates.
    let path = c.members[0].data_dir.join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no kubeconfig from member 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    let config0 = std::fs::read_to_string(path).unwrap();
    // Member 0's kubeconfig, pointed at member 1: same CA, same token.
    let config1 = config0.replace(
        &c.members[0].addr.to_string(),
        &c.members[1].addr.to_string(),
    );
    assert_ne!(config0, config1);
    let (path0, path1) = (dir.path().join("k0"), dir.path().join("k1"));
    std::fs::write(&path0, config0).unwrap();
    std::fs::write(&path1, config1).unwrap();
    let kubectl = |config: &Path, args: &[&str]| {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", config)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubectl(&path1, &["get", "namespace", "default"]).0 {
        assert!(
            Instant::now() < deadline,
            "member 1 never answered: {}",
            kubectl(&path1, &["get", "ns"]).1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = kubectl(
        &path1,
        &["create", "configmap", "via-one", "--from-literal=k=v"],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &path0,
        &["get", "configmap", "via-one", "-o", "jsonpath={.data.k}"],
    );
    assert!(
        ok && out == "v",
        "a write through member 1 is read through member 0: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_rights_is_forbidden_until_rbac_grants_it() {
    let k = Kubectl::start(32).await;
    k.ok(&["create", "serviceaccount", "reader"]);
    let token = k.ok(&["create", "token", "reader"]).trim().to_string();
    let as_reader = format!("--token={token}");
    let err = k.fails(&[&as_reader, "get", "pods"]);
    assert!(
        err.contains("Forbidden")
            && err.contains(
                "User \"system:serviceaccount:default:reader\" cannot list resource \"pods\""
            ),
        "{err}"
    );
    k.ok(&[
        "create",
        "rolebinding",
        "reader-view",
        "--clusterrole=view",
        "--serviceaccount=default:reader",
    ]);
    k.ok(&[&as_reader, "get", "pods"]);
    let err = k.fails(&[&as_reader, "create", "configmap", "x", "--from-literal=a=b"]);
    assert!(err.contains("forbidden"), "{err}");
    let roles = k.ok(&["get", "clusterroles"]);
    for role in ["cluster-admin", "admin", "edit", "view"] {
        assert!(roles.contains(role), "{roles}");
    }
    k.ok(&["delete", "serviceaccount", "reader"]);
    let err = k.fails(&[&as_reader, "get", "pods"]);
    assert!(err.contains("Unauthorized"), "{err}");
}

/// Every byte of the store's files under a member's data dir (not its certificates, keys and
/// kubeconfig, which are meant to hold secrets).
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(
            name.as_str(),
            "pki" | "admin.kubeconfig" | "admin.token" | "encryption.key"
        ) {
            continue;
        }
        if p.is_dir() {
            out.extend(store_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_in_the_store_and_readable_after_a_restart() {
    use base64::Engine as _;
    let mut k = Kubectl::start(33).await;
    let marker = "correct-horse-battery-staple-4711";
    k.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        &format!("--from-literal=password={marker}"),
    ]);
    k.ok(&[
        "create",
        "configmap",
        "plain",
        &format!("--from-literal=note={marker}"),
    ]);
    let encoded = k.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .unwrap();
    assert_eq!(decoded, marker.as_bytes());
    let data_dir = k._cluster.members[0].data_dir.clone();
    let bytes = store_bytes(&data_dir);
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    // The ConfigMap holds the marker in plaintext (so the search works); the Secret holds it
    // neither as text nor as the base64 of its data field, and the CA's key is not there.
    assert!(count(marker.as_bytes()) >= 1, "the search finds plaintext");
    assert_eq!(count(encoded.trim().as_bytes()), 0, "the Secret is sealed");
    assert_eq!(count(b"PRIVATE KEY"), 0, "the cluster CA key is sealed");
    k._cluster.kill(0);
    k._cluster.restart(0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !k.run(&["get", "secret", "db"]).0 {
        assert!(Instant::now() < deadline, "the server never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = k.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(again, encoded);
}

const SSA_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: ssa
  labels: {app: ssa, tier: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: ssa}}
  template:
    metadata: {labels: {app: ssa}}
    spec:
      containers:
      - {name: main, image: main.wasm}
      - {name: sidecar, image: sidecar.wasm}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_fields_removes_dropped_ones_and_reports_conflicts() {
    let k = Kubectl::start(34).await;
    let file = k.write("ssa.yaml", SSA_DEPLOYMENT);
    let out = k.ok(&["apply", "--server-side", "-f", &file]);
    assert!(
        out.contains("deployment.apps/ssa serverside-applied"),
        "{out}"
    );
    let out = k.ok(&["apply", "--server-side", "-f", &file]);
    assert!(out.contains("serverside-applied"), "{out}");
    // The edited manifest drops the sidecar and a label: both go.
    let edited = SSA_DEPLOYMENT
        .replace("      - {name: sidecar, image: sidecar.wasm}\n", "")
        .replace(", tier: web", "")
        .replace("image: main.wasm", "image: main-v2.wasm");
    let edited = k.write("ssa2.yaml", &edited);
    k.ok(&["apply", "--server-side", "-f", &edited]);
    let d: serde_json::Value = serde_json::from_str(&k.ok(&[
        "get",
        "deploy",
        "ssa",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{d}");
    assert_eq!(containers[0]["image"], "main-v2.wasm");
    assert!(d["metadata"]["labels"].get("tier").is_none(), "{d}");
    assert_eq!(d["metadata"]["managedFields"][0]["manager"], "kubectl");
    assert_eq!(d["metadata"]["managedFields"][0]["operation"], "Apply");
    // Another manager applying a different replica count conflicts, until it forces.
    let other = k.write(
        "other.yaml",
        &SSA_DEPLOYMENT.replace("replicas: 2", "replicas: 7"),
    );
    let err = k.fails(&[
        "apply",
        "--server-side",
        "--field-manager=ops",
        "-f",
        &other,
    ]);
    assert!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=ops",
        "--force-conflicts",
        "-f",
        &other,
    ]);
    assert_eq!(
        k.ok(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}"]),
        "7"
    );
    let err = k.fails(&[
        "apply",
        "--server-side",
        "-f",
        &k.write(
            "bad.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: 1}\n",
        ),
    ]);
    assert!(err.contains("data.a") || err.contains("data"), "{err}");
}

/// Server-side dry-run as kubectl uses it: `apply --dry-run=server`, `diff` (a dry-run patch),
/// `delete --dry-run=server` and `create --dry-run=server` show what would happen and change
/// nothing: the live objects keep their data and resourceVersion, and no Service address or
/// port is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_run_and_diff_change_nothing() {
    let k = Kubectl::start(35).await;
    let file = k.write("shop.yaml", MANIFEST);
    k.ok(&["apply", "-f", &file]);
    let version = |k: &Kubectl| {
        k.ok(&[
            "get",
            "cm",
            "invoice-config",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.resourceVersion}/{.data.currency}",
        ])
    };
    let before = version(&k);
    let edited = k.write(
        "edited.yaml",
        &MANIFEST.replace("currency: EUR", "currency: CHF"),
    );
    let out = k.ok(&["apply", "--dry-run=server", "-f", &edited]);
    assert!(
        out.contains("configmap/invoice-config configured (server dry run)"),
        "{out}"
    );
    let out = k.ok(&["apply", "--server-side", "--dry-run=server", "-f", &edited]);
    assert!(out.contains("serverside-applied (server dry run)"), "{out}");
    // `kubectl diff` exits 1 when there is a difference, and shows it.
    let (ok, out, err) = k.run(&["diff", "-f", &edited]);
    assert!(!ok && out.contains("+  currency: CHF"), "{out}\n{err}");
    let out = k.ok(&["delete", "--dry-run=server", "-f", &file]);
    assert!(out.contains("(server dry run)"), "{out}");
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "probe",
        "--tcp=80:8080",
        "--node-port=30555",
        "-n",
        "shop",
        "--dry-run=server",
    ]);
    assert_eq!(version(&k), before, "the live object did not change");
    k.ok(&["get", "namespace", "shop"]);
    k.fails(&["get", "service", "probe", "-n", "shop"]);
    // The node port the dry run asked for is still free.
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "real",
        "--tcp=80:8080",
        "--node-port=30555",
        "-n",
        "shop",
    ]);
}

/// Pod Security admission through the real kubectl: baseline by default (a hostPath pod is
/// refused with Kubernetes' words, Wasm or not), warn levels come back as `Warning:` lines,
/// workloads are only warned of, a namespace chooses its level by label (and a label naming
/// no level is refused), kube-system is exempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_levels_refuse_and_warn_as_kubernetes_does() {
    let k = Kubectl::start(109).await;
    let host_pod = |ns: &str| {
        k.write(
            &format!("host-{ns}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: escape, namespace: {ns}}}\nspec:\n  \
                 containers: [{{name: c, image: hello-world:v1}}]\n  \
                 volumes: [{{name: root, hostPath: {{path: /}}}}]\n"
            ),
        )
    };
    let err = k.fails(&["apply", "-f", &host_pod("default")]);
    assert!(
        err.contains("pods \"escape\" is forbidden: violates PodSecurity \"baseline:latest\": hostPath volumes (volume \"root\")"),
        "{err}"
    );
    k.ok(&["apply", "-f", &host_pod("kube-system")]);
    k.ok(&["create", "namespace", "ops"]);
    k.ok(&[
        "label",
        "namespace",
        "ops",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    k.ok(&["apply", "-f", &host_pod("ops")]);

    let err = k.fails(&[
        "label",
        "namespace",
        "ops",
        "--overwrite",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    assert!(err.contains("pod-security.kubernetes.io/enforce"), "{err}");

    // Warn stricter than enforce: created, with the warning kubectl prints.
    k.ok(&[
        "label",
        "namespace",
        "default",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let (ok, _, err) = k.run(&["run", "plain", "--image=hello-world:v1"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"),
        "{err}"
    );
    // A workload breaking enforce is created, with a warning; its pods would be refused.
    let deployment = k.write(
        "hostnet.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: hostnet}\nspec:\n  \
         selector: {matchLabels: {app: h}}\n  template:\n    metadata: {labels: {app: h}}\n    \
         spec: {hostNetwork: true, containers: [{name: c, image: hello-world:v1}]}\n",
    );
    let (ok, _, err) = k.run(&["apply", "-f", &deployment]);
    assert!(ok, "{err}");
    assert!(
        err.contains("Warning: would violate PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"),
        "{err}"
    );
}

/// Impersonation (issue 16): `Impersonate-*` headers were ignored, so `--as=nobody` read
/// Secrets as the admin and a token without rights could name itself admin. Now every part
/// impersonated is an RBAC check with the verb `impersonate`, and the request is served as
/// the impersonated user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_is_authorized_and_serves_as_the_impersonated_user() {
    let k = Kubectl::start(36).await;
    k.ok(&["create", "secret", "generic", "s", "--from-literal=a=b"]);
    // The admin may impersonate anybody, and is then only that user.
    let err = k.fails(&["get", "secrets", "--as=nobody"]);
    assert!(
        err.contains("User \"nobody\" cannot list resource \"secrets\""),
        "{err}"
    );
    // A token without rights cannot become the admin, nor join system:masters.
    k.ok(&["create", "serviceaccount", "robot"]);
    let token = k.ok(&["create", "token", "robot"]).trim().to_string();
    let as_robot = format!("--token={token}");
    let err = k.fails(&[
        &as_robot,
        "get",
        "secrets",
        "--as=admin",
        "--as-group=system:masters",
    ]);
    assert!(
        err.contains("cannot impersonate resource \"users\""),
        "{err}"
    );
    // Allowed to impersonate alice only: alice yes, bob no, alice in system:masters no.
    k.ok(&[
        "create",
        "clusterrole",
        "be-alice",
        "--verb=impersonate",
        "--resource=users",
        "--resource-name=alice",
    ]);
    k.ok(&[
        "create",
        "clusterrolebinding",
        "robot-is-alice",
        "--clusterrole=be-alice",
        "--serviceaccount=default:robot",
    ]);
    let err = k.fails(&[&as_robot, "get", "pods", "--as=alice"]);
    assert!(err.contains("User \"alice\" cannot list"), "{err}");
    let err = k.fails(&[&as_robot, "get", "pods", "--as=bob"]);
    assert!(
        err.contains("cannot impersonate resource \"users\""),
        "{err}"
    );
    let err = k.fails(&[
        &as_robot,
        "get",
        "secrets",
        "--as=alice",
        "--as-group=system:masters",
    ]);
    assert!(
        err.contains("cannot impersonate resource \"groups\""),
        "{err}"
    );
    // can-i and whoami answer for the impersonated user.
    let (ok, out, _) = k.run(&["auth", "can-i", "get", "secrets", "--as=bob"]);
    assert!(!ok && out.trim() == "no", "{out}");
    k.ok(&[
        "create",
        "rolebinding",
        "alice-views",
        "--clusterrole=view",
        "--user=alice",
    ]);
    assert_eq!(
        k.ok(&["auth", "can-i", "list", "pods", "--as=alice"])
            .trim(),
        "yes"
    );
    let who = k.ok(&[
        "auth",
        "whoami",
        "--as=alice",
        "--as-group=devs",
        "-o",
        "json",
    ]);
    assert!(
        who.contains("\"username\": \"alice\"") && who.contains("devs"),
        "{who}"
    );
}

/// The review APIs: who am I, what may I do (the list), and may somebody else do this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_apis_answer_for_self_and_for_others() {
    let k = Kubectl::start(37).await;
    let who = k.ok(&["auth", "whoami"]);
    assert!(
        who.contains("admin") && who.contains("system:masters"),
        "{who}"
    );
    k.ok(&["create", "serviceaccount", "robot"]);
    k.ok(&[
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "robot-reads",
        "--role=reader",
        "--serviceaccount=default:robot",
    ]);
    let token = k.ok(&["create", "token", "robot"]).trim().to_string();
    let list = k.ok(&[&format!("--token={token}"), "auth", "can-i", "--list"]);
    let pods = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(pods.contains("[get list]"), "{list}");
    assert!(list.contains("selfsubjectaccessreviews"), "{list}");
    // SubjectAccessReview: the admin asks for the robot.
    let review = |kind: &str, ns: Option<&str>, verb: &str| {
        let meta = ns.map_or(String::new(), |n| format!("metadata: {{namespace: {n}}}\n"));
        let file = k.write(
            "review.yaml",
            &format!(
                "apiVersion: authorization.k8s.io/v1\nkind: {kind}\n{meta}spec:\n  user: system:serviceaccount:default:robot\n  groups: [system:serviceaccounts]\n  resourceAttributes: {{namespace: default, verb: {verb}, resource: pods}}\n"
            ),
        );
        // --validate=false: kubectl checks a kind without a PATCH operation against the
        // CustomResourceDefinitions, which are not served yet (the API kinds issue).
        k.run(&[
            "create",
            "--validate=false",
            "-f",
            &file,
            "-o",
            "jsonpath={.status.allowed}",
        ])
    };
    let allowed = |kind: &str, ns: Option<&str>, verb: &str| {
        let (ok, out, err) = review(kind, ns, verb);
        assert!(ok, "{kind} {verb}: {err}");
        out
    };
    assert_eq!(allowed("SubjectAccessReview", None, "list"), "true");
    assert_eq!(allowed("SubjectAccessReview", None, "delete"), "false");
    assert_eq!(
        allowed("LocalSubjectAccessReview", Some("default"), "get"),
        "true"
    );
    let (ok, _, err) = review("LocalSubjectAccessReview", Some("kube-system"), "get");
    assert!(
        !ok && err.contains("spec.resourceAttributes.namespace"),
        "{err}"
    );
    // Asking for others is a right of its own: the robot may not.
    let file = k.write(
        "sar.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: admin\n  resourceAttributes: {verb: get, resource: secrets}\n",
    );
    let err = k.fails(&[
        &format!("--token={token}"),
        "create",
        "--validate=false",
        "-f",
        &file,
    ]);
    assert!(err.contains("subjectaccessreviews"), "{err}");
}

/// Waits up to 60 s for `check` to hold of kubectl's output for `args`.
fn eventually(k: &Kubectl, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, out, _) = k.run(args);
        if check(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: last saw {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Namespace deletion (issue 16): a namespace was removed with everything in it at once,
/// finalizers ignored. Now it stays Terminating, says what holds it, takes nothing new, and
/// goes when the last finalizer of its contents is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_waits_for_the_finalizers_of_its_contents() {
    let k = Kubectl::start(38).await;
    k.ok(&["create", "namespace", "hold"]);
    k.ok(&[
        "-n",
        "hold",
        "create",
        "configmap",
        "held",
        "--from-literal=a=b",
    ]);
    k.ok(&[
        "-n",
        "hold",
        "create",
        "configmap",
        "free",
        "--from-literal=a=b",
    ]);
    k.ok(&[
        "-n",
        "hold",
        "patch",
        "configmap",
        "held",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    k.ok(&["delete", "namespace", "hold", "--wait=false"]);
    let condition =
        "jsonpath={.status.conditions[?(@.type==\"NamespaceFinalizersRemaining\")].message}";
    let message = eventually(
        &k,
        &["get", "namespace", "hold", "-o", condition],
        "the namespace reports the finalizer holding it",
        |out| out.contains("example.com/hold"),
    );
    assert!(message.contains("in 1 resource instances"), "{message}");
    assert_eq!(
        k.ok(&["get", "namespace", "hold", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    // What has no finalizer is gone; what has one is marked and kept.
    eventually(
        &k,
        &["-n", "hold", "get", "configmaps", "-o", "name"],
        "the free ConfigMap is deleted",
        |out| !out.contains("configmap/free") && out.contains("configmap/held"),
    );
    let marked = k.ok(&[
        "-n",
        "hold",
        "get",
        "configmap",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!marked.is_empty());
    let err = k.fails(&[
        "-n",
        "hold",
        "create",
        "configmap",
        "late",
        "--from-literal=a=b",
    ]);
    assert!(err.contains("is being terminated"), "{err}");
    // Events still go in: they report the deletion itself.
    let event = k.write(
        "event.yaml",
        "apiVersion: v1\nkind: Event\nmetadata: {name: deleting, namespace: hold}\ninvolvedObject: {kind: Namespace, name: hold}\nreason: Deleting\nmessage: going\n",
    );
    k.ok(&["create", "-f", &event]);
    k.ok(&[
        "-n",
        "hold",
        "patch",
        "configmap",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    k.ok(&["wait", "--for=delete", "namespace/hold", "--timeout=60s"]);
    // The system namespaces and a new one carry the finalizer; only /finalize changes it.
    k.ok(&["create", "namespace", "again"]);
    assert_eq!(
        k.ok(&[
            "get",
            "namespace",
            "again",
            "-o",
            "jsonpath={.spec.finalizers}"
        ]),
        "[\"kubernetes\"]"
    );
    k.ok(&[
        "patch",
        "namespace",
        "again",
        "-p",
        r#"{"spec":{"finalizers":[]}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "namespace",
            "again",
            "-o",
            "jsonpath={.spec.finalizers}"
        ]),
        "[\"kubernetes\"]"
    );
}

/// Garbage collection for every kind (issue 16): the collector knew a fixed list of kinds, so
/// a ConfigMap owned by a Deployment outlived it and `--cascade=foreground` on a ConfigMap left
/// it stuck with its finalizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_and_cascades_work_for_any_kind() {
    let k = Kubectl::start(39).await;
    k.ok(&[
        "create",
        "deployment",
        "owner",
        "--image=x:v1",
        "--replicas=0",
    ]);
    let uid = k.ok(&[
        "get",
        "deployment",
        "owner",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let owned = |name: &str, kind: &str, api_version: &str, owner: &str, uid: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n  - {{apiVersion: {api_version}, kind: {kind}, name: {owner}, uid: {uid}}}\ndata: {{a: b}}\n"
        )
    };
    let file = k.write(
        "owned.yaml",
        &owned("owned", "Deployment", "apps/v1", "owner", &uid),
    );
    k.ok(&["apply", "-f", &file]);
    k.ok(&["delete", "deployment", "owner"]);
    k.ok(&["wait", "--for=delete", "configmap/owned", "--timeout=60s"]);
    // A ConfigMap owning a Secret, deleted in the foreground: the Secret first, then it.
    k.ok(&["create", "configmap", "parent", "--from-literal=a=b"]);
    let uid = k.ok(&[
        "get",
        "configmap",
        "parent",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let child = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: child\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: parent, uid: {uid}, blockOwnerDeletion: true}}\nstringData: {{a: b}}\n"
    );
    let file = k.write("child.yaml", &child);
    k.ok(&["apply", "-f", &file]);
    k.ok(&[
        "delete",
        "configmap",
        "parent",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    k.fails(&["get", "secret", "child"]);
    k.fails(&["get", "configmap", "parent"]);
    // Orphan: the dependent stays, without its owner reference.
    k.ok(&["create", "configmap", "parent2", "--from-literal=a=b"]);
    let uid = k.ok(&[
        "get",
        "configmap",
        "parent2",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let file = k.write(
        "orphan.yaml",
        &owned("orphan", "ConfigMap", "v1", "parent2", &uid),
    );
    k.ok(&["apply", "-f", &file]);
    k.ok(&[
        "delete",
        "configmap",
        "parent2",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    k.fails(&["get", "configmap", "parent2"]);
    assert_eq!(
        k.ok(&[
            "get",
            "configmap",
            "orphan",
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );
}
