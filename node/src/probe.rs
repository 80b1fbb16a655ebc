//! Liveness, readiness and startup probes: httpGet and tcpSocket against the pod's address,
//! exec inside Linux containers, each probe a task that reports every result to its pod worker, which counts them against
//! the probe's thresholds.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::Empty;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// One probe result, for the worker.
#[derive(Debug)]
pub struct Outcome {
    pub container: usize,
    pub generation: u64,
    pub kind: Kind,
    /// None on success; the failure's description otherwise.
    pub failure: Option<String>,
}

fn port_of(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no port named {name:?}")),
    }
}

/// Where an exec probe runs its command: a Linux container of the oci runtime.
#[derive(Clone)]
pub struct ExecTarget {
    pub oci: std::sync::Arc<runtime::oci::OciRuntime>,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Runs a probe once: None when it passed.
pub async fn check(
    probe: &Probe,
    pod_ip: IpAddr,
    container: &Container,
    exec: Option<&ExecTarget>,
) -> Option<String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let port = port_of(&h.port, container)?;
            let host: IpAddr = match h.host.as_deref() {
                Some(host) if !host.is_empty() => {
                    host.parse().map_err(|_| format!("invalid host {host:?}"))?
                }
                _ => pod_ip,
            };
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            http_get(SocketAddr::new(host, port), &path).await
        } else if let Some(t) = &probe.tcp_socket {
            let port = port_of(&t.port, container)?;
            tokio::net::TcpStream::connect(SocketAddr::new(pod_ip, port))
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {pod_ip}:{port}: {e}"))
        } else if let Some(action) = &probe.exec {
            let Some(target) = exec else {
                return Err(
                    "exec probes need a process to run in; Wasm containers support \
                            httpGet and tcpSocket"
                        .into(),
                );
            };
            let argv = action.command.clone().unwrap_or_default();
            if argv.is_empty() {
                return Err("the exec probe has no command".into());
            }
            match target
                .oci
                .exec_output(
                    &target.namespace,
                    &target.pod,
                    &target.container,
                    argv,
                    timeout,
                )
                .await
            {
                Ok((0, _)) => Ok(()),
                Ok((code, output)) => Err(format!(
                    "command exited with {code}: {}",
                    output.trim().chars().take(200).collect::<String>()
                )),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Err("the probe has no handler (httpGet, tcpSocket or exec)".into())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("timed out after {}s", timeout.as_secs())),
    }
}

/// Runs a lifecycle hook (preStop) to its end, at most `limit`: exec in the container,
/// httpGet or tcpSocket against the pod, or a sleep. None when it succeeded.
pub async fn run_hook(
    hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    limit: Duration,
    pod_ip: IpAddr,
    container: &Container,
    exec: Option<&ExecTarget>,
) -> Option<String> {
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(limit)).await;
        return None;
    }
    let as_probe = Probe {
        exec: hook.exec.clone(),
        http_get: hook.http_get.clone(),
        tcp_socket: hook.tcp_socket.clone(),
        timeout_seconds: Some(limit.as_secs().max(1) as i32),
        ..Default::default()
    };
    check(&as_probe, pod_ip, container, exec).await
}

/// An HTTP/1.1 GET with hyper's client; 200–399 passes, as for the kubelet.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .header("user-agent", "drover-probe/1.0")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Runs `probe` every period after its initial delay, reporting each result, until aborted.
#[allow(clippy::too_many_arguments)] // the probe, its container and where to report: all needed, none related
pub fn spawn(
    kind: Kind,
    probe: Probe,
    container: Container,
    index: usize,
    generation: u64,
    pod_ip: IpAddr,
    exec: Option<ExecTarget>,
    report: mpsc::Sender<Outcome>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        tokio::time::sleep(Duration::from_secs(delay)).await;
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        loop {
            let failure = check(&probe, pod_ip, &container, exec.as_ref()).await;
            let outcome = Outcome {
                container: index,
                generation,
                kind,
                failure,
            };
            if report.send(outcome).await.is_err() {
                return;
            }
            tokio::time::sleep(period).await;
        }
    })
}

/// Consecutive results of one probe, against its thresholds.
#[derive(Clone, Debug, Default)]
pub struct Counter {
    successes: u32,
    failures: u32,
}

impl Counter {
    /// Records a result; returns Some(true) when the probe now counts as passing, Some(false)
    /// when failing, None when it has not crossed a threshold.
    pub fn record(&mut self, ok: bool, probe: &Probe) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= probe.success_threshold.unwrap_or(1).max(1) as u32).then_some(true)
        } else {
            self.failures += 1;
            self.successes = 0;
            (self.failures >= probe.failure_threshold.unwrap_or(3).max(1) as u32).then_some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_count_consecutive_results() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            ..Default::default()
        };
        let mut c = Counter::default();
        assert_eq!(c.record(false, &probe), None);
        assert_eq!(c.record(true, &probe), Some(true));
        assert_eq!(c.record(false, &probe), None);
        assert_eq!(c.record(false, &probe), Some(false));
    }
}
