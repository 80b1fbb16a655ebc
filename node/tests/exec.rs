//! The node's exec endpoint driven by a WebSocket client as kubectl drives it
//! (`v5.channel.k8s.io`), with an `Exec` that runs host processes (`sh -c`) for containers,
//! and a stand-in API server that answers the endpoint's TokenReviews.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::endpoint;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// What a session gave back: stdout, stderr, the status on channel 3 and the close code.
#[derive(Debug, Default)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<Value>,
    close_code: Option<u16>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    addr: SocketAddr,
    container: &str,
    query: &str,
    token: &str,
    protocol: &str,
) -> Result<Socket, WsError> {
    let url = format!("ws://{addr}/exec/default/web/{container}?{query}");
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("sec-websocket-protocol", protocol.parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// Sends `stdin` (then, in v5, its end) while reading everything that comes back.
async fn session(socket: Socket, stdin: Vec<Vec<u8>>, close_stdin: bool) -> Outcome {
    let (mut tx, mut rx) = socket.split();
    let sender = tokio::spawn(async move {
        for chunk in stdin {
            let mut frame = vec![0u8];
            frame.extend_from_slice(&chunk);
            tx.send(Message::Binary(frame.into())).await.unwrap();
        }
        if close_stdin {
            tx.send(Message::Binary(vec![255, 0].into())).await.unwrap();
        }
    });
    let mut outcome = Outcome::default();
    let read = async {
        while let Some(message) = rx.next().await {
            match message.expect("the session reads cleanly") {
                Message::Binary(data) => match data.first() {
                    Some(1) => outcome.stdout.extend_from_slice(&data[1..]),
                    Some(2) => outcome.stderr.extend_from_slice(&data[1..]),
                    Some(3) => outcome.status = Some(serde_json::from_slice(&data[1..]).unwrap()),
                    other => panic!("a message on an unexpected channel {other:?}"),
                },
                Message::Close(frame) => outcome.close_code = frame.map(|f| f.code.into()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the session ends");
    let _ = sender.await;
    outcome
}

async fn run(addr: SocketAddr, query: &str) -> Outcome {
    let socket = connect(addr, "web", query, "good", "v5.channel.k8s.io")
        .await
        .unwrap();
    session(socket, Vec::new(), false).await
}

/// The query of `sh -c script`, all streams but stdin.
fn sh(script: &str) -> String {
    let script: String = url_encode(script);
    format!("command=sh&command=-c&command={script}&stdout=true&stderr=true")
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The HTTP refusal of a request that is never upgraded: status and body.
fn refusal(result: Result<Socket, WsError>) -> (u16, String) {
    match result {
        Err(WsError::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a WebSocket"),
    }
}

#[tokio::test]
async fn output_and_exit_codes_come_back_on_their_channels() {
    let (addr, _dir) = endpoint().await;

    let out = run(addr, &sh("echo hi; echo oops >&2")).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(
        out.status,
        Some(json!({"metadata": {}, "status": "Success"}))
    );
    assert_eq!(
        out.close_code,
        Some(1000),
        "closed normally, or kubectl drops the status"
    );

    let out = run(addr, &sh("exit 3")).await;
    assert_eq!(
        out.status,
        Some(json!({"metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}))
    );

    // Output the client did not ask for is read (the command never blocks on it) but not sent.
    let out = run(
        addr,
        "command=sh&command=-c&command=echo%20out%3B%20echo%20err%20%3E%262&stdout=true",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(out.stderr.is_empty());

    // Much output, more than any pipe holds, arrives whole.
    let out = run(addr, &sh("head -c 3000000 /dev/zero")).await;
    assert_eq!(out.stdout.len(), 3_000_000);
    assert_eq!(out.status.unwrap()["status"], "Success");

    // v4 clients are served too (without the stdin close signal, which v4 lacks).
    let socket = connect(addr, "web", &sh("echo v4"), "good", "v4.channel.k8s.io")
        .await
        .unwrap();
    let out = session(socket, Vec::new(), false).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v4\n");
}

#[tokio::test]
async fn stdin_flows_in_until_the_client_closes_it() {
    let (addr, _dir) = endpoint().await;
    let query = "command=tr&command=a-z&command=A-Z&stdin=true&stdout=true&stderr=true";
    let socket = connect(addr, "web", query, "good", "v5.channel.k8s.io")
        .await
        .unwrap();
    let out = session(socket, vec![b"hello ".to_vec(), b"world\n".to_vec()], true).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO WORLD\n");
    assert_eq!(out.status.unwrap()["status"], "Success");

    // `cat` of an input larger than the pipes: stdin and stdout flow at the same time.
    let query = "command=cat&stdin=true&stdout=true";
    let socket = connect(addr, "web", query, "good", "v5.channel.k8s.io")
        .await
        .unwrap();
    let chunks: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 32 * 1024]).collect();
    let expected: Vec<u8> = chunks.concat();
    let out = session(socket, chunks, true).await;
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected, "the output differs from the input");
}

#[tokio::test]
async fn a_client_that_leaves_stops_its_command() {
    let (addr, _dir) = endpoint().await;
    let mut socket = connect(
        addr,
        "web",
        &sh("echo $$; exec sleep 60"),
        "good",
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    let pid = loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Binary(data) if data.first() == Some(&1) => {
                break String::from_utf8_lossy(&data[1..]).trim().to_string();
            }
            _ => {}
        }
    };
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc.exists());
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proc.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn commands_that_cannot_start_end_with_a_status_kubectl_prints() {
    let (addr, _dir) = endpoint().await;
    for (container, code, reason, message) in [
        (
            "missing",
            404,
            "NotFound",
            "container missing is not running in pod default/web".to_string(),
        ),
        (
            "wasm",
            400,
            "BadRequest",
            "exec is not supported for Wasm containers".to_string(),
        ),
    ] {
        let socket = connect(addr, container, &sh("true"), "good", "v5.channel.k8s.io")
            .await
            .unwrap();
        let out = session(socket, Vec::new(), false).await;
        assert_eq!(
            out.status,
            Some(
                json!({"metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
            )
        );
        assert_eq!(out.close_code, Some(1000));
    }
    // A program that does not exist fails to start.
    let socket = connect(
        addr,
        "web",
        "command=no-such-program&stdout=true",
        "good",
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    let status = session(socket, Vec::new(), false).await.status.unwrap();
    assert_eq!(status["reason"], "InternalError");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("cannot start no-such-program"),
        "{status}"
    );
}

#[tokio::test]
async fn requests_that_cannot_be_served_are_refused_before_the_upgrade() {
    let (addr, _dir) = endpoint().await;
    let (code, _) = refusal(connect(addr, "web", &sh("true"), "bad", "v5.channel.k8s.io").await);
    assert_eq!(code, 401);
    let (code, body) =
        refusal(connect(addr, "web", "stdout=true", "good", "v5.channel.k8s.io").await);
    assert_eq!(code, 400);
    assert!(body.contains("at least one command"), "{body}");
    let (code, body) =
        refusal(connect(addr, "web", &sh("true"), "good", "base64.channel.k8s.io").await);
    assert_eq!(code, 400);
    assert!(body.contains("v5.channel.k8s.io"), "{body}");

    // A SPDY client that speaks no channel protocol of ours hears which are.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(
        format!(
            "POST /exec/default/web/web?{} HTTP/1.1\r\nHost: n1\r\nAuthorization: Bearer good\r\n\
             Connection: Upgrade, close\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v9.channel.k8s.io\r\n\
             Content-Length: 0\r\n\r\n",
            sh("true")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("v4.channel.k8s.io"), "{answer}");
}

/// `kubectl exec -it`: the command runs on a terminal (`tty` names one), the client's resize
/// reaches it (`stty size`), what is typed is echoed, and the exit code comes back.
#[tokio::test]
async fn a_terminal_session_resizes_echoes_and_exits() {
    let (addr, _dir) = endpoint().await;
    let query = "command=sh&stdin=true&stdout=true&stderr=true&tty=true";
    let socket = connect(addr, "web", query, "good", "v5.channel.k8s.io")
        .await
        .unwrap();
    let (mut tx, mut rx) = socket.split();
    tx.send(Message::Binary(
        [&[4u8][..], br#"{"Width":101,"Height":37}"#]
            .concat()
            .into(),
    ))
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut status = None;
    let mut typed = false;
    let read = async {
        while let Some(message) = rx.next().await {
            match message.unwrap() {
                Message::Binary(data) => match data.first() {
                    Some(1) => out.extend_from_slice(&data[1..]),
                    Some(3) => status = Some(serde_json::from_slice::<Value>(&data[1..]).unwrap()),
                    other => panic!("a message on channel {other:?} (a terminal has only stdout)"),
                },
                Message::Close(_) => break,
                _ => {}
            }
            // Once the shell has prompted, type: the size comes before the commands.
            if !typed && !out.is_empty() {
                typed = true;
                let line = b"\x00tty; stty size; exit 7\n".to_vec();
                tx.send(Message::Binary(line.into())).await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the session ends");
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert!(
        out.contains("tty; stty size; exit 7"),
        "the terminal echoes: {out}"
    );
    assert!(out.contains("/dev/pts/"), "tty names a terminal: {out}");
    assert!(
        out.contains("37 101"),
        "the resize reached the terminal: {out}"
    );
    assert_eq!(status.unwrap()["details"]["causes"][0]["message"], "7");
}
