//! `kubectl exec` on the node: the [`Exec`] a runtime offers to start a command in one of its
//! running containers, and the session behind the log server's endpoint
//! (`/exec/{namespace}/{pod}/{container}?command=..&stdin=..&stdout=..&stderr=..&tty=..`),
//! which the API server's `pods/exec` splices kubectl's connection to.
//!
//! Two transports carry the same channels (0 stdin, 1 stdout, 2 stderr, 3 the final status,
//! 4 terminal resizes):
//! - a WebSocket, `v5.channel.k8s.io` (what kubectl 1.30+ speaks) or `v4.channel.k8s.io`:
//!   every binary message starts with its channel; in v5 the client sends `[255, 0]` when its
//!   stdin ends. When the command has exited and its output is sent, the status goes out on
//!   channel 3 and the connection is closed normally: kubectl decodes the status only once
//!   the connection has ended.
//! - SPDY/3.1 (older kubectl, client-go's remotecommand, [`crate::spdy`]): one stream per
//!   channel, the status on the `error` stream.
//!
//! With `tty=true` the command runs on a terminal ([`ExecIo::Terminal`]): its output is all on
//! stdout, and resizes reach the terminal. The session itself ([`run`]) knows neither
//! transport: it takes input and sends output through channels.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use runtime::terminal::Terminal;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::spdy;

/// How the command's standard streams are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecIo {
    /// stdout and stderr piped; stdin piped only when asked for (null otherwise).
    Pipes { stdin: bool },
    /// A terminal (`kubectl exec -t`): all three on it.
    Terminal,
}

/// A started command: the process, and its terminal when it has one (its output and input
/// then go through the terminal, not the child's pipes).
pub struct Running {
    pub child: Child,
    pub terminal: Option<Terminal>,
}

/// Runs commands in a node's containers (for `kubectl exec`).
pub trait Exec: Send + Sync {
    /// Starts argv inside the running container.
    fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
        io: ExecIo,
    ) -> runtime::BoxFuture<'_, Result<Running, ExecError>>;

    /// Connects to the container's main process (`kubectl attach`): a connection speaking
    /// [`runtime::oci::attach`]'s frames. None of a node's runtimes but the oci one can.
    fn attach(
        &self,
        _namespace: &str,
        _pod: &str,
        _container: &str,
    ) -> runtime::BoxFuture<'_, Result<Box<dyn AttachIo>, ExecError>> {
        Box::pin(async {
            Err(ExecError::NotSupported(
                "attach is not supported for Wasm containers".into(),
            ))
        })
    }
}

/// A connection to a container's main process.
pub trait AttachIo: AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AttachIo for T {}

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
        _io: ExecIo,
    ) -> runtime::BoxFuture<'_, Result<Running, ExecError>> {
        Box::pin(async {
            Err(ExecError::NotSupported(
                "exec is not supported for Wasm containers".into(),
            ))
        })
    }
}

pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";
/// The channel protocols over SPDY, newest first (kubelet's list): v4 ends with a Status, the
/// older ones with a plain error message or nothing.
const SPDY_PROTOCOLS: [&str; 4] = [
    PROTOCOL_V4,
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` ends that channel (the client's stdin).
const CLOSE: u8 = 255;

/// After the command has exited, how long its output may still take to arrive: a process it
/// left in the background can hold the pipes open forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
/// How long to wait for the client to answer the closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a SPDY client has to open the streams it asked for (kubelet's default).
const STREAMS_WAIT: Duration = Duration::from_secs(30);

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
    pub tty: bool,
    /// `kubectl attach` (to the main process; `command` is empty) rather than exec.
    pub attach: bool,
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
        Self::parse_for(namespace, pod, container, query, false)
    }

    /// An attach request: the same query without a command.
    pub fn parse_attach(
        namespace: String,
        pod: String,
        container: String,
        query: &str,
    ) -> Result<ExecRequest, String> {
        Self::parse_for(namespace, pod, container, query, true)
    }

    fn parse_for(
        namespace: String,
        pod: String,
        container: String,
        query: &str,
        attach: bool,
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
            tty: false,
            attach,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "command" => request.command.push(value),
                "stdin" => request.stdin = flag(&value),
                "stdout" => request.stdout = flag(&value),
                "stderr" => request.stderr = flag(&value),
                "tty" => request.tty = flag(&value),
                _ => {}
            }
        }
        if request.command.is_empty() && !attach {
            return Err("you must specify at least one command for the container".into());
        }
        if attach {
            request.command.clear();
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err("you must specify at least one of stdin, stdout, stderr".into());
        }
        // On a terminal, stderr is the terminal too (kubelet drops the flag likewise).
        if request.tty {
            request.stderr = false;
        }
        Ok(request)
    }

    fn io(&self) -> ExecIo {
        if self.tty {
            ExecIo::Terminal
        } else {
            ExecIo::Pipes { stdin: self.stdin }
        }
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

/// What the client sends during a session, whatever carries it.
#[derive(Debug)]
enum FromClient {
    Stdin(Bytes),
    StdinEnd,
    /// The client's terminal has this many columns and rows.
    Resize(u16, u16),
}

/// A terminal size as the resize channel carries it (`{"Width":80,"Height":24}`).
fn resize(data: &[u8]) -> Option<FromClient> {
    let size: Value = serde_json::from_slice(data).ok()?;
    let dim = |k: &str| size[k].as_u64().and_then(|v| u16::try_from(v).ok());
    Some(FromClient::Resize(dim("Width")?, dim("Height")?))
}

/// Starts the command and runs it to the end with the client on the other side of `to` and
/// `from`: output is sent as (channel, bytes), input taken as it comes. The status kubectl
/// reads at the end; None when the client went away first (the command is killed).
async fn run(
    exec: &dyn Exec,
    request: &ExecRequest,
    to: mpsc::Sender<(u8, Bytes)>,
    from: mpsc::Receiver<FromClient>,
) -> Option<Value> {
    if request.attach {
        let attached = exec
            .attach(&request.namespace, &request.pod, &request.container)
            .await;
        return match attached {
            Ok(io) => pump_attach(io, request, to, from)
                .await
                .ok()
                .map(|()| json!({"metadata": {}, "status": "Success"})),
            Err(e) => Some(error_status(&e)),
        };
    }
    let started = exec
        .exec(
            &request.namespace,
            &request.pod,
            &request.container,
            request.command.clone(),
            request.io(),
        )
        .await;
    let running = match started {
        Ok(r) => r,
        Err(e) => return Some(error_status(&e)),
    };
    match pump(running, request, to, from).await {
        Ok(exit) => Some(exit_status(&request.command, exit)),
        Err(e) => {
            tracing::debug!(
                pod = %format!("{}/{}", request.namespace, request.pod),
                container = %request.container,
                "exec session ended early: {e}"
            );
            None
        }
    }
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
    ws.on_upgrade(move |socket| websocket_session(socket, exec, request, v5))
}

/// The session over a WebSocket: each binary message is one channel's, its first byte the
/// channel. When the command has ended, its status goes out on channel 3 and the connection
/// is closed normally.
async fn websocket_session(
    mut socket: WebSocket,
    exec: Arc<dyn Exec>,
    request: ExecRequest,
    v5: bool,
) {
    let (to_tx, mut to_rx) = mpsc::channel::<(u8, Bytes)>(8);
    let (from_tx, from_rx) = mpsc::channel::<FromClient>(8);
    let session = run(&*exec, &request, to_tx, from_rx);
    tokio::pin!(session);
    // A chunk of input the session has not taken yet; the socket is not read meanwhile, which
    // slows the client down to the command's pace.
    let mut pending: Option<FromClient> = None;
    // Some(status) once the session has ended; None when the client went away first.
    let ended = loop {
        tokio::select! {
            status = &mut session => break Some(status),
            Some((channel, data)) = to_rx.recv() => {
                if send(&mut socket, channel, &data).await.is_err() {
                    break None;
                }
            }
            permit = from_tx.reserve(), if pending.is_some() => {
                if let (Ok(permit), Some(input)) = (permit, pending.take()) {
                    permit.send(input);
                }
            }
            message = socket.recv(), if pending.is_none() => match message {
                Some(Ok(Message::Binary(data))) => match (data.first(), data.get(1..)) {
                    (Some(&STDIN), Some(rest)) if !rest.is_empty() && request.stdin => {
                        pending = Some(FromClient::Stdin(data.slice(1..)));
                    }
                    (Some(&RESIZE), Some(rest)) if request.tty => pending = resize(rest),
                    (Some(&CLOSE), Some([STDIN])) if v5 => pending = Some(FromClient::StdinEnd),
                    // Stdin that was not asked for and unknown channels are dropped, as the
                    // kubelet does.
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {} // text, ping, pong: pongs are answered by the socket itself
            },
        }
    };
    let Some(status) = ended else {
        // The client is gone: with its input and output closed, the session kills the command.
        drop(from_tx);
        drop(to_rx);
        session.await;
        return;
    };
    // What the command wrote last is still queued.
    while let Ok((channel, data)) = to_rx.try_recv() {
        let _ = send(&mut socket, channel, &data).await;
    }
    let Some(status) = status else { return };
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

/// The channel protocol a SPDY client offered (`X-Stream-Protocol-Version`, repeated or
/// comma-separated) that this side speaks; Err: the refusal, for the client.
pub fn spdy_protocol(offered: &[String]) -> Result<&'static str, String> {
    let offered: Vec<&str> = offered
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    SPDY_PROTOCOLS
        .into_iter()
        .find(|p| offered.contains(p))
        .ok_or_else(|| {
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {SPDY_PROTOCOLS:?}"
            )
        })
}

/// The session over SPDY (kubectl before 1.30, client-go's remotecommand): the client opens a
/// stream per channel, named by its `streamType` header (error, stdin, stdout, stderr,
/// resize); once those the request asks for are open the command starts. Its status goes out
/// on the error stream: a Status in v4, the bare message before.
pub async fn spdy_session<IO>(io: IO, exec: Arc<dyn Exec>, request: ExecRequest, protocol: &str)
where
    IO: AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut session = spdy::serve(io);
    let mut streams: std::collections::HashMap<String, spdy::Stream> = Default::default();
    let wanted = |streams: &std::collections::HashMap<String, spdy::Stream>| {
        streams.contains_key("error")
            && (!request.stdin || streams.contains_key("stdin"))
            && (!request.stdout || streams.contains_key("stdout"))
            && (!request.stderr || streams.contains_key("stderr"))
            && (!request.tty || streams.contains_key("resize"))
    };
    let opened = tokio::time::timeout(STREAMS_WAIT, async {
        while !wanted(&streams) {
            let stream = session.streams.recv().await?;
            if let Some(kind) = stream.header("streamtype") {
                streams.insert(kind.to_string(), stream);
            }
        }
        Some(())
    })
    .await;
    if !matches!(opened, Ok(Some(()))) {
        tracing::debug!("an exec client did not open its streams");
        session.close().await;
        return;
    }
    let (to_tx, mut to_rx) = mpsc::channel::<(u8, Bytes)>(8);
    let (from_tx, from_rx) = mpsc::channel::<FromClient>(8);
    // The client's input streams feed the session; each ends on its own.
    for (kind, tx) in [("stdin", from_tx.clone()), ("resize", from_tx.clone())] {
        let Some(stream) = streams.get_mut(kind) else {
            continue;
        };
        let mut data = std::mem::replace(&mut stream.data, mpsc::channel(1).1);
        let is_stdin = kind == "stdin";
        tokio::spawn(async move {
            let mut line = Vec::new();
            while let Some(chunk) = data.recv().await {
                if is_stdin {
                    if tx.send(FromClient::Stdin(chunk)).await.is_err() {
                        return;
                    }
                    continue;
                }
                // Resizes are JSON objects one after another (a Go json.Encoder's stream).
                line.extend_from_slice(&chunk);
                while let Some(end) = line.iter().position(|b| *b == b'\n') {
                    let one: Vec<u8> = line.drain(..=end).collect();
                    if let Some(r) = resize(&one) {
                        let _ = tx.send(r).await;
                    }
                }
            }
            if is_stdin {
                let _ = tx.send(FromClient::StdinEnd).await;
            }
        });
    }
    // Held until the connection ends: the client's own streams ending is not its going away,
    // but the connection's is (the session then sees its input close and kills the command).
    let keep_open = from_tx;
    let mut later_streams = std::mem::replace(&mut session.streams, mpsc::channel(1).1);
    let connection = tokio::spawn(async move {
        while later_streams.recv().await.is_some() {} // a client opens no streams after these
        drop(keep_open);
    });
    let writers: std::collections::HashMap<u8, spdy::StreamWriter> =
        [(STDOUT, "stdout"), (STDERR, "stderr")]
            .into_iter()
            .filter_map(|(ch, kind)| Some((ch, streams.get(kind)?.out.clone())))
            .collect();
    let forwarding = tokio::spawn(async move {
        while let Some((channel, data)) = to_rx.recv().await {
            if let Some(w) = writers.get(&channel) {
                if w.send(&data).await.is_err() {
                    return;
                }
            }
        }
        for w in writers.values() {
            let _ = w.finish().await;
        }
    });
    let status = run(&*exec, &request, to_tx, from_rx).await;
    connection.abort();
    let _ = forwarding.await;
    if let (Some(status), Some(error)) = (status, streams.get("error")) {
        let v4 = protocol == PROTOCOL_V4;
        let failed = status["status"] != "Success";
        let message = if v4 {
            Some(status.to_string())
        } else {
            failed.then(|| status["message"].as_str().unwrap_or_default().to_string())
        };
        if let Some(m) = message {
            let _ = error.out.send(m.as_bytes()).await;
        }
        let _ = error.out.finish().await;
    }
    session.close().await;
}

/// Copies an attachment's output out and the client's input in, until the container's
/// process ends (Ok) or the client goes away (Err: it detached; the container runs on).
async fn pump_attach(
    io: Box<dyn AttachIo>,
    request: &ExecRequest,
    to: mpsc::Sender<(u8, Bytes)>,
    mut from: mpsc::Receiver<FromClient>,
) -> Result<(), ()> {
    use runtime::oci::attach;
    let (mut reader, mut writer) = tokio::io::split(io);
    // Frames are read by a task of their own: a frame read halfway must not be dropped when
    // input arrives.
    let (frames_tx, mut frames) = mpsc::channel(8);
    let reading = tokio::spawn(async move {
        while let Some(frame) = attach::read_frame(&mut reader).await {
            if frames_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let outcome = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some((channel, data)) => {
                    let (channel, wanted) = match channel {
                        attach::STDERR if !request.tty => (STDERR, request.stderr),
                        _ => (STDOUT, request.stdout),
                    };
                    if wanted && to.send((channel, Bytes::from(data))).await.is_err() {
                        break Err(());
                    }
                }
                None => break Ok(()), // the process has exited
            },
            input = from.recv() => {
                let sent = match input {
                    Some(FromClient::Stdin(data)) if request.stdin => {
                        attach::write_frame(&mut writer, attach::STDIN, &data).await
                    }
                    Some(FromClient::Stdin(_)) => Ok(()),
                    Some(FromClient::StdinEnd) => {
                        attach::write_frame(&mut writer, attach::STDIN_END, b"").await
                    }
                    Some(FromClient::Resize(width, height)) => {
                        let size = json!({"Width": width, "Height": height}).to_string();
                        attach::write_frame(&mut writer, attach::RESIZE, size.as_bytes()).await
                    }
                    None => break Err(()),
                };
                if sent.is_err() {
                    break Ok(()); // the container's side is gone with its process
                }
            }
        }
    };
    reading.abort();
    outcome
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

/// Reads what the command wrote on its terminal (never ready once it is done).
async fn read_terminal(terminal: Option<&Terminal>, buf: &mut [u8]) -> std::io::Result<usize> {
    match terminal {
        Some(t) => t.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Hands a chunk of input to the writer task; Err when the command no longer reads it.
async fn hand_over(to: Option<mpsc::Sender<Bytes>>, chunk: Option<Bytes>) -> Result<(), ()> {
    match (to, chunk) {
        (Some(to), Some(chunk)) => to.send(chunk).await.map_err(|_| ()),
        _ => Err(()),
    }
}

/// Copies input in and output out until the command has exited and its output is sent.
/// Err (the command killed) when the client goes away first.
async fn pump(
    running: Running,
    request: &ExecRequest,
    to: mpsc::Sender<(u8, Bytes)>,
    mut from: mpsc::Receiver<FromClient>,
) -> Result<ExitStatus, String> {
    let Running {
        mut child,
        terminal,
    } = running;
    let terminal = terminal.map(Arc::new);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut term_open = terminal.is_some();
    // Input is written by a task of its own, so that a command that does not read its input
    // never stops its output from being sent (`cat` with a large input needs both at once).
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(16);
    let pipe = child.stdin.take();
    let stdin_terminal = terminal.clone();
    let stdin_writer = tokio::spawn(async move {
        let mut pipe = pipe;
        while let Some(chunk) = stdin_rx.recv().await {
            let written = match (&mut pipe, &stdin_terminal) {
                (Some(p), _) => p.write_all(&chunk).await,
                (None, Some(t)) => t.write_all(&chunk).await,
                (None, None) => Ok(()),
            };
            if written.is_err() {
                break; // the command closed its input
            }
        }
        // All senders gone: the client's input has ended. Dropping the pipe is the command's
        // end of input; on a terminal, end of input is what the user types (^D), as on any.
    });
    let mut stdin = Some(stdin_tx);
    // A chunk of input the writer has not taken yet; the client's input is not read meanwhile
    // (which slows the client to the command's pace) but the output still is, or a command
    // like `cat` that writes as it reads would never drain.
    let mut pending_stdin: Option<Bytes> = None;
    let mut exited: Option<ExitStatus> = None;
    let mut drain_until = tokio::time::Instant::now();
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    let mut term_buf = vec![0u8; 32 * 1024];

    let outcome = loop {
        if let Some(status) = exited {
            if stdout.is_none() && stderr.is_none() && !term_open {
                break Ok(status);
            }
        }
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buf) => match read {
                Ok(n) if n > 0 => {
                    if request.stdout && to.send((STDOUT, Bytes::copy_from_slice(&out_buf[..n]))).await.is_err() {
                        break Err("the client is gone".to_string());
                    }
                }
                _ => stdout = None,
            },
            read = read_some(&mut stderr, &mut err_buf) => match read {
                Ok(n) if n > 0 => {
                    // On a terminal, these are the shim's own errors: the client sees them.
                    let channel = if request.tty { STDOUT } else { STDERR };
                    if (request.stderr || request.tty) && to.send((channel, Bytes::copy_from_slice(&err_buf[..n]))).await.is_err() {
                        break Err("the client is gone".to_string());
                    }
                }
                _ => stderr = None,
            },
            read = read_terminal(terminal.as_deref().filter(|_| term_open), &mut term_buf) => match read {
                Ok(n) if n > 0 => {
                    if request.stdout && to.send((STDOUT, Bytes::copy_from_slice(&term_buf[..n]))).await.is_err() {
                        break Err("the client is gone".to_string());
                    }
                }
                _ => term_open = false,
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
            handed = hand_over(stdin.clone(), pending_stdin.clone()), if pending_stdin.is_some() => {
                pending_stdin = None;
                if handed.is_err() {
                    stdin = None; // the command no longer reads its input
                }
            }
            input = from.recv(), if pending_stdin.is_none() => match input {
                Some(FromClient::Stdin(chunk)) => {
                    if stdin.is_some() {
                        pending_stdin = Some(chunk);
                    }
                }
                Some(FromClient::StdinEnd) => {
                    // The writer writes what it has, then closes the command's stdin.
                    stdin = None;
                }
                Some(FromClient::Resize(columns, rows)) => {
                    if let Some(t) = &terminal {
                        let _ = t.resize(columns, rows);
                    }
                }
                None => break Err("the client is gone".to_string()),
            },
        }
    };
    drop(stdin);
    // The command is done (or being killed): what it did not read no longer matters.
    stdin_writer.abort();
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
        let tty = parse("command=sh&stdin=true&stdout=true&stderr=true&tty=true").unwrap();
        assert!(tty.tty && !tty.stderr, "a terminal carries stderr itself");
        assert_eq!(tty.io(), ExecIo::Terminal);
        assert_eq!(r.io(), ExecIo::Pipes { stdin: true });
        // An attachment names no command.
        let attach =
            ExecRequest::parse_attach("ns".into(), "p".into(), "c".into(), "stdin=1&stdout=1")
                .unwrap();
        assert!(attach.attach && attach.command.is_empty());
        assert!(
            parse("stdin=1&stdout=1").is_err(),
            "an exec needs a command"
        );
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
