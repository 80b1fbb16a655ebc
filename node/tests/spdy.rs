//! The node's exec and port-forward endpoints over SPDY/3.1, driven by a small SPDY client
//! written here as client-go's spdystream behaves (streams opened by the client, header
//! blocks compressed with SPDY's dictionary), over a plain upgrade and over the WebSocket
//! tunnel kubectl 1.30+ uses for port-forward. Real kubectl drives both in cli's tests.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::endpoint;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The bytes of a session: a TCP connection after the upgrade, or a WebSocket whose binary
/// messages carry them.
enum Wire {
    Tcp(tokio::net::TcpStream),
    Ws(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
    ),
}

#[derive(Debug, PartialEq)]
enum Frame {
    Reply(u32),
    Data(u32, bool, Vec<u8>),
    GoAway,
    Other(u16),
}

struct Client {
    wire: Wire,
    buffer: Vec<u8>,
    deflater: Compress,
    inflater: Decompress,
    next_id: u32,
}

impl Client {
    fn new(wire: Wire) -> Client {
        let mut deflater = Compress::new(Compression::default(), true);
        deflater.set_dictionary(&node::spdy::dictionary()).unwrap();
        Client {
            wire,
            buffer: Vec::new(),
            deflater,
            inflater: Decompress::new(true),
            next_id: 1,
        }
    }

    /// An upgrade to SPDY/3.1 at `path`; Err: the HTTP answer when it is not a 101.
    async fn upgrade(addr: SocketAddr, path: &str, protocol: &str) -> Result<Client, String> {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: n1\r\nAuthorization: Bearer good\r\n\
                 Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\
                 Content-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if tcp.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-stream-protocol-version: {protocol}").to_ascii_lowercase()),
            "{head}"
        );
        Ok(Client::new(Wire::Tcp(tcp)))
    }

    async fn send_bytes(&mut self, bytes: Vec<u8>) {
        match &mut self.wire {
            Wire::Tcp(t) => t.write_all(&bytes).await.unwrap(),
            Wire::Ws(w) => w.send(Message::Binary(bytes.into())).await.unwrap(),
        }
    }

    /// At least `n` bytes in the buffer; false at the end of the connection.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buffer.len() < n {
            match &mut self.wire {
                Wire::Tcp(t) => {
                    let mut b = vec![0u8; 64 * 1024];
                    match t.read(&mut b).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => self.buffer.extend_from_slice(&b[..k]),
                    }
                }
                Wire::Ws(w) => match w.next().await {
                    Some(Ok(Message::Binary(b))) => self.buffer.extend_from_slice(&b),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                    Some(Ok(_)) => {}
                },
            }
        }
        true
    }

    /// Opens a stream with these headers; its id.
    async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut block = (headers.len() as u32).to_be_bytes().to_vec();
        for (n, v) in headers {
            block.extend_from_slice(&(n.len() as u32).to_be_bytes());
            block.extend_from_slice(n.as_bytes());
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v.as_bytes());
        }
        let mut compressed = Vec::with_capacity(block.len() + 1024);
        self.deflater
            .compress_vec(&block, &mut compressed, FlushCompress::Sync)
            .unwrap();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&compressed);
        let mut frame = vec![0x80, 3, 0, 1, 0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(&body);
        self.send_bytes(frame).await;
        id
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let mut frame = id.to_be_bytes().to_vec();
        frame.push(u8::from(fin));
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(data);
        self.send_bytes(frame).await;
    }

    /// The next frame; None at the end of the connection.
    async fn frame(&mut self) -> Option<Frame> {
        if !self.fill(8).await {
            return None;
        }
        let h: Vec<u8> = self.buffer[..8].to_vec();
        let length = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
        if !self.fill(8 + length).await {
            return None;
        }
        let body: Vec<u8> = self.buffer.drain(..8 + length).skip(8).collect();
        if h[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            return Some(Frame::Data(id, h[4] & 1 == 1, body));
        }
        let kind = u16::from_be_bytes([h[2], h[3]]);
        Some(match kind {
            2 => {
                // The reply's header block must inflate in our stream (no dictionary).
                let mut out = Vec::with_capacity(4096);
                self.inflater
                    .decompress_vec(&body[4..], &mut out, FlushDecompress::Sync)
                    .expect("the reply's headers inflate");
                assert_eq!(out, 0u32.to_be_bytes(), "a reply without headers");
                Frame::Reply(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
            }
            7 => Frame::GoAway,
            other => Frame::Other(other),
        })
    }

    /// Every frame until the connection ends, with 30 s at most.
    async fn rest(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let read = async {
            while let Some(f) = self.frame().await {
                let end = f == Frame::GoAway;
                frames.push(f);
                if end {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the session ends");
        frames
    }
}

/// What arrived on stream `id`, and whether it ended.
fn on(frames: &[Frame], id: u32) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let mut fin = false;
    for f in frames {
        if let Frame::Data(i, f_fin, d) = f {
            if *i == id {
                data.extend_from_slice(d);
                fin |= *f_fin;
            }
        }
    }
    (data, fin)
}

#[tokio::test]
async fn exec_over_spdy_takes_stdin_and_ends_with_a_status() {
    let (addr, _dir) = endpoint().await;
    let path = "/exec/default/web/web?command=tr&command=a-z&command=A-Z&stdin=true&stdout=true&stderr=true";
    let mut c = Client::upgrade(addr, path, "v4.channel.k8s.io")
        .await
        .unwrap();
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let stderr = c.open(&[("streamType", "stderr")]).await;
    c.data(stdin, b"hello ", false).await;
    c.data(stdin, b"spdy\n", true).await;
    let frames = c.rest().await;
    for id in [error, stdin, stdout, stderr] {
        assert!(
            frames.contains(&Frame::Reply(id)),
            "stream {id} replied: {frames:?}"
        );
    }
    assert_eq!(on(&frames, stdout), (b"HELLO SPDY\n".to_vec(), true));
    let (status, fin) = on(&frames, error);
    assert!(fin);
    let status: Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["status"], "Success");
    assert_eq!(frames.last(), Some(&Frame::GoAway));

    // A failing command's exit code, in the Status (v4) or as a message (older protocols).
    let path = "/exec/default/web/web?command=sh&command=-c&command=exit%205&stdout=true";
    let mut c = Client::upgrade(addr, path, "v4.channel.k8s.io")
        .await
        .unwrap();
    let error = c.open(&[("streamType", "error")]).await;
    c.open(&[("streamType", "stdout")]).await;
    let status: Value = serde_json::from_slice(&on(&c.rest().await, error).0).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "5");
    let mut c = Client::upgrade(addr, path, "v2.channel.k8s.io")
        .await
        .unwrap();
    let error = c.open(&[("streamType", "error")]).await;
    c.open(&[("streamType", "stdout")]).await;
    let message = String::from_utf8(on(&c.rest().await, error).0).unwrap();
    assert!(message.contains("exit code 5"), "{message}");

    // No protocol in common: refused with the ones spoken, before any stream.
    let refused = Client::upgrade(addr, path, "v9.channel.k8s.io")
        .await
        .err()
        .unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
}

/// A listener that answers each connection with what it sent, upper-cased, then closes.
async fn upper_case_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = conn.read_to_end(&mut all).await;
                let _ = conn.write_all(&all.to_ascii_uppercase()).await;
            });
        }
    });
    port
}

/// Two connections at once through one session, then a port nothing listens on.
async fn forward_through(mut c: Client, port: u16) {
    let port = port.to_string();
    let e1 = c
        .open(&[("streamType", "error"), ("port", &port), ("requestID", "0")])
        .await;
    let d1 = c
        .open(&[("streamType", "data"), ("port", &port), ("requestID", "0")])
        .await;
    let e2 = c
        .open(&[("streamType", "error"), ("port", &port), ("requestID", "1")])
        .await;
    let d2 = c
        .open(&[("streamType", "data"), ("port", &port), ("requestID", "1")])
        .await;
    c.data(d2, b"second", true).await;
    c.data(d1, b"first", true).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let e3 = c
        .open(&[
            ("streamType", "error"),
            ("port", &closed),
            ("requestID", "2"),
        ])
        .await;
    let d3 = c
        .open(&[
            ("streamType", "data"),
            ("port", &closed),
            ("requestID", "2"),
        ])
        .await;
    // Read until every stream has ended (the session stays open for more).
    let mut frames = Vec::new();
    let read = async {
        loop {
            let done = [e1, d1, e2, d2, e3, d3].iter().all(|id| on(&frames, *id).1);
            if done {
                break;
            }
            frames.push(c.frame().await.expect("the session stays open"));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("every stream ends");
    assert_eq!(on(&frames, d1).0, b"FIRST");
    assert_eq!(on(&frames, d2).0, b"SECOND");
    assert!(on(&frames, e1).0.is_empty() && on(&frames, e2).0.is_empty());
    let refused = String::from_utf8(on(&frames, e3).0).unwrap();
    assert!(
        refused.contains(&format!("forwarding port {closed}")),
        "{refused}"
    );
}

#[tokio::test]
async fn port_forward_over_spdy_carries_each_connection_on_its_own_streams() {
    let (addr, _dir) = endpoint().await;
    let port = upper_case_server().await;
    let c = Client::upgrade(addr, "/portForward/default/web", "portforward.k8s.io")
        .await
        .unwrap();
    forward_through(c, port).await;
}

#[tokio::test]
async fn port_forward_over_the_websocket_tunnel_is_the_same_spdy() {
    let (addr, _dir) = endpoint().await;
    let port = upper_case_server().await;
    let mut request = format!("ws://{addr}/portForward/default/web?ports={port}")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", "Bearer good".parse().unwrap());
    headers.insert(
        "sec-websocket-protocol",
        "SPDY/3.1+portforward.k8s.io".parse().unwrap(),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "SPDY/3.1+portforward.k8s.io"
    );
    forward_through(Client::new(Wire::Ws(Box::new(socket))), port).await;

    // A WebSocket subprotocol spoken neither way is refused without a 101, so client-go
    // falls back to SPDY.
    let mut request = format!("ws://{addr}/portForward/default/web?ports={port}")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer good".parse().unwrap());
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "base64.channel.k8s.io".parse().unwrap(),
    );
    let refused = tokio_tungstenite::connect_async(request)
        .await
        .err()
        .unwrap();
    assert!(refused.to_string().contains("400"), "{refused}");
}

/// A SPDY client that goes away stops its command, as a WebSocket one does.
#[tokio::test]
async fn a_spdy_client_that_leaves_stops_its_command() {
    let (addr, _dir) = endpoint().await;
    let path = "/exec/default/web/web?command=sh&command=-c&command=echo%20%24%24%3B%20exec%20sleep%2060&stdout=true";
    let mut c = Client::upgrade(addr, path, "v4.channel.k8s.io")
        .await
        .unwrap();
    c.open(&[("streamType", "error")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let pid = loop {
        match c.frame().await.expect("the session is open") {
            Frame::Data(id, _, data) if id == stdout && !data.is_empty() => {
                break String::from_utf8(data).unwrap().trim().to_string();
            }
            _ => {}
        }
    };
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc.exists());
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proc.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
