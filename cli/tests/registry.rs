//! The cluster's own OCI registry (`/v2/` on the API address), end to end: a real `drover up`,
//! the real `skopeo` (Debian) pushing and pulling through the cluster CA, and curl speaking
//! the Distribution API for what skopeo does not do (and for what an attacker would send).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

mod common;
use common::up::Up;

/// The cluster's address, CA and admin token, as a registry client needs them.
struct Client {
    address: String,
    /// A directory holding `ca.crt`, as skopeo's `--*-cert-dir` wants.
    certs: PathBuf,
    admin: String,
}

impl Client {
    fn of(up: &Up, n: u8) -> Client {
        Client::new(
            &format!("127.0.{n}.1:6443"),
            &up.dir.path().join("data"),
            up.dir.path(),
        )
    }

    /// The client of the server at `address` whose data dir is `data` (its CA and admin
    /// kubeconfig), keeping its files in `scratch`.
    fn new(address: &str, data: &Path, scratch: &Path) -> Client {
        let certs = scratch.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(data.join("pki/ca.crt"), certs.join("ca.crt")).unwrap();
        let (ok, admin, err) = common::kubectl(
            &data.join("admin.kubeconfig"),
            scratch,
            &[
                "config",
                "view",
                "--raw",
                "-o",
                "jsonpath={.users[0].user.token}",
            ],
        );
        assert!(
            ok && !admin.trim().is_empty(),
            "the admin kubeconfig has a token: {err}"
        );
        Client {
            address: address.to_string(),
            certs,
            admin: admin.trim().to_string(),
        }
    }

    /// The same cluster through another server.
    fn through(&self, address: &str) -> Client {
        Client {
            address: address.to_string(),
            certs: self.certs.clone(),
            admin: self.admin.clone(),
        }
    }

    fn image(&self, repo: &str) -> String {
        format!("docker://{}/{repo}", self.address)
    }

    /// `skopeo copy` with `token` as the password on the registry side(s); (ok, stderr).
    fn skopeo_copy(&self, token: &str, from: &str, to: &str) -> (bool, String) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--retry-times", "0"]);
        if from.starts_with("docker://") {
            cmd.arg("--src-cert-dir").arg(&self.certs);
            cmd.args(["--src-creds", &format!("someone:{token}")]);
        }
        if to.starts_with("docker://") {
            cmd.arg("--dest-cert-dir").arg(&self.certs);
            cmd.args(["--dest-creds", &format!("someone:{token}")]);
        }
        let out = cmd
            .args([from, to])
            .output()
            .expect("skopeo is installed by scripts/test.sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// One request with curl; (status, headers lower-cased, body).
    fn curl(&self, method: &str, path: &str, auth: Auth, body: Option<(&[u8], &str)>) -> Reply {
        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("h");
        let out_body = dir.path().join("b");
        let mut cmd = Command::new("curl");
        cmd.arg("-s");
        if method == "HEAD" {
            cmd.arg("-I");
        } else {
            cmd.args(["-X", method]);
        }
        cmd.arg("--cacert")
            .arg(self.certs.join("ca.crt"))
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&out_body)
            .args(["-w", "%{http_code}"]);
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => {
                cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
            }
            Auth::Basic(t) => {
                cmd.args(["-u", &format!("me:{t}")]);
            }
        }
        if let Some((bytes, content_type)) = body {
            let file = dir.path().join("in");
            std::fs::write(&file, bytes).unwrap();
            cmd.arg("--data-binary")
                .arg(format!("@{}", file.display()))
                .args(["-H", &format!("Content-Type: {content_type}")]);
        }
        let out = cmd
            .arg(format!("https://{}{path}", self.address))
            .output()
            .unwrap();
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        Reply {
            status,
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read(&out_body).unwrap_or_default(),
        }
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str),
}

/// method, path, body and content type, then the status, code and words of the refusal.
type BadRequest<'a> = (
    &'a str,
    &'a str,
    Option<(&'a [u8], &'a str)>,
    u16,
    &'a str,
    &'a str,
);

struct Reply {
    status: u16,
    /// The response's header lines, as received.
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {}\n{}",
            self.status,
            String::from_utf8_lossy(&self.body),
            self.headers
        )
    }
}

/// `sha256:HEX` of `bytes`, by the system's `sha256sum` (the test crate has no hashing
/// dependency).
fn digest(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    format!("sha256:{hex}")
}

/// A ServiceAccount `name` in `ns` bound to the ClusterRole `role` there; its token.
fn account(up: &Up, ns: &str, name: &str, role: &str) -> String {
    up.ok(&["create", "serviceaccount", name, "-n", ns]);
    up.ok(&[
        "create",
        "rolebinding",
        &format!("{name}-{role}"),
        "-n",
        ns,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount={ns}:{name}"),
    ]);
    up.ok(&["create", "token", name, "-n", ns])
        .trim()
        .to_string()
}

/// Pushes the example `hello_world.wasm` as a CNCF Wasm artifact to `repo:tag` with curl
/// (monolithic uploads); the manifest's digest.
fn push_wasm(c: &Client, token: &str, repo: &str, tag: &str) -> String {
    let auth = Auth::Bearer(token);
    let wasm = std::fs::read(common::examples().join("hello_world.wasm")).unwrap();
    let config = b"{}".to_vec();
    for blob in [&wasm, &config] {
        let r = c.curl(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob)),
            auth,
            Some((blob, "application/octet-stream")),
        );
        assert_eq!(r.status, 201, "{}", r.describe());
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": digest(&wasm), "size": wasm.len()}]})
    .to_string();
    let r = c.curl(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        auth,
        Some((
            manifest.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    digest(manifest.as_bytes())
}

/// Whether skopeo's error is a refusal (it reports some as their status, some as the code).
fn denied(err: &str) -> bool {
    err.contains("403 (Forbidden)") || err.contains("denied")
}

/// The manifest digest of an OCI layout's one image.
fn layout_manifest(dir: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn skopeo_pushes_an_image_and_pulls_it_back_unchanged_and_rbac_decides_who_may() {
    let up = Up::start(57);
    let c = Client::of(&up, 57);
    let layout = up.dir.path().join("busybox");
    let pushed = testkit::images::busybox()
        .unwrap()
        .write_oci_layout(&layout, "busybox:1")
        .unwrap();
    let src = format!("oci:{}:busybox:1", layout.display());

    // The admin pushes with basic credentials whose password is the token (`skopeo login`'s
    // way), through the cluster CA.
    let (ok, err) = c.skopeo_copy(&c.admin, &src, &c.image("default/tools/busybox:1"));
    assert!(ok, "push: {err}\n{}", up.log());
    // And pulls it back, byte for byte: the same manifest digest.
    let back = up.dir.path().join("back");
    let (ok, err) = c.skopeo_copy(
        &c.admin,
        &c.image("default/tools/busybox:1"),
        &format!("oci:{}:copy", back.display()),
    );
    assert!(ok, "pull: {err}");
    assert_eq!(layout_manifest(&back), pushed);
    let tags = c.curl(
        "GET",
        "/v2/default/tools/busybox/tags/list",
        Auth::Bearer(&c.admin),
        None,
    );
    assert_eq!(
        tags.json(),
        json!({"name": "default/tools/busybox", "tags": ["1"]})
    );
    let head = c.curl(
        "HEAD",
        "/v2/default/tools/busybox/manifests/1",
        Auth::Basic(&c.admin),
        None,
    );
    assert_eq!(head.status, 200, "{}", head.describe());
    assert_eq!(
        head.header("docker-content-digest").as_deref(),
        Some(pushed.as_str())
    );

    // Who may: `edit` pushes and pulls in its namespace, `view` only pulls, neither elsewhere.
    up.ok(&["create", "namespace", "team-a"]);
    up.ok(&["create", "namespace", "team-b"]);
    let pusher = account(&up, "team-a", "pusher", "edit");
    let reader = account(&up, "team-a", "reader", "view");
    let (ok, err) = c.skopeo_copy(&pusher, &src, &c.image("team-a/busybox:1"));
    assert!(ok, "edit pushes in its namespace: {err}");
    let (ok, err) = c.skopeo_copy(&pusher, &src, &c.image("team-b/busybox:1"));
    assert!(!ok && denied(&err), "edit pushes elsewhere: {err}");
    let (ok, err) = c.skopeo_copy(&reader, &src, &c.image("team-a/busybox:2"));
    assert!(!ok && denied(&err), "view pushes: {err}");
    let (ok, err) = c.skopeo_copy(
        &reader,
        &c.image("team-a/busybox:1"),
        &format!("oci:{}:r", up.dir.path().join("r").display()),
    );
    assert!(ok, "view pulls: {err}");
    let denied = c.curl(
        "GET",
        "/v2/default/tools/busybox/manifests/1",
        Auth::Bearer(&reader),
        None,
    );
    assert_eq!(
        (denied.status, denied.code()),
        (403, "DENIED".into()),
        "{}",
        denied.describe()
    );
    let message = denied.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("repositories") && message.contains("default"),
        "{message}"
    );

    // No credentials, or bad ones: 401 with the challenge clients follow to `/v2/token`.
    let anonymous = c.curl("GET", "/v2/", Auth::None, None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.describe());
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=\"https://127.0.57.1:6443/v2/token\""),
        "{challenge}"
    );
    assert_eq!(
        c.curl("GET", "/v2/", Auth::Bearer("nope"), None).status,
        401
    );
    assert_eq!(
        c.curl("GET", "/v2/token", Auth::Basic("nope"), None).status,
        401
    );
    let token = c.curl(
        "GET",
        "/v2/token?service=drover",
        Auth::Basic(&reader),
        None,
    );
    assert_eq!(token.status, 200, "{}", token.describe());
    let exchanged = token.json()["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        c.curl("GET", "/v2/", Auth::Bearer(&exchanged), None).status,
        200
    );
    assert_eq!(
        c.curl("GET", "/v2/", Auth::None, None)
            .header("docker-distribution-api-version")
            .as_deref(),
        Some("registry/2.0")
    );

    // A layer of team-a's image, by its digest, from team-b (where the pusher of team-b may
    // pull and push): blobs are shared on disk, but a repository reads only what was pushed
    // or mounted into it.
    let intruder_ns = "team-b";
    let intruder = account(&up, intruder_ns, "intruder", "edit");
    let manifest = c.curl(
        "GET",
        "/v2/team-a/busybox/manifests/1",
        Auth::Bearer(&c.admin),
        None,
    );
    let layer = manifest.json()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let config = manifest.json()["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let stolen = c.curl(
        "GET",
        &format!("/v2/team-b/loot/blobs/{layer}"),
        Auth::Bearer(&intruder),
        None,
    );
    assert_eq!(
        (stolen.status, stolen.code()),
        (404, "BLOB_UNKNOWN".into()),
        "{}",
        stolen.describe()
    );
    // Mounting it from team-a needs the right to pull there: without it, an upload begins.
    let mount = c.curl(
        "POST",
        &format!("/v2/team-b/loot/blobs/uploads/?mount={layer}&from=team-a/busybox"),
        Auth::Bearer(&intruder),
        None,
    );
    assert_eq!(mount.status, 202, "{}", mount.describe());
    // A manifest naming the layer without pushing it is refused.
    let forged = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 1}]});
    let forged = c.curl(
        "PUT",
        "/v2/team-b/loot/manifests/1",
        Auth::Bearer(&intruder),
        Some((
            forged.to_string().as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )),
    );
    assert_eq!(
        (forged.status, forged.code()),
        (400, "MANIFEST_BLOB_UNKNOWN".into()),
        "{}",
        forged.describe()
    );
    // With the right to pull in team-a, the mount links it without sending it again.
    let mount = c.curl(
        "POST",
        &format!("/v2/team-a/copy/blobs/uploads/?mount={layer}&from=team-a/busybox"),
        Auth::Bearer(&pusher),
        None,
    );
    assert_eq!(mount.status, 201, "{}", mount.describe());
    let mounted = c.curl(
        "HEAD",
        &format!("/v2/team-a/copy/blobs/{layer}"),
        Auth::Bearer(&reader),
        None,
    );
    assert_eq!(mounted.status, 200, "{}", mounted.describe());
}

#[test]
fn the_distribution_api_takes_chunks_artifacts_and_referrers_and_refuses_bad_input_by_name() {
    let up = Up::start(58);
    let c = Client::of(&up, 58);
    let admin = Auth::Bearer(&c.admin);

    // A Wasm component as a CNCF Wasm artifact, uploaded in two chunks.
    let wasm = std::fs::read(common::examples().join("hello_world.wasm")).unwrap();
    let wasm_digest = digest(&wasm);
    let begun = c.curl("POST", "/v2/default/hello/blobs/uploads/", admin, None);
    assert_eq!(begun.status, 202, "{}", begun.describe());
    let location = begun.header("location").unwrap();
    let half = wasm.len() / 2;
    let first = c.curl(
        "PATCH",
        &location,
        admin,
        Some((&wasm[..half], "application/octet-stream")),
    );
    assert_eq!(first.status, 202, "{}", first.describe());
    assert_eq!(first.header("range"), Some(format!("0-{}", half - 1)));
    // A chunk that does not start where the upload is: 416, and the upload is unchanged.
    let mut misplaced = Command::new("curl");
    let status = misplaced
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PATCH",
            "--cacert",
        ])
        .arg(c.certs.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", c.admin)])
        .args(["-H", "Content-Range: 0-3", "--data-binary", "abcd"])
        .arg(format!("https://{}{location}", c.address))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "416");
    // Finishing with the wrong digest is refused; with the right one it is stored.
    let wrong = c.curl(
        "PUT",
        &format!("{location}?digest={}", digest(b"other")),
        admin,
        Some((&wasm[half..], "application/octet-stream")),
    );
    assert_eq!(
        (wrong.status, wrong.code()),
        (400, "DIGEST_INVALID".into()),
        "{}",
        wrong.describe()
    );
    let done = c.curl(
        "PUT",
        &format!("{location}?digest={wasm_digest}"),
        admin,
        None,
    );
    assert_eq!(done.status, 201, "{}", done.describe());
    let config = b"{}".to_vec();
    let config_digest = digest(&config);
    let mono = c.curl(
        "POST",
        &format!("/v2/default/hello/blobs/uploads/?digest={config_digest}"),
        admin,
        Some((&config, "application/octet-stream")),
    );
    assert_eq!(mono.status, 201, "{}", mono.describe());
    let got = c.curl(
        "GET",
        &format!("/v2/default/hello/blobs/{wasm_digest}"),
        admin,
        None,
    );
    assert_eq!(got.status, 200);
    assert!(got.body == wasm, "the blob comes back byte for byte");

    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.wasm.config.v0+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": wasm_digest, "size": wasm.len()}]})
    .to_string();
    let put = c.curl(
        "PUT",
        "/v2/default/hello/manifests/v1",
        admin,
        Some((
            manifest.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )),
    );
    assert_eq!(put.status, 201, "{}", put.describe());
    let manifest_digest = digest(manifest.as_bytes());
    assert_eq!(
        put.header("docker-content-digest"),
        Some(manifest_digest.clone())
    );

    // A signature referring to it, found through the referrers API, filtered by type.
    let signature = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len()}})
    .to_string();
    let put = c.curl(
        "PUT",
        &format!(
            "/v2/default/hello/manifests/{}",
            digest(signature.as_bytes())
        ),
        admin,
        Some((
            signature.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )),
    );
    assert_eq!(put.status, 201, "{}", put.describe());
    assert_eq!(put.header("oci-subject"), Some(manifest_digest.clone()));
    let referrers = c.curl(
        "GET",
        &format!("/v2/default/hello/referrers/{manifest_digest}"),
        admin,
        None,
    );
    assert_eq!(
        referrers.json()["manifests"][0]["artifactType"],
        "application/example.signature"
    );
    let filtered = c.curl(
        "GET",
        &format!("/v2/default/hello/referrers/{manifest_digest}?artifactType=other"),
        admin,
        None,
    );
    assert_eq!(filtered.json()["manifests"], json!([]));
    assert_eq!(
        filtered.header("oci-filters-applied").as_deref(),
        Some("artifactType")
    );

    // Bad input, each refused with the code clients know and a message naming what is wrong.
    let cases: Vec<BadRequest> = vec![
        (
            "GET",
            "/v2/hello/manifests/v1",
            None,
            400,
            "NAME_INVALID",
            "NAMESPACE/NAME",
        ),
        (
            "GET",
            "/v2/default/Hello/manifests/v1",
            None,
            400,
            "NAME_INVALID",
            "\"Hello\"",
        ),
        (
            "GET",
            "/v2/default/hello/manifests/-x",
            None,
            400,
            "TAG_INVALID",
            "invalid tag",
        ),
        (
            "GET",
            "/v2/default/hello/blobs/sha512:00",
            None,
            400,
            "DIGEST_INVALID",
            "sha256",
        ),
        (
            "GET",
            "/v2/default/hello/manifests/v2",
            None,
            404,
            "MANIFEST_UNKNOWN",
            "no tag \"v2\"",
        ),
        (
            "GET",
            "/v2/default/nothing/tags/list",
            None,
            404,
            "NAME_UNKNOWN",
            "not known",
        ),
        (
            "GET",
            "/v2/default/hello/tags/list?n=ten",
            None,
            400,
            "PAGINATION_NUMBER_INVALID",
            "not a number",
        ),
        (
            "POST",
            "/v2/nowhere/x/blobs/uploads/",
            None,
            404,
            "NAME_UNKNOWN",
            "kubectl create namespace nowhere",
        ),
        (
            "PUT",
            "/v2/default/hello/manifests/bad",
            Some((
                b"{\"schemaVersion\": 2}",
                "application/vnd.oci.image.manifest.v1+json",
            )),
            400,
            "MANIFEST_INVALID",
            "config is required",
        ),
        (
            "PUT",
            "/v2/default/hello/manifests/bad",
            Some((b"not json", "application/json")),
            400,
            "MANIFEST_INVALID",
            "not JSON",
        ),
        (
            "PATCH",
            "/v2/default/hello/blobs/uploads/0123",
            Some((b"x", "application/octet-stream")),
            404,
            "BLOB_UPLOAD_UNKNOWN",
            "begin the upload again",
        ),
    ];
    for (method, path, body, status, code, words) in cases {
        let r = c.curl(method, path, admin, body);
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_string()),
            "{method} {path}: {}",
            r.describe()
        );
        let message = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(words), "{method} {path}: {message}");
    }
    // An index naming a manifest the repository does not have.
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(b"missing"), "size": 7}]})
    .to_string();
    let r = c.curl(
        "PUT",
        "/v2/default/hello/manifests/index",
        admin,
        Some((index.as_bytes(), "application/vnd.oci.image.index.v1+json")),
    );
    assert_eq!(
        (r.status, r.code()),
        (404, "MANIFEST_UNKNOWN".into()),
        "{}",
        r.describe()
    );

    // Deleting by digest takes its tags with it; the Kubernetes API never sees any of this.
    let deleted = c.curl(
        "DELETE",
        &format!("/v2/default/hello/manifests/{manifest_digest}"),
        admin,
        None,
    );
    assert_eq!(deleted.status, 202, "{}", deleted.describe());
    let gone = c.curl("GET", "/v2/default/hello/manifests/v1", admin, None);
    assert_eq!(gone.status, 404, "{}", gone.describe());
    let (ok, out, _) = up.run(&["get", "--raw", "/api/v1/namespaces/default/pods"]);
    assert!(ok, "{out}");
}

#[test]
fn nodes_pull_their_pods_images_from_the_cluster_registry_and_only_their_namespaces() {
    let up = Up::start(59);
    let c = Client::of(&up, 59);
    up.ok(&["create", "namespace", "team-a"]);
    up.ok(&["create", "namespace", "team-b"]);
    push_wasm(&c, &c.admin, "default/hello", "1");
    push_wasm(&c, &c.admin, "team-a/private", "1");
    for ns in ["team-a", "team-b"] {
        up.until(30, "the namespace's default ServiceAccount", || {
            up.run(&["get", "serviceaccount", "default", "-n", ns])
                .0
                .then_some(())
        });
    }

    // By the cluster's alias and by the API address: no insecure-registry setting, no pull
    // secret; the node pulls over the cluster CA with its own credential.
    up.ok(&[
        "run",
        "by-alias",
        "--image=registry.drover.internal/default/hello:1",
        "--restart=Never",
    ]);
    up.ok(&[
        "run",
        "by-address",
        "--image=127.0.59.1:6443/default/hello:1",
        "--restart=Never",
    ]);
    for pod in ["by-alias", "by-address"] {
        running(&up, "default", pod);
    }
    let (_, events, _) = up.run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=by-alias",
    ]);
    assert!(
        events.contains("Pulled") || events.contains("Pulling"),
        "{events}"
    );

    // A pod of team-b naming team-a's image: its node may not pull it for team-b (the node
    // authorizer lets a node pull only its pods' own namespace's repositories), so it fails
    // with the registry's refusal, while the same image runs in team-a.
    // First alone: no pod of the node runs that image, so the node may not pull it at all.
    // Then, once team-a's own pod has it on the node: the node's copy is not lent to team-b.
    up.ok(&[
        "run",
        "thief",
        "-n",
        "team-b",
        "--image=registry.drover.internal/team-a/private:1",
        "--restart=Never",
    ]);
    refused_pull(&up, "thief", true);
    up.ok(&[
        "run",
        "owner",
        "-n",
        "team-a",
        "--image=registry.drover.internal/team-a/private:1",
        "--restart=Never",
    ]);
    running(&up, "team-a", "owner");
    up.ok(&[
        "run",
        "second-thief",
        "-n",
        "team-b",
        "--image=registry.drover.internal/team-a/private:1",
        "--restart=Never",
    ]);
    refused_pull(&up, "second-thief", true);
    // Nor by naming the node's copy by its digest under any other name.
    let wasm = std::fs::read(common::examples().join("hello_world.wasm")).unwrap();
    up.ok(&[
        "run",
        "digest-thief",
        "-n",
        "team-b",
        &format!("--image=registry.example.invalid/x/y@{}", digest(&wasm)),
        "--restart=Never",
    ]);
    refused_pull(&up, "digest-thief", false);
}

/// Waits for team-b's pod `pod` to fail its pull (`by_registry`: refused by the cluster
/// registry, not merely unreachable).
fn refused_pull(up: &Up, pod: &str, by_registry: bool) {
    let status = up.until(60, &format!("{pod}'s pull to fail"), || {
        let (_, out, _) = up.run(&[
            "get",
            "pod",
            pod,
            "-n",
            "team-b",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ]);
        (!out.is_empty() && out != "ContainerCreating").then_some(out)
    });
    let yaml = up.run(&["get", "pod", pod, "-n", "team-b", "-o", "yaml"]).1;
    assert!(
        status == "ErrImagePull" || status == "ImagePullBackOff",
        "{status}\n{yaml}"
    );
    assert_eq!(phase(up, "team-b", pod), "Pending");
    if !by_registry {
        return;
    }
    assert!(
        yaml.contains("401")
            || yaml.contains("403")
            || yaml.to_lowercase().contains("denied")
            || yaml.to_lowercase().contains("unauthorized"),
        "{yaml}"
    );
}

fn phase(up: &Up, ns: &str, pod: &str) -> String {
    up.run(&[
        "get",
        "pod",
        pod,
        "-n",
        ns,
        "-o",
        "jsonpath={.status.phase}",
    ])
    .1
}

fn running(up: &Up, ns: &str, pod: &str) {
    up.until(60, &format!("pod {ns}/{pod} running"), || {
        (phase(up, ns, pod) == "Running").then_some(())
    });
}

/// Which of the members' data dirs hold blob `digest`.
fn holders(c: &testkit::cluster::Cluster, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    c.members
        .iter()
        .filter(|m| m.data_dir.join("registry/blobs/sha256").join(hex).exists())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_acknowledged_on_a_majority_of_servers_and_pulled_from_any() {
    let mut cluster = testkit::cluster::Cluster::start(common::bin(), 246, 3)
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let first = Client::new(
        &cluster.members[0].addr.to_string(),
        &cluster.members[0].data_dir,
        scratch.path(),
    );
    let pushed = push_wasm(&first, &first.admin, "default/hello", "1");
    let wasm = std::fs::read(common::examples().join("hello_world.wasm")).unwrap();
    // Acknowledged: at least two of the three servers hold the bytes already.
    assert!(holders(&cluster, &digest(&wasm)) >= 2);

    // The server that took the push is lost; another serves the image whole.
    cluster.kill(0);
    let second = first.through(&cluster.members[1].addr.to_string());
    let manifest = second.curl(
        "GET",
        "/v2/default/hello/manifests/1",
        Auth::Bearer(&second.admin),
        None,
    );
    assert_eq!(
        manifest.status,
        200,
        "{}\n{}",
        manifest.describe(),
        cluster.all_logs()
    );
    assert_eq!(manifest.header("docker-content-digest"), Some(pushed));
    for server in [1, 2] {
        let c = first.through(&cluster.members[server].addr.to_string());
        let blob = c.curl(
            "GET",
            &format!("/v2/default/hello/blobs/{}", digest(&wasm)),
            Auth::Bearer(&c.admin),
            None,
        );
        assert_eq!(blob.status, 200, "server {server}: {}", blob.describe());
        assert!(blob.body == wasm, "server {server} gives the bytes back");
    }
    // Two of three are a majority still: a push is taken, held by both.
    let other = b"another blob".to_vec();
    let r = second.curl(
        "POST",
        &format!("/v2/default/hello/blobs/uploads/?digest={}", digest(&other)),
        Auth::Bearer(&second.admin),
        Some((&other, "application/octet-stream")),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_eq!(holders(&cluster, &digest(&other)), 2);
}

fn deploy(up: &Up, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(common::bin())
        .arg("deploy")
        .args(args)
        .arg("--kubeconfig")
        .arg(&up.kubeconfig)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn drover_deploy_takes_a_wasm_file_to_a_live_url() {
    let up = Up::start(55);
    let wasm = common::examples().join("hello_world.wasm");
    let (code, out, err) = deploy(&up, &[wasm.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}\n{err}\n{}", up.log());
    println!("drover deploy said:\n{out}");
    assert!(
        out.contains("pushed   default/hello-world@sha256:"),
        "{out}"
    );
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("ready    "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no URL in {out}"))
        .to_string();
    let host = url.trim_start_matches("http://").to_string();
    assert!(host.starts_with("hello-world.default."), "{url}");
    let (status, body) =
        common::router_get("127.0.55.1:80", &host, "/").expect("the router answers");
    assert_eq!(status, 200, "{body}");
    // The Service's image is the pushed bytes, by digest, in the cluster registry.
    let image = up.ok(&[
        "get",
        "ksvc",
        "hello-world",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert!(
        image.starts_with("registry.drover.internal/default/hello-world@sha256:"),
        "{image}"
    );
    // The same bytes again: the same revision, ready at once.
    let (code, out, err) = deploy(&up, &[wasm.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let revisions = up.ok(&["get", "revisions", "-o", "name"]);
    assert_eq!(revisions.lines().count(), 1, "{revisions}");

    // What is not Wasm, and a namespace that does not exist: exit 1, saying what to do.
    let not_wasm = up.dir.path().join("notes.txt");
    std::fs::write(&not_wasm, "hello").unwrap();
    let (code, _, err) = deploy(&up, &[not_wasm.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is not WebAssembly") && err.contains("wasm32-wasip2"),
        "{err}"
    );
    let (code, _, err) = deploy(&up, &[wasm.to_str().unwrap(), "-n", "nowhere"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("kubectl create namespace nowhere"), "{err}");
}

#[test]
fn oras_py_pushes_and_pulls_with_the_cluster_ca_and_a_token() {
    let up = Up::start(65);
    let c = Client::of(&up, 65);
    up.ok(&["create", "namespace", "team-a"]);
    let pusher = account(&up, "team-a", "pusher", "edit");
    let wasm = std::fs::read(common::examples().join("hello_world.wasm")).unwrap();
    let file = up.dir.path().join("hello.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let script = common::repo().join("cli/tests/python/oras_push_pull.py");
    let oras = |token: &str, target: &str, out: &str, chunked: bool| {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(&c.address)
            .arg(c.certs.join("ca.crt"))
            .arg(token)
            .arg(&file)
            .arg(target)
            .arg(up.dir.path().join(out));
        if chunked {
            cmd.arg("chunked");
        }
        let out = cmd.output().expect("python3 runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (chunked, tag, out) in [(false, "1", "out-1"), (true, "2", "out-2")] {
        let (ok, stdout, stderr) = oras(&pusher, &format!("team-a/hello:{tag}"), out, chunked);
        assert!(
            ok,
            "oras-py (chunked: {chunked}): {stdout}\n{stderr}\n{}",
            up.log()
        );
        let pulled = std::fs::read(up.dir.path().join(out).join("hello.wasm")).unwrap();
        assert!(pulled == wasm, "the pulled file is the pushed one");
    }
    // The same client, pushing where its token may not.
    let (ok, _, stderr) = oras(&pusher, "default/hello:1", "out-3", false);
    assert!(!ok, "a push to another namespace must fail");
    assert!(
        stderr.contains("403") || stderr.to_lowercase().contains("denied"),
        "{stderr}"
    );
}
