//! Knative Serving on Drover, end to end: a real `drover up` driven by the real kubectl with
//! Knative's own manifests (images swapped for the example Wasm functions), and requests sent
//! through the node's function router by Host, as a user's curl sends them.

use std::time::{Duration, Instant};

mod common;
use common::router_get as get;
use common::up::Up;

/// Like [`get`], from the local address `source` (a client elsewhere: outside the cluster,
/// or in its pod range).
fn get_from(source: &str, addr: &str, host: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(format!("{source}:0").parse().ok()?).ok()?;
        let mut s = socket.connect(addr.parse().ok()?).await.ok()?;
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = String::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut buf))
            .await
            .ok()?
            .ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((code, body))
    })
}

fn ksvc_ready(up: &Up, name: &str) -> Option<String> {
    let (ok, out, _) = up.run(&[
        "get",
        "ksvc",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.url}",
    ]);
    (ok && out.starts_with("True ")).then(|| out["True ".len()..].to_string())
}

fn pods_of(up: &Up, service: &str) -> Vec<String> {
    let (_, out, _) = up.run(&[
        "get",
        "pods",
        "-l",
        &format!("serving.knative.dev/service={service}"),
        "-o",
        "name",
    ]);
    out.lines().map(str::to_string).collect()
}

#[test]
fn a_knative_service_gets_a_url_answers_splits_traffic_and_scales_to_zero_and_back() {
    let up = Up::start_with(56, &["--scale-to-zero-grace-period", "1s"]);
    let router = "127.0.56.1:80";
    up.import("hello_world.wasm", "hello-world:v1");

    // Knative's hello world, unchanged but for the image.
    let example = common::repo().join("examples/hello-ksvc.yaml");
    up.ok(&["apply", "-f", example.to_str().unwrap()]);
    let url = up.until(60, "the Knative Service to be Ready", || {
        ksvc_ready(&up, "hello")
    });
    assert_eq!(url, "http://hello.default.example.com");
    let table = up.ok(&["get", "ksvc", "hello"]);
    assert!(
        table.starts_with("NAME")
            && table.contains("URL")
            && table.contains("LATESTCREATED")
            && table.contains("hello-00001")
            && table.contains("True"),
        "{table}"
    );
    for kind in ["configurations", "routes", "revisions"] {
        assert!(
            up.ok(&["get", kind]).contains("hello"),
            "kubectl get {kind}"
        );
    }
    let explain = up.ok(&["explain", "ksvc.spec.template.spec.containerConcurrency"]);
    assert!(explain.contains("in-flight"), "{explain}");
    let (code, body) = get(router, "hello.default.example.com", "/").expect("the router answers");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("Hello world from hello-00001-deployment-"),
        "{body}"
    );
    let (code, _) = get(router, "nobody.default.example.com", "/").unwrap();
    assert_eq!(code, 404);

    // Bad input gets Knative's errors, naming the field.
    let bad = up.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  template:\n    spec:\n      containers: [{image: hello-world:v1}]\n  traffic:\n  - {latestRevision: true, percent: 90, tag: Not_A_Label}\n",
    )
    .unwrap();
    let (ok, _, err) = up.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("spec.traffic: Traffic targets sum to 90, want 100"),
        "{err}"
    );
    assert!(err.contains("spec.traffic[0].tag"), "{err}");
    std::fs::write(
        &bad,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  template:\n    spec:\n      containers: [{image: hello-world:v1}]\n      containerConcurrencyy: 1\n",
    )
    .unwrap();
    let (ok, _, err) = up.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("containerConcurrencyy"), "{err}");
    // A revision is immutable.
    let (ok, _, err) = up.run(&[
        "patch",
        "revision",
        "hello-00001",
        "--type=merge",
        "-p",
        r#"{"spec":{"containerConcurrency":3}}"#,
    ]);
    assert!(!ok && err.contains("Immutable"), "{err}");

    // A second revision and a 90/10 split, with tags.
    let split = common::repo().join("examples/hello-ksvc-split.yaml");
    up.ok(&["apply", "-f", split.to_str().unwrap()]);
    up.until(60, "the split to be in place", || {
        let (_, out, _) = up.run(&[
            "get",
            "route",
            "hello",
            "-o",
            "jsonpath={.status.traffic[*].revisionName}",
        ]);
        (out == "hello-00002 hello-00001").then_some(())
    });
    let mut newer = 0;
    let rounds = 600;
    for _ in 0..rounds {
        let (code, body) = get(router, "hello.default.example.com", "/").unwrap();
        assert_eq!(code, 200, "{body}");
        if body.contains("hello-00002-deployment") {
            newer += 1;
        }
    }
    // 10 % of 600 is 60; five standard deviations (7.3 each) either side.
    assert!(
        (24..=96).contains(&newer),
        "{newer} of {rounds} went to the 10 % revision"
    );
    for _ in 0..20 {
        let (_, body) = get(router, "latest-hello.default.example.com", "/").unwrap();
        assert!(body.contains("hello-00002-deployment"), "{body}");
        let (_, body) = get(router, "stable-hello.default.example.com", "/").unwrap();
        assert!(body.contains("hello-00001-deployment"), "{body}");
    }

    // A Service whose host a tag of another route holds: the older route keeps it.
    up.apply(
        "conflict.yaml",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: latest-hello}\nspec:\n  template:\n    spec:\n      containers: [{image: hello-world:v1}]\n",
    );
    let reason = up.until(60, "the younger route's DomainConflict", || {
        let (_, out, _) = up.run(&[
            "get",
            "ksvc",
            "latest-hello",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ]);
        (out == "DomainConflict").then_some(out)
    });
    assert_eq!(reason, "DomainConflict");
    let (_, body) = get(router, "latest-hello.default.example.com", "/").unwrap();
    assert!(body.contains("hello-00002-deployment"), "{body}");
    // An image that does not exist: Ready False, with the revision's reason.
    up.apply(
        "missing.yaml",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: missing}\nspec:\n  template:\n    spec:\n      containers: [{image: 127.0.0.1:1/nothing:v1}]\n",
    );
    let message = up.until(90, "the missing image to be reported", || {
        let (_, out, _) = up.run(&["get", "ksvc", "missing", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason} {.status.conditions[?(@.type==\"Ready\")].message}"]);
        out.starts_with("RevisionFailed ").then_some(out)
    });
    assert!(message.contains("missing-00001"), "{message}");
    let (code, body) = get(router, "missing.default.example.com", "/").unwrap();
    assert_eq!(
        code, 503,
        "a route without a ready revision answers at once: {body}"
    );
    assert!(body.contains("no traffic targets"), "{body}");
    up.ok(&["delete", "ksvc", "latest-hello", "missing"]);

    // A function that crashes on every request: each request gets its 500 at once, and the
    // other functions answer as before.
    up.import("inflight.wasm", "inflight:v1");
    up.apply(
        "crashy.yaml",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: crashy}\nspec:\n  template:\n    metadata:\n      annotations: {autoscaling.knative.dev/min-scale: \"1\"}\n    spec:\n      timeoutSeconds: 30\n      containers: [{image: \"inflight:v1\"}]\n",
    );
    up.until(60, "the crashing function to be Ready", || {
        ksvc_ready(&up, "crashy")
    });
    for _ in 0..5 {
        let t = Instant::now();
        let (code, body) = get(router, "crashy.default.example.com", "/?crash").unwrap();
        assert_eq!(code, 500, "{body}");
        assert!(
            body.contains("asked to crash") || body.contains("wasm trap"),
            "{body}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    let (code, _) = get(router, "hello.default.example.com", "/").unwrap();
    assert_eq!(code, 200);
    up.ok(&["delete", "ksvc", "crashy"]);

    // A Deployment that a revision would have, made by someone else first: the revision
    // leaves it alone (whoever may create a Knative Service must not rewrite it) and says so.
    up.apply(
        "taken.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: taken-00001-deployment}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: mine}}\n  template:\n    metadata: {labels: {app: mine}}\n    spec:\n      containers: [{name: c, image: mine:v1}]\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: taken}\nspec:\n  template:\n    spec:\n      containers: [{image: hello-world:v1}]\n",
    );
    let reason = up.until(60, "the revision to say NotOwned", || {
        let (_, out, _) = up.run(&["get", "revision", "taken-00001", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason} {.status.conditions[?(@.type==\"Ready\")].message}"]);
        out.starts_with("NotOwned ").then_some(out)
    });
    assert!(reason.contains("taken-00001-deployment"), "{reason}");
    assert_eq!(
        up.ok(&[
            "get",
            "deployment",
            "taken-00001-deployment",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.metadata.ownerReferences}"
        ]),
        "mine:v1 ",
        "the Deployment is untouched"
    );
    up.ok(&["delete", "deployment", "taken-00001-deployment"]);
    up.until(60, "the revision to take its name once it is free", || {
        ksvc_ready(&up, "taken")
    });
    up.ok(&["delete", "ksvc", "taken"]);

    // min-scale holds a revision up only while a route reaches it: once the latest revision
    // takes all the traffic, the old one goes to zero.
    let pinned = |target: &str| {
        format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: pinned}}\nspec:\n  template:\n    metadata:\n      annotations: {{autoscaling.knative.dev/min-scale: \"1\", autoscaling.knative.dev/window: 6s}}\n    spec:\n      containers: [{{image: hello-world:v1, env: [{{name: TARGET, value: {target}}}]}}]\n")
    };
    up.apply("pinned.yaml", &pinned("one"));
    up.until(60, "the pinned service to be Ready", || {
        ksvc_ready(&up, "pinned")
    });
    up.apply("pinned.yaml", &pinned("two"));
    up.until(90, "the unrouted revision to go to zero", || {
        let (_, out, _) = up.run(&[
            "get",
            "pods",
            "-l",
            "serving.knative.dev/revision=pinned-00001",
            "-o",
            "name",
        ]);
        out.trim().is_empty().then_some(())
    });
    assert!(
        !up.ok(&[
            "get",
            "pods",
            "-l",
            "serving.knative.dev/revision=pinned-00002",
            "-o",
            "name"
        ])
        .is_empty(),
        "the routed revision keeps its min-scale"
    );
    up.ok(&["delete", "ksvc", "pinned"]);

    // A cluster-local Service: an in-cluster URL, answered to pods (this cluster's pod range
    // is 127.156.0.0/16) and not to clients outside.
    up.apply(
        "inner.yaml",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: inner\n  labels: {networking.knative.dev/visibility: cluster-local}\nspec:\n  template:\n    spec:\n      containers: [{image: hello-world:v1}]\n",
    );
    let url = up.until(60, "the cluster-local service to be Ready", || {
        ksvc_ready(&up, "inner")
    });
    assert_eq!(url, "http://inner.default.svc.cluster.local");
    let (code, body) = get_from("127.156.250.250", router, "inner.default.svc.cluster.local")
        .expect("a pod's request is answered");
    assert_eq!(code, 200, "{body}");
    let (code, _) = get_from("127.0.0.77", router, "inner.default.svc.cluster.local").unwrap();
    assert_eq!(code, 404, "a client outside the cluster is not answered");
    up.ok(&["delete", "ksvc", "inner"]);

    // Scale to zero and back: a short stable window, the 1 s grace period of this cluster.
    up.apply(
        "quick.yaml",
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: quick
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/window: "6s"
    spec:
      containers:
        - image: hello-world:v1
"#,
    );
    up.until(60, "the quick service to be Ready", || {
        ksvc_ready(&up, "quick")
    });
    let (code, _) = get(router, "quick.default.example.com", "/").unwrap();
    assert_eq!(code, 200);
    up.until(60, "the quick service to scale to zero", || {
        pods_of(&up, "quick").is_empty().then_some(())
    });
    assert_eq!(
        up.ok(&[
            "get",
            "ksvc",
            "quick",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"
        ]),
        "True",
        "a revision at zero stays Ready"
    );
    let started = Instant::now();
    let (code, body) =
        get(router, "quick.default.example.com", "/").expect("a cold request is answered");
    let cold = started.elapsed();
    assert_eq!(code, 200, "{body}");
    assert!(cold < Duration::from_secs(10), "cold start took {cold:?}");
    // The node started the function in its own process while the pod came.
    assert!(
        body.starts_with("Hello world from quick-00001-in-process!"),
        "{body}"
    );
    let stats = up.ok(&["get", "--raw", "/drover/v1/function-stats"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["revisions"]["default/quick-00001"]["coldStarts"]["inProcess"].as_f64(),
        Some(1.0),
        "{stats}"
    );
    let events = up.until(
        30,
        "the event saying which request woke the function",
        || {
            let (_, out, _) = up.run(&[
                "get",
                "events",
                "--field-selector",
                "reason=Activated",
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            out.contains("GET quick.default.example.com/")
                .then_some(out)
        },
    );
    assert!(events.contains("Started from zero by request"), "{events}");
    assert!(events.contains("answered in process on node"), "{events}");
    eprintln!("cold start in process: {cold:?}");
    // The pod followed; new requests go to it, and the in-process instance has stopped.
    up.until(30, "the pod to take the requests", || {
        let (_, body) = get(router, "quick.default.example.com", "/")?;
        body.starts_with("Hello world from quick-00001-deployment-")
            .then_some(())
    });

    // Deleting a Service removes what it made.
    up.ok(&["delete", "ksvc", "hello", "quick"]);
    up.until(60, "the services' revisions, routes and pods to go", || {
        let (_, revisions, _) = up.run(&["get", "revisions", "-o", "name"]);
        let (_, routes, _) = up.run(&["get", "routes", "-o", "name"]);
        let (_, deployments, _) = up.run(&["get", "deployments", "-o", "name"]);
        (revisions.is_empty()
            && routes.is_empty()
            && deployments.is_empty()
            && pods_of(&up, "hello").is_empty()
            && pods_of(&up, "quick").is_empty())
        .then_some(())
    });
    let (code, _) = get(router, "hello.default.example.com", "/").unwrap();
    assert_eq!(code, 404);
}
