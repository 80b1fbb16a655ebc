//! Pod networking end to end. NEEDS ROOT (CI runs as root): each test builds a small network
//! on this machine — a bridge standing for the LAN, and one network namespace per node
//! standing for a separate host on it — runs `drover server` on the bridge and a `drover node`
//! in each host namespace, and drives them with the real kubectl. Then pods have addresses of
//! their node's range, routes join the nodes, Services are nftables rules in each host, and
//! traffic is real packets: curl from the "LAN", and from inside pods' namespaces.

use std::time::{Duration, Instant};

mod common;
use common::lan::{sh, Lan};
use common::repo;

fn hello_from(out: &str) -> Option<String> {
    // "Hello world from hw-demo-deployment-...! Your app is up and running in a cluster!"
    out.split("Hello world from ")
        .nth(1)?
        .split('!')
        .next()
        .map(str::to_string)
}

#[test]
fn pods_reach_each_other_across_nodes_and_services_balance_over_them() {
    let lan = Lan::start(1, 2);
    lan.ok(&[
        "apply",
        "-f",
        repo().join("examples/hello-world.yaml").to_str().unwrap(),
    ]);
    lan.ok(&["scale", "deployment/hw-demo-deployment", "--replicas=4"]);
    let pods = lan.ready_pods("app=hw", 4);
    let on = |node: &str| {
        pods.iter()
            .filter(|p| p.2 == node)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (a, b) = (on("h1"), on("h2"));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "pods on both nodes: {pods:?}"
    );
    // Each node's pods come from its own range.
    for (node, list) in [("h1", &a), ("h2", &b)] {
        let cidr = lan.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]);
        let prefix = cidr.trim_end_matches("0/24");
        assert!(
            list.iter().all(|p| p.1.starts_with(prefix)),
            "{node} {cidr}: {list:?}"
        );
    }

    // Pod to pod across nodes: from inside a pod on h1 to a pod on h2, by its address.
    let (ok, out) = lan.in_pod(&a[0].0, &format!("curl -s -m 5 http://{}:8080/", b[0].1));
    assert!(
        ok && hello_from(&out).as_deref() == Some(b[0].0.as_str()),
        "{out}"
    );

    // Pod to ClusterIP, landing on pods of both nodes.
    let cluster_ip = lan.ok(&["get", "svc", "hw-svc", "-o", "jsonpath={.spec.clusterIP}"]);
    let mut seen = std::collections::BTreeSet::new();
    lan.until(30, "the ClusterIP reaching pods on both nodes", || {
        let (_, out) = lan.in_pod(&a[0].0, &format!("curl -s -m 2 http://{cluster_ip}:8080/"));
        if let Some(name) = hello_from(&out) {
            seen.insert(name);
        }
        // ... the asking pod itself among them (hairpin), sooner or later.
        (seen.contains(&a[0].0) && b.iter().any(|p| seen.contains(&p.0))).then_some(())
    });

    // The seed's scenario: expose on a NodePort, curl every node from the LAN.
    lan.ok(&[
        "expose",
        "deployment/hw-demo-deployment",
        "--type=NodePort",
        "--port=8080",
        "--name=hw-demo",
    ]);
    let node_port = lan.ok(&[
        "get",
        "svc",
        "hw-demo",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let mut names = std::collections::BTreeSet::new();
    for k in [1, 2] {
        let url = format!("http://{}:{node_port}/", lan.host_ip(k));
        lan.until(30, &format!("{url} answering"), || {
            let (_, out) = sh(&format!("curl -s -m 2 {url}"));
            hello_from(&out).map(|n| names.insert(n))
        });
        for _ in 0..20 {
            let (_, out) = sh(&format!("curl -s -m 2 {url}"));
            names.extend(hello_from(&out));
        }
    }
    assert!(
        names.len() >= 3,
        "different pods answer over repeated requests: {names:?}"
    );
    let described = lan.ok(&["describe", "service", "hw-demo"]);
    assert!(
        described.contains("Endpoints:") && described.contains(&a[0].1),
        "{described}"
    );
    // The node itself reaches the NodePort and the ClusterIP.
    let (ok, out) = lan.on_host(1, &format!("curl -s -m 5 http://{cluster_ip}:8080/"));
    assert!(ok && hello_from(&out).is_some(), "{out}");

    // A LoadBalancer without a pool answers on every node's address (as k3s's).
    lan.ok(&[
        "expose",
        "deployment/hw-demo-deployment",
        "--type=LoadBalancer",
        "--port=8082",
        "--target-port=8080",
        "--name=hw-lb",
    ]);
    let ingress = lan.until(20, "the load balancer's addresses", || {
        let out = lan.ok(&[
            "get",
            "svc",
            "hw-lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]);
        (out.split_whitespace().count() == 2).then_some(out)
    });
    assert_eq!(ingress, format!("{} {}", lan.host_ip(1), lan.host_ip(2)));
    for k in [1, 2] {
        let url = format!("http://{}:8082/", lan.host_ip(k));
        lan.until(20, &format!("{url} answering"), || {
            hello_from(&sh(&format!("curl -s -m 2 {url}")).1)
        });
    }

    // A Service without ready endpoints refuses at once.
    lan.ok(&["create", "service", "clusterip", "nobody", "--tcp=80:8080"]);
    let nobody = lan.ok(&["get", "svc", "nobody", "-o", "jsonpath={.spec.clusterIP}"]);
    lan.until(10, "a Service with no endpoints rejecting", || {
        let started = Instant::now();
        let (ok, out) = lan.in_pod(
            &a[0].0,
            &format!("curl -s -m 5 http://{nobody}:80/ 2>&1; echo rc=$?"),
        );
        (ok && out.contains("rc=7") && started.elapsed() < Duration::from_secs(2)).then_some(())
    });

    // Deleting the Service leaves no rule behind.
    lan.ok(&["delete", "svc", "hw-demo"]);
    lan.until(10, "the NodePort rules gone", || {
        let (_, rules) = lan.on_host(2, "nft list table ip drover");
        (!rules.contains("hw-demo") && !rules.contains(&format!(". {node_port} :"))).then_some(())
    });
    let (_, out) = sh(&format!(
        "curl -s -m 2 http://{}:{node_port}/; echo rc=$?",
        lan.host_ip(2)
    ));
    assert!(!out.contains("Hello"), "{out}");
}

#[test]
fn cluster_dns_answers_services_and_external_names_from_a_pod() {
    let lan = Lan::start(2, 1);
    lan.ok(&[
        "apply",
        "-f",
        repo().join("examples/hello-world.yaml").to_str().unwrap(),
    ]);
    let pods = lan.ready_pods("app=hw", 3);
    lan.ok(&[
        "create",
        "service",
        "externalname",
        "docs",
        "--external-name=docs.example.org",
    ]);
    let cluster_ip = lan.ok(&["get", "svc", "hw-svc", "-o", "jsonpath={.spec.clusterIP}"]);
    // The pod's resolver is the kube-dns Service address, answered by its own node.
    let dns = lan.ok(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(dns, "10.96.0.10");
    let answer = lan.until(20, "the Service name resolving", || {
        let (ok, out) = lan.in_pod(
            &pods[0].0,
            "busybox nslookup hw-svc.default.svc.cluster.local 10.96.0.10",
        );
        (ok && out.contains(&cluster_ip)).then_some(out)
    });
    assert!(answer.contains(&cluster_ip), "{answer}");
    let (_, out) = lan.in_pod(
        &pods[0].0,
        "busybox nslookup -type=cname docs.default.svc.cluster.local 10.96.0.10",
    );
    assert!(out.contains("docs.example.org"), "{out}");
    let (_, out) = lan.in_pod(
        &pods[0].0,
        "busybox nslookup nothing.default.svc.cluster.local 10.96.0.10",
    );
    assert!(
        out.contains("NXDOMAIN") || out.contains("can't find"),
        "{out}"
    );
}

#[test]
fn deleted_pods_leave_no_address_or_namespace_and_a_restarted_agent_keeps_serving() {
    let mut lan = Lan::start(3, 1);
    lan.ok(&[
        "apply",
        "-f",
        repo().join("examples/hello-world.yaml").to_str().unwrap(),
    ]);
    let pods = lan.ready_pods("app=hw", 3);
    let url = format!("http://{}:30080/", lan.host_ip(1));
    lan.until(30, "the NodePort answering", || {
        hello_from(&sh(&format!("curl -s -m 2 {url}")).1)
    });

    // Restart the agent: its pods come back on the same addresses, and traffic flows again.
    if let Some(mut c) = lan.nodes[0].take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    lan.nodes[0] = Some(lan.spawn_node(1));
    lan.until(60, "the NodePort answering after the restart", || {
        hello_from(&sh(&format!("curl -s -m 2 {url}")).1)
    });
    let again = lan.ready_pods("app=hw", 3);
    let ips = |p: &[(String, String, String)]| {
        let mut v: Vec<String> = p.iter().map(|x| x.1.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ips(&pods),
        ips(&again),
        "pods keep their addresses across an agent restart"
    );

    // A pod that finished gives its address and namespace back at once (still listed).
    lan.ok(&[
        "apply",
        "-f",
        repo().join("examples/batch-pod.yaml").to_str().unwrap(),
    ]);
    let batch_uid = lan.until(30, "the batch pod Succeeded", || {
        let out = lan.ok(&[
            "get",
            "pod",
            "batch",
            "-o",
            "jsonpath={.status.phase} {.metadata.uid}",
        ]);
        out.strip_prefix("Succeeded ").map(str::to_string)
    });
    let ipam = lan.node_dir(1).join("ipam");
    let holds = |uid: &str| {
        std::fs::read_dir(&ipam)
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).unwrap_or_default().trim() == uid)
    };
    lan.until(10, "the finished pod's address released", || {
        (!holds(&batch_uid)).then_some(())
    });
    let short: String = batch_uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    assert!(!sh("ip netns list").1.contains(&format!("drover-{short}")));

    // Deleting the pods leaves no namespace, address record or route of theirs.
    let netns_names: Vec<String> = again
        .iter()
        .map(|p| {
            let uid = lan.ok(&["get", "pod", &p.0, "-o", "jsonpath={.metadata.uid}"]);
            let short: String = uid
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(12)
                .collect();
            format!("drover-{short}")
        })
        .collect();
    lan.ok(&["delete", "deployment", "hw-demo-deployment"]);
    lan.until(30, "the pods' addresses released", || {
        let left = std::fs::read_dir(&ipam)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "last")
            .count();
        (left == 0).then_some(())
    });
    let (_, routes) = lan.on_host(1, "ip route");
    for (_, ip, _) in &pods {
        assert!(!routes.contains(&format!("{ip} dev")), "{routes}");
    }
    let (_, links) = lan.on_host(1, "ip -o link");
    assert!(!links.contains("drv"), "{links}");
    let (_, netns) = sh("ip netns list");
    for name in &netns_names {
        assert!(!netns.contains(name.as_str()), "{name} is left: {netns}");
    }
}

#[test]
fn a_deny_all_policy_blocks_and_an_allow_rule_opens_exactly_what_it_says() {
    let lan = Lan::start(4, 2);
    lan.ok(&[
        "apply",
        "-f",
        repo().join("examples/hello-world.yaml").to_str().unwrap(),
    ]);
    let clients = lan.dir.path().join("clients.yaml");
    let pod = |name: &str, role: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    role: {role}\nspec:\n  containers:\n  - name: c\n    image: hello-world:v1\n    ports:\n    - containerPort: 8080\n"
        )
    };
    std::fs::write(
        &clients,
        pod("client", "client") + "---\n" + &pod("other", "other"),
    )
    .unwrap();
    lan.ok(&["apply", "-f", clients.to_str().unwrap()]);
    let web = lan.ready_pods("app=hw", 3);
    lan.ready_pods("role", 2);
    let target = &web[0];
    let node = if target.2 == "h1" { 1 } else { 2 };
    let reach = |from: &str| {
        let (_, out) = lan.in_pod(from, &format!("curl -s -m 1 http://{}:8080/", target.1));
        hello_from(&out).is_some()
    };
    assert!(
        reach("client") && reach("other"),
        "without policies every pod is reachable"
    );

    let policy = |yaml: &str, file: &str| {
        let path = lan.dir.path().join(file);
        std::fs::write(&path, yaml).unwrap();
        lan.ok(&["apply", "-f", path.to_str().unwrap()]);
    };
    policy(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-web\nspec:\n  podSelector:\n    matchLabels:\n      app: hw\n  policyTypes: [Ingress]\n",
        "deny.yaml",
    );
    lan.until(15, "the deny-all policy blocking", || {
        (!reach("client") && !reach("other")).then_some(())
    });
    // The node still reaches its own pods: probes keep them Ready.
    let (ok, out) = lan.on_host(node, &format!("curl -s -m 2 http://{}:8080/", target.1));
    assert!(ok && hello_from(&out).is_some(), "{out}");

    // Allowed: role=client on 8080; role=other only on a port nothing listens on.
    policy(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-clients\nspec:\n  podSelector:\n    matchLabels:\n      app: hw\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          role: client\n    ports:\n    - port: 8080\n  - from:\n    - podSelector:\n        matchLabels:\n          role: other\n    ports:\n    - port: 9090\n",
        "allow.yaml",
    );
    lan.until(15, "the allow rule opening for the client", || {
        reach("client").then_some(())
    });
    assert!(!reach("other"), "the other pod stays blocked on 8080");
    // Other pods, not selected by any policy, are still open to all.
    let (_, out) = lan.in_pod(
        "other",
        &format!(
            "curl -s -m 2 http://{}:8080/",
            lan.ok(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"])
        ),
    );
    assert!(hello_from(&out).is_some(), "{out}");

    lan.ok(&["delete", "networkpolicy", "deny-web", "allow-clients"]);
    lan.until(15, "everything open again", || {
        (reach("client") && reach("other")).then_some(())
    });
    let (_, rules) = lan.on_host(node, "nft list table ip drover-policy");
    assert!(!rules.contains("jump ingress"), "{rules}");
}

#[test]
fn wasm_pods_call_services_by_name_from_their_own_address() {
    let lan = Lan::start(5, 2);
    lan.ok(&[
        "apply",
        "-f",
        repo().join("examples/hello-world.yaml").to_str().unwrap(),
    ]);
    let pod = |name: &str, role: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    role: {role}\nspec:\n  containers:\n  - name: c\n    image: fetch:v1\n    ports:\n    - containerPort: 8080\n"
        )
    };
    let path = lan.dir.path().join("fetchers.yaml");
    std::fs::write(
        &path,
        pod("fetcher", "client") + "---\n" + &pod("stranger", "other"),
    )
    .unwrap();
    lan.ok(&["apply", "-f", path.to_str().unwrap()]);
    lan.ready_pods("app=hw", 3);
    let fetchers = lan.ready_pods("role", 2);
    let via = |name: &str, url: &str| {
        let (ip, node) = fetchers
            .iter()
            .find(|p| p.0 == name)
            .map(|p| (p.1.clone(), if p.2 == "h1" { 1 } else { 2 }))
            .unwrap();
        lan.on_host(
            node,
            &format!("curl -s -m 4 \"http://{ip}:8080/?url={url}\""),
        )
        .1
    };
    // A cluster name, through the Service to a pod on either node.
    let out = lan.until(20, "a Wasm pod calling a Service by name", || {
        let out = via("fetcher", "http://hw-svc:8080/");
        out.contains("upstream 200").then_some(out)
    });
    assert!(hello_from(&out).is_some(), "{out}");
    let out = via("fetcher", "http://hw-svc.default.svc.cluster.local:8080/");
    assert!(out.contains("upstream 200"), "{out}");
    let out = via(
        "fetcher",
        "http://no-such-service.default.svc.cluster.local:8080/",
    );
    assert!(out.starts_with("error:"), "{out}");

    // Its requests come from its own address: a policy that lets in role=client only lets
    // the fetcher through, not the stranger.
    let policy = lan.dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: clients-only\nspec:\n  podSelector:\n    matchLabels:\n      app: hw\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          role: client\n",
    )
    .unwrap();
    lan.ok(&["apply", "-f", policy.to_str().unwrap()]);
    lan.until(15, "the stranger's requests blocked", || {
        (!via("stranger", "http://hw-svc:8080/").contains("upstream 200")).then_some(())
    });
    for _ in 0..5 {
        let out = via("fetcher", "http://hw-svc:8080/");
        assert!(out.contains("upstream 200"), "{out}");
    }
}

#[test]
fn load_balancers_get_pool_addresses_the_nodes_answer() {
    let lan = Lan::start_with(6, 2, &["--service-lb-pool", "172.30.6.200-172.30.6.201"]);
    lan.ok(&[
        "apply",
        "-f",
        repo().join("examples/hello-world.yaml").to_str().unwrap(),
    ]);
    lan.ready_pods("app=hw", 3);
    lan.ok(&[
        "expose",
        "deployment/hw-demo-deployment",
        "--type=LoadBalancer",
        "--port=80",
        "--target-port=8080",
        "--name=web",
    ]);
    let ip = lan.until(20, "a pool address", || {
        let out = lan.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]);
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(ip, "172.30.6.200");
    // From the LAN: a node answers for the address and balances over the pods.
    let mut names = std::collections::BTreeSet::new();
    lan.until(30, "the pool address answering", || {
        hello_from(&sh(&format!("curl -s -m 2 http://{ip}/")).1).map(|n| names.insert(n))
    });
    for _ in 0..15 {
        names.extend(hello_from(&sh(&format!("curl -s -m 2 http://{ip}/")).1));
    }
    assert!(names.len() >= 2, "{names:?}");
    // The second Service gets the second address; a third finds the pool empty and waits.
    lan.ok(&[
        "expose",
        "deployment/hw-demo-deployment",
        "--type=LoadBalancer",
        "--port=81",
        "--target-port=8080",
        "--name=web2",
    ]);
    lan.ok(&[
        "expose",
        "deployment/hw-demo-deployment",
        "--type=LoadBalancer",
        "--port=82",
        "--target-port=8080",
        "--name=web3",
    ]);
    lan.until(20, "the second address", || {
        (lan.ok(&[
            "get",
            "svc",
            "web2",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]) == "172.30.6.201")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lan.ok(&[
            "get",
            "svc",
            "web3",
            "-o",
            "jsonpath={.status.loadBalancer.ingress}"
        ]),
        ""
    );
    // Deleting a Service frees its address for the waiting one, and the nodes drop the old.
    lan.ok(&["delete", "svc", "web"]);
    lan.until(40, "the freed address given again", || {
        (lan.ok(&[
            "get",
            "svc",
            "web3",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]) == "172.30.6.200")
            .then_some(())
    });
    lan.until(20, "the address answering for the new Service", || {
        hello_from(&sh("curl -s -m 2 http://172.30.6.200:82/").1)
    });
    // Every node answers the pool addresses; each puts them on its lo when it hears of them
    // (the curl above may have been answered by the other node first).
    lan.until(20, "both pool addresses on host 1's lo", || {
        let (_, addrs) = lan.on_host(1, "ip -o addr show dev lo");
        (addrs.contains("172.30.6.200/32") && addrs.contains("172.30.6.201/32")).then_some(())
    });
}
