//! SPDY/3.1 sessions, server side: what kubectl before 1.30 and client-go's libraries speak for
//! `exec`, `attach` and `port-forward` (an HTTP upgrade to `SPDY/3.1`), and what kubectl 1.30+
//! tunnels through a WebSocket for `port-forward` (KEP-4006). The client opens streams (one per
//! exec channel, two per forwarded connection), each with headers; both sides send data on
//! them and end them with FIN.
//!
//! Hand-written: no maintained Rust crate speaks SPDY (it was retired for HTTP/2 in 2016), and
//! what Kubernetes needs of it is small. Only that part is here: the client opens every stream,
//! the server replies to each; no server push, no priorities, and no flow control (Go's
//! spdystream, the only client, neither sends nor honours WINDOW_UPDATE).
//!
//! Frames (draft-mbelshe-httpbis-spdy-00, 2.2): control frames start with the bit set, the
//! version (3) and a type; data frames with a 31-bit stream id. Both then carry flags (FIN is
//! 0x01) and a 24-bit length. Header blocks are one zlib stream per direction for the whole
//! connection, flushed after each block; the client's uses SPDY's preset dictionary.

use std::collections::HashMap;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The upgrade token of the HTTP handshake.
pub const UPGRADE: &str = "SPDY/3.1";

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FIN: u8 = 0x01;
/// RST_STREAM's status for a stream id used twice.
const STREAM_IN_USE: u32 = 8;
/// RST_STREAM's status for a stream past the limit below.
const REFUSED_STREAM: u32 = 3;
/// How many streams a client may have open at once (kubectl opens two per forwarded
/// connection, five for an exec): each may hold up to [`STREAM_QUEUE`] frames in memory.
const MAX_STREAMS: usize = 1024;
/// A data frame larger than this ends the session: Go's framer sends at most 64 KiB at once.
const MAX_DATA_FRAME: usize = 1 << 20;
/// A header block that inflates beyond this ends the session (a zlib bomb).
const MAX_HEADERS: usize = 64 * 1024;
/// How much of a stream's data may wait for its reader before the session stops reading.
const STREAM_QUEUE: usize = 16;
/// The largest data frame this side sends.
const CHUNK: usize = 32 * 1024;

/// Why a session ended; for the logs.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("reading the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SPDY/3: {0}")]
    Protocol(String),
}

/// A stream the client opened: its headers (names lower-cased, as SPDY/3 sends them), what the
/// client sends on it (the receiver ends at the client's FIN or reset, or when the session
/// ends), and the way to answer on it.
pub struct Stream {
    pub headers: Vec<(String, String)>,
    pub data: mpsc::Receiver<Bytes>,
    pub out: StreamWriter,
}

impl Stream {
    /// A header's value, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends on one stream; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Outgoing>,
}

/// The connection is gone.
#[derive(Debug)]
pub struct Closed;

impl StreamWriter {
    /// Sends `data`, in frames of at most 32 KiB.
    pub async fn send(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(CHUNK) {
            let frame = Outgoing::Data {
                id: self.id,
                fin: false,
                data: Bytes::copy_from_slice(chunk),
            };
            self.frames.send(frame).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Ends this side of the stream (an empty data frame with FIN).
    pub async fn finish(&self) -> Result<(), Closed> {
        let frame = Outgoing::Data {
            id: self.id,
            fin: true,
            data: Bytes::new(),
        };
        self.frames.send(frame).await.map_err(|_| Closed)
    }
}

/// One open session: the streams the client opens, and its end.
pub struct Session {
    pub streams: mpsc::Receiver<Stream>,
    control: mpsc::Sender<Outgoing>,
}

impl Session {
    /// Says GOAWAY and closes the connection once what was sent before has been written.
    pub async fn close(self) {
        let _ = self.control.send(Outgoing::GoAway).await;
        // The writer ends the connection at the GOAWAY; waiting for it to be gone keeps the
        // caller from racing its own last frames.
        self.control.closed().await;
    }
}

enum Outgoing {
    Reply(u32),
    Data { id: u32, fin: bool, data: Bytes },
    Reset(u32, u32),
    Ping(u32),
    GoAway,
}

/// Serves a SPDY/3 session on `io` (after the upgrade): frames are read and written by tasks
/// of their own until the client goes away or [`Session::close`].
pub fn serve<IO>(io: IO) -> Session
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let (frames, outgoing) = mpsc::channel(64);
    let (streams_tx, streams) = mpsc::channel(16);
    let reading = tokio::spawn({
        let frames = frames.clone();
        async move {
            if let Err(e) = read_frames(reader, frames, streams_tx).await {
                tracing::debug!("a SPDY session ended: {e}");
            }
        }
    });
    tokio::spawn(write_frames(writer, outgoing, reading));
    Session {
        streams,
        control: frames,
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    frames: mpsc::Sender<Outgoing>,
    streams: mpsc::Sender<Stream>,
) -> Result<(), SpdyError> {
    let mut inflater = HeaderInflater::new();
    // The client's open streams: where their data goes.
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut head = [0u8; 8];
    loop {
        match reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if length > MAX_DATA_FRAME {
            return Err(SpdyError::Protocol(format!("a frame of {length} bytes")));
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        if head[0] & 0x80 == 0 {
            // A data frame.
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if let Some(to) = open.get(&id) {
                if !body.is_empty() && to.send(Bytes::from(body)).await.is_err() {
                    // The stream's reader is gone: what else arrives on it is dropped.
                    open.remove(&id);
                }
            }
            if flags & FIN != 0 {
                open.remove(&id);
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        let kind = u16::from_be_bytes([head[2], head[3]]);
        if version != VERSION {
            return Err(SpdyError::Protocol(format!("version {version}")));
        }
        let word = |at: usize| -> Result<u32, SpdyError> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| SpdyError::Protocol(format!("a short frame of type {kind}")))
        };
        match kind {
            SYN_STREAM => {
                let id = word(0)? & 0x7fff_ffff;
                let block = body.get(10..).unwrap_or_default();
                let headers = decode_headers(&inflater.inflate(block)?)?;
                if open.contains_key(&id) {
                    let _ = frames.send(Outgoing::Reset(id, STREAM_IN_USE)).await;
                    continue;
                }
                if open.len() >= MAX_STREAMS {
                    let _ = frames.send(Outgoing::Reset(id, REFUSED_STREAM)).await;
                    continue;
                }
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                if flags & FIN == 0 {
                    open.insert(id, tx);
                }
                if frames.send(Outgoing::Reply(id)).await.is_err() {
                    return Ok(());
                }
                let stream = Stream {
                    headers,
                    data: rx,
                    out: StreamWriter {
                        id,
                        frames: frames.clone(),
                    },
                };
                if streams.send(stream).await.is_err() {
                    return Ok(()); // nobody takes streams any more: the session is over
                }
            }
            RST_STREAM => {
                open.remove(&(word(0)? & 0x7fff_ffff));
            }
            PING => {
                let _ = frames.send(Outgoing::Ping(word(0)?)).await;
            }
            GOAWAY => return Ok(()),
            // SETTINGS, WINDOW_UPDATE (no flow control: see the module's note), HEADERS and
            // anything newer carry nothing this side acts on.
            _ => {}
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut outgoing: mpsc::Receiver<Outgoing>,
    reading: tokio::task::JoinHandle<()>,
) {
    let mut deflater = Compress::new(Compression::default(), true);
    while let Some(frame) = outgoing.recv().await {
        let mut bytes = Vec::new();
        let goaway = matches!(frame, Outgoing::GoAway);
        match frame {
            Outgoing::Reply(id) => {
                // No headers: what kubelet replies too.
                let block = deflate(&mut deflater, &0u32.to_be_bytes());
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&block);
                control(&mut bytes, SYN_REPLY, 0, &body);
            }
            Outgoing::Data { id, fin, data } => {
                bytes.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                bytes.push(if fin { FIN } else { 0 });
                bytes.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                bytes.extend_from_slice(&data);
            }
            Outgoing::Reset(id, status) => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(&mut bytes, RST_STREAM, 0, &body);
            }
            Outgoing::Ping(id) => control(&mut bytes, PING, 0, &id.to_be_bytes()),
            Outgoing::GoAway => control(&mut bytes, GOAWAY, 0, &[0; 8]),
        }
        if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
            break;
        }
        if goaway {
            break;
        }
    }
    reading.abort();
    let _ = writer.shutdown().await;
}

/// A control frame's bytes.
fn control(out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
}

/// A header block compressed into the connection's zlib stream and flushed. This side sends no
/// preset dictionary: a zlib stream without one is valid to every SPDY/3 reader.
fn deflate(deflater: &mut Compress, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 64);
    let before = deflater.total_in();
    loop {
        let taken = (deflater.total_in() - before) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(256);
        }
        let _ = deflater.compress_vec(&block[taken..], &mut out, FlushCompress::Sync);
        if (deflater.total_in() - before) as usize == block.len() && out.capacity() > out.len() {
            break;
        }
    }
    out
}

/// Inflates the client's header blocks: one zlib stream over the whole connection, with SPDY's
/// dictionary.
struct HeaderInflater {
    inflater: Decompress,
}

impl HeaderInflater {
    fn new() -> HeaderInflater {
        HeaderInflater {
            inflater: Decompress::new(true),
        }
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(1024);
        let before = self.inflater.total_in();
        loop {
            let taken = (self.inflater.total_in() - before) as usize;
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADERS {
                    return Err(SpdyError::Protocol("a header block too large".into()));
                }
                out.reserve(out.len());
            }
            let (was_in, was_out) = (self.inflater.total_in(), self.inflater.total_out());
            match self
                .inflater
                .decompress_vec(&block[taken..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => {
                    // A client ends its header stream only with the connection.
                    return Err(SpdyError::Protocol("the header stream ended".into()));
                }
                Ok(Status::Ok | Status::BufError) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflater
                        .set_dictionary(&dictionary())
                        .map_err(|e| SpdyError::Protocol(format!("the header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Protocol(format!("a header block: {e}"))),
            }
            let done = (self.inflater.total_in() - before) as usize == block.len();
            if done && out.len() < out.capacity() {
                return Ok(out);
            }
            // Room to write and input left, yet nothing moved: not a zlib stream that goes on.
            let stuck = self.inflater.total_in() == was_in && self.inflater.total_out() == was_out;
            if stuck && out.len() < out.capacity() {
                return Err(SpdyError::Protocol(
                    "a header block that does not inflate".into(),
                ));
            }
        }
    }
}

/// A header block's name/value pairs: a count, then each name and value with its length, all
/// lengths 32-bit; a value holding several is split at NULs into one pair each.
fn decode_headers(block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = || SpdyError::Protocol("a malformed header block".into());
    let mut at = 0usize;
    let word = |at: &mut usize| -> Result<usize, SpdyError> {
        let b = block.get(*at..*at + 4).ok_or_else(bad)?;
        *at += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(&mut at)?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = word(&mut at)?;
        let name = block.get(at..at + n).ok_or_else(bad)?;
        at += n;
        let n = word(&mut at)?;
        let value = block.get(at..at + n).ok_or_else(bad)?;
        at += n;
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        for v in value.split(|b| *b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(headers)
}

/// SPDY/3's preset dictionary for header compression (public for tests' clients).
pub fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        d.extend_from_slice(&(word.len() as u32).to_be_bytes());
        d.extend_from_slice(word.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
}

/// The words of SPDY/3's header dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1), each
/// preceded by its length as a 32-bit big-endian number in the dictionary itself.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
/// ... followed by these, without lengths.
const DICTIONARY_TAIL: &str = concat!(
    "10010120120220520630030230330430530630740240540640740840941041141241341441541641",
    "7502504505203 Non-Authoritative Information204 No Content301 Moved Permanently40",
    "0 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept O",
    "ct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,imag",
    "e/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/",
    "javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1",
    ",utf-,*,enq=0.",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        // Its Adler-32 is the dictionary id every SPDY/3 client's first header block names.
        let mut c = flate2::Compress::new(flate2::Compression::default(), true);
        let id = c.set_dictionary(&dictionary()).unwrap();
        assert_eq!(id, 0xe3c6_a7c2);
        assert_eq!(dictionary().len(), 1423);
    }

    /// A SYN_STREAM frame carrying `block` (already compressed) as its header block.
    fn syn_stream(id: u32, block: &[u8]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(block);
        let mut out = Vec::new();
        control(&mut out, SYN_STREAM, 0, &body);
        out
    }

    /// What a client's compressor makes of `raw`, with SPDY's dictionary.
    fn compressed(raw: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&dictionary()).unwrap();
        let mut out = Vec::with_capacity(raw.len() + 1024);
        c.compress_vec(raw, &mut out, FlushCompress::Sync).unwrap();
        out
    }

    /// Feeds `bytes` to a session (then ends the connection when `close`); checks that the
    /// session ends (no panic, no hang) and says how many streams it opened first.
    async fn ends_on(bytes: Vec<u8>, close: bool) -> usize {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut session = serve(server);
        let (_read, mut write) = tokio::io::split(client);
        write.write_all(&bytes).await.unwrap();
        if close {
            write.shutdown().await.unwrap();
        }
        let mut opened = 0;
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while session.streams.recv().await.is_some() {
                opened += 1;
            }
        })
        .await;
        assert!(ended.is_ok(), "the session did not end");
        opened
    }

    #[tokio::test]
    async fn hostile_frames_end_the_session_without_a_panic() {
        // Each ends it by itself, the connection still open.
        // Another SPDY version.
        let mut v2 = Vec::new();
        control(&mut v2, SYN_STREAM, 0, &[0; 10]);
        v2[1] = 2;
        assert_eq!(ends_on(v2, false).await, 0);
        // A frame of 16 MiB announced.
        assert_eq!(
            ends_on(vec![0, 0, 0, 1, 0, 0xff, 0xff, 0xff], false).await,
            0
        );
        // A header block that is not zlib.
        assert_eq!(ends_on(syn_stream(1, b"not zlib at all"), false).await, 0);
        // A zlib bomb: 1 MiB of headers from a few kilobytes.
        let mut bomb = 1u32.to_be_bytes().to_vec();
        bomb.extend_from_slice(&(1u32 << 20).to_be_bytes());
        bomb.extend(std::iter::repeat_n(b'a', 1 << 20));
        assert_eq!(ends_on(syn_stream(1, &compressed(&bomb)), false).await, 0);
        // A header block whose lengths point past its end.
        let lies = [1u32.to_be_bytes(), 1000u32.to_be_bytes()].concat();
        assert_eq!(ends_on(syn_stream(1, &compressed(&lies)), false).await, 0);
        // A short control frame (a PING without its id).
        let mut short = Vec::new();
        control(&mut short, PING, 0, &[1]);
        assert_eq!(ends_on(short, false).await, 0);
        // A good stream, then the connection just ends: the stream is handed over first.
        let good = [1u32.to_be_bytes(), 1u32.to_be_bytes()].concat();
        let mut ok = [&good[..], b"a", &1u32.to_be_bytes(), b"b"].concat();
        ok = syn_stream(1, &compressed(&ok));
        // (The connection ends as a client's that went away.)
        assert_eq!(ends_on(ok, true).await, 1);
    }

    #[test]
    fn header_blocks_decode_and_split_values_at_nuls() {
        let mut block = 2u32.to_be_bytes().to_vec();
        for (n, v) in [("StreamType", "error"), ("x", "a\0b")] {
            block.extend_from_slice(&(n.len() as u32).to_be_bytes());
            block.extend_from_slice(n.as_bytes());
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v.as_bytes());
        }
        let headers = decode_headers(&block).unwrap();
        assert_eq!(
            headers,
            [
                ("streamtype".to_string(), "error".to_string()),
                ("x".into(), "a".into()),
                ("x".into(), "b".into())
            ]
        );
        // Lengths past the end are refused, not read.
        let mut bad = 1u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&1000u32.to_be_bytes());
        assert!(decode_headers(&bad).is_err());
    }
}
