//! `kubectl exec` on the node: the [`Exec`] a runtime offers to start a command in one of its
//! running containers, and the session behind the log server's WebSocket endpoint
//! (`/exec/{namespace}/{pod}/{container}?command=..&stdin=..&stdout=..&stderr=..&tty=..`),
//! which the API server's `pods/exec` splices kubectl's connection to.
//!
//! The protocol is Kubernetes' channel protocol over WebSocket, `v5.channel.k8s.io` (what
//! kubectl 1.30+ speaks) or `v4.channel.k8s.io`: every binary message starts with its channel,
//! 0 stdin, 1 stdout, 2 stderr, 3 the final status (a metav1.Status as JSON), 4 terminal
//! resizes; in v5 the client sends `[255, 0]` when its stdin ends. When the command has exited
//! and its output is sent, the status goes out on channel 3 and the connection is closed
//! normally: kubectl decodes the status only once the connection has ended.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc;

/// Runs commands in a node's containers (for `kubectl exec`).
pub trait Exec: Send + Sync {
    /// Starts argv inside the running container; stdout/stderr piped, stdin piped only when `stdin`.
    fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
        stdin: bool,
    ) -> runtime::BoxFuture<'_, Result<Child, ExecError>>;
}

/// Why a command could not be started; the message is what kubectl prints.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No such container running on this node.
    #[error("{0}")]
    NotFound(String),
    /// The container's runtime cannot run a command in it.
    #[error("{0}")]
    NotSupported(String),
    /// Starting the command failed.
    #[error("{0}")]
    Failed(String),
}

/// The node's `Exec` while only Wasm containers run: a Wasm component is one program with no
/// shell or second process to start.
pub struct WasmExec;

impl Exec for WasmExec {
    fn exec(
        &self,
        _namespace: &str,
        _pod: &str,
        _container: &str,
        _argv: Vec<String>,
        _stdin: bool,
    ) -> runtime::BoxFuture<'_, Result<Child, ExecError>> {
        Box::pin(async {
            Err(ExecError::NotSupported(
                "exec is not supported for Wasm containers".into(),
            ))
        })
    }
}

pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
/// v5: `[CLOSE, channel]` ends that channel (the client's stdin).
const CLOSE: u8 = 255;

/// After the command has exited, how long its output may still take to arrive: a process it
/// left in the background can hold the pipes open forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
/// How long to wait for the client to answer the closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One exec request, as the query string and path give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A query flag as Go's `strconv.ParseBool` (what kube clients produce) reads it.
fn flag(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

impl ExecRequest {
    /// The request for a container, from the raw query string (`command` repeats, once per
    /// argument). Err: what is wrong with it, for the client.
    pub fn parse(
        namespace: String,
        pod: String,
        container: String,
        query: &str,
    ) -> Result<ExecRequest, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| format!("the exec query string is not valid: {e}"))?;
        let mut request = ExecRequest {
            namespace,
            pod,
            container,
            command: Vec::new(),
            stdin: false,
            stdout: false,
            stderr: false,
        };
        let mut tty = false;
        for (key, value) in pairs {
            match key.as_str() {
                "command" => request.command.push(value),
                "stdin" => request.stdin = flag(&value),
                "stdout" => request.stdout = flag(&value),
                "stderr" => request.stderr = flag(&value),
                "tty" => tty = flag(&value),
                _ => {}
            }
        }
        if request.command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err("you must specify at least one of stdin, stdout, stderr".into());
        }
        if tty {
            return Err(
                "exec with a terminal (kubectl exec -t) is not supported yet; run it without -t"
                    .into(),
            );
        }
        Ok(request)
    }
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{message}\n"),
    )
        .into_response()
}

/// Accepts the WebSocket and runs the session in it. Refused (400, before the upgrade) when
/// the client offers neither channel protocol.
pub fn upgrade(ws: WebSocketUpgrade, exec: Arc<dyn Exec>, request: ExecRequest) -> Response {
    let ws = ws.protocols([PROTOCOL_V5, PROTOCOL_V4]);
    let Some(protocol) = ws.selected_protocol() else {
        return bad_request(&format!(
            "exec speaks the WebSocket subprotocols {PROTOCOL_V5} and {PROTOCOL_V4}; the client offered neither"
        ));
    };
    let v5 = protocol == PROTOCOL_V5;
    ws.on_upgrade(move |socket| session(socket, exec, request, v5))
}

/// Starts the command, copies its streams and reports how it ended, then closes.
async fn session(mut socket: WebSocket, exec: Arc<dyn Exec>, request: ExecRequest, v5: bool) {
    let started = exec
        .exec(
            &request.namespace,
            &request.pod,
            &request.container,
            request.command.clone(),
            request.stdin,
        )
        .await;
    let status = match started {
        Ok(child) => match pump(&mut socket, child, &request, v5).await {
            Ok(exit) => exit_status(&request.command, exit),
            Err(e) => {
                tracing::debug!(
                    pod = %format!("{}/{}", request.namespace, request.pod),
                    container = %request.container,
                    "exec session ended early: {e}"
                );
                return;
            }
        },
        Err(e) => error_status(&e),
    };
    let _ = send(&mut socket, STATUS, status.to_string().as_bytes()).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    // Closing the TCP connection before the client's reply could reset it while the client
    // still has the status to read; so wait (a little) for the reply.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// One message on a channel.
async fn send(socket: &mut WebSocket, channel: u8, data: &[u8]) -> Result<(), axum::Error> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    socket.send(Message::Binary(frame.into())).await
}

/// Reads from a pipe that may be gone (then never ready).
async fn read_some<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Hands a chunk of stdin to the writer task; Err when the command no longer reads it.
async fn hand_over(to: &Option<mpsc::Sender<Bytes>>, chunk: Option<Bytes>) -> Result<(), ()> {
    match (to, chunk) {
        (Some(to), Some(chunk)) => to.send(chunk).await.map_err(|_| ()),
        _ => Err(()),
    }
}

/// Copies stdin in and stdout/stderr out until the command has exited and its output is sent.
/// Err (the command killed) when the client goes away first.
async fn pump(
    socket: &mut WebSocket,
    mut child: Child,
    request: &ExecRequest,
    v5: bool,
) -> Result<ExitStatus, String> {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Stdin is written by a task of its own, so that a command that does not read its input
    // never stops its output from being sent (`cat` with a large input needs both at once).
    let mut stdin = None;
    let mut stdin_writer = None;
    if let Some(mut pipe) = child.stdin.take() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        stdin = Some(tx);
        stdin_writer = Some(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if pipe.write_all(&chunk).await.is_err() {
                    break; // the command closed its stdin
                }
            }
            // Dropping the pipe is the command's end of input.
        }));
    }
    // A chunk of stdin the writer has not taken yet; the socket is not read meanwhile, which
    // slows the client down to the command's pace.
    let mut pending_stdin: Option<Bytes> = None;
    let mut exited: Option<ExitStatus> = None;
    let mut drain_until = tokio::time::Instant::now();
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);

    let outcome = loop {
        if let Some(status) = exited {
            if stdout.is_none() && stderr.is_none() {
                break Ok(status);
            }
        }
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buf) => match read {
                Ok(n) if n > 0 => {
                    if request.stdout {
                        if let Err(e) = send(socket, STDOUT, &out_buf[..n]).await {
                            break Err(format!("sending stdout: {e}"));
                        }
                    }
                }
                _ => stdout = None,
            },
            read = read_some(&mut stderr, &mut err_buf) => match read {
                Ok(n) if n > 0 => {
                    if request.stderr {
                        if let Err(e) = send(socket, STDERR, &err_buf[..n]).await {
                            break Err(format!("sending stderr: {e}"));
                        }
                    }
                }
                _ => stderr = None,
            },
            status = child.wait(), if exited.is_none() => match status {
                Ok(status) => {
                    exited = Some(status);
                    drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
                }
                Err(e) => break Err(format!("waiting for the command: {e}")),
            },
            _ = tokio::time::sleep_until(drain_until), if exited.is_some() => {
                // Something the command started still holds its output open.
                break Ok(exited.unwrap_or_default());
            }
            handed = hand_over(&stdin, pending_stdin.clone()), if pending_stdin.is_some() => {
                pending_stdin = None;
                if handed.is_err() {
                    stdin = None;
                }
            }
            message = socket.recv(), if pending_stdin.is_none() => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(&STDIN) if data.len() > 1 && stdin.is_some() => {
                        pending_stdin = Some(data.slice(1..));
                    }
                    Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => {
                        // The writer writes what it has, then closes the command's stdin.
                        stdin = None;
                    }
                    // Resizes (there is no terminal), stdin that was not asked for, and
                    // unknown channels are dropped, as the kubelet does.
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => break Err("the client closed the connection".into()),
                Some(Err(e)) => break Err(format!("reading from the client: {e}")),
                Some(Ok(_)) => {} // text, ping, pong: pongs are answered by the socket itself
            },
        }
    };
    drop(stdin);
    if let Some(writer) = stdin_writer {
        // The command is done (or being killed): what it did not read no longer matters.
        writer.abort();
    }
    if outcome.is_err() && exited.is_none() {
        let _ = child.kill().await;
    }
    outcome
}

/// The status kubectl expects at the end: Success, or the exit code it exits with itself.
pub fn exit_status(command: &[String], status: ExitStatus) -> Value {
    if status.success() {
        return json!({"metadata": {}, "status": "Success"});
    }
    // Killed by a signal: the shell's convention, 128 + the signal, as container runtimes report.
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The status for a command that could not start; kubectl prints its message.
pub fn error_status(error: &ExecError) -> Value {
    let (code, reason, message) = match error {
        ExecError::NotFound(m) => (404, "NotFound", m.clone()),
        ExecError::NotSupported(m) => (400, "BadRequest", m.clone()),
        ExecError::Failed(m) => (
            500,
            "InternalError",
            format!("Internal error occurred: error executing command in container: {m}"),
        ),
    };
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<ExecRequest, String> {
        ExecRequest::parse("ns".into(), "p".into(), "c".into(), query)
    }

    #[test]
    fn queries_are_read_as_kubectl_writes_them() {
        let r = parse("command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=true&stderr=1")
            .unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo a&b"]);
        assert!(r.stdin && r.stdout && r.stderr);
        assert!(parse("stdout=true")
            .unwrap_err()
            .contains("at least one command"));
        assert!(parse("command=ls")
            .unwrap_err()
            .contains("stdin, stdout, stderr"));
        assert!(parse("command=ls&stdout=true&tty=true")
            .unwrap_err()
            .contains("kubectl exec -t"));
    }

    #[test]
    fn exit_codes_become_the_statuses_kubectl_reads() {
        let argv = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(
            exit_status(&argv, ExitStatus::from_raw(0)),
            json!({"metadata": {}, "status": "Success"})
        );
        let failed = exit_status(&argv, ExitStatus::from_raw(3 << 8));
        assert_eq!(
            failed["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        let killed = exit_status(&argv, ExitStatus::from_raw(9));
        assert_eq!(killed["details"]["causes"][0]["message"], "137");
    }
}
