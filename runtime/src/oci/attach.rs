//! `kubectl attach` to a container's main process: the shim serves a Unix socket per
//! container where the node agent connects once per attach. Over it, the container's output
//! from then on goes out, and input (when the container has `stdin: true`) and terminal
//! resizes (with `tty: true`) come in.
//!
//! The socket speaks frames of a channel byte, a 32-bit big-endian length and the bytes, with
//! the channel numbers of Kubernetes' stream protocol: 0 stdin, 1 stdout, 2 stderr, 4 resize
//! (`{"Width":..,"Height":..}`), 255 end of stdin. A private protocol between two parts of
//! one program, so hand-written: it needs nothing more.
//!
//! The shim side ([`Attachments`], [`serve`]) is plain threads, as the shim is; the agent side
//! ([`read_frame`], [`write_frame`]) is async.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const RESIZE: u8 = 4;
pub const STDIN_END: u8 = 255;
/// A frame longer than this is a broken peer.
const MAX_FRAME: usize = 1 << 20;
/// An attached client that takes no output for this long is dropped, rather than stall the
/// container's output (and its log) behind it.
const SLOW_CLIENT: Duration = Duration::from_secs(5);

/// The directory of a node's attach sockets: beside libcontainer's state root (whose entries
/// are all containers), root's alone.
pub fn socket_dir(state_root: &Path) -> PathBuf {
    PathBuf::from(format!("{}-attach", state_root.display()))
}

/// Where the socket of container `id` is, named by a digest of the id, as a Unix socket's
/// path must stay within 108 bytes.
pub fn socket_path(state_root: &Path, id: &str) -> PathBuf {
    let digest = crate::images::sha256_digest(id.as_bytes());
    socket_dir(state_root).join(format!("{}.sock", &digest[7..23]))
}

/// One frame's bytes.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5);
    out.push(channel);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The container's input: a pipe to its stdin, or its terminal. None once closed.
pub type Input = Arc<Mutex<Option<std::fs::File>>>;

/// The clients attached now; output goes to each.
#[derive(Clone, Default)]
pub struct Attachments {
    clients: Arc<Mutex<Vec<UnixStream>>>,
}

impl Attachments {
    /// Sends output on `channel` to every client; drops those that fail or stall.
    pub fn send(&self, channel: u8, data: &[u8]) {
        let bytes = frame(channel, data);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain_mut(|c| c.write_all(&bytes).is_ok());
    }

    /// Ends every attachment (the container has exited and its output is all sent).
    pub fn close(&self) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        for c in clients.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// What the container was started with, for its attachments.
#[derive(Clone)]
pub struct Options {
    /// The container's input, when it has `stdin: true`.
    pub input: Option<Input>,
    /// `stdinOnce`: the first attachment's end of input closes the container's stdin.
    pub stdin_once: bool,
    /// The container's terminal (`tty: true`), for resizes.
    pub terminal: Option<Arc<std::fs::File>>,
}

/// Accepts attachments on `listener` until the process exits (a thread of its own).
pub fn serve(listener: UnixListener, attachments: Attachments, options: Options) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_write_timeout(Some(SLOW_CLIENT));
            let Ok(reader) = conn.try_clone() else {
                continue;
            };
            attachments
                .clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            let options = options.clone();
            std::thread::spawn(move || take_input(reader, options));
        }
    });
}

/// Reads one client's frames: its input to the container, its resizes to the terminal.
fn take_input(mut conn: UnixStream, options: Options) {
    let mut gave_input = false;
    while let Some((channel, data)) = read_frame_blocking(&mut conn) {
        match channel {
            STDIN => {
                if let Some(input) = &options.input {
                    gave_input = true;
                    let mut input = input.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(file) = input.as_mut() {
                        if file.write_all(&data).is_err() {
                            *input = None;
                        }
                    }
                }
            }
            RESIZE => {
                if let (Some(t), Some((columns, rows))) = (&options.terminal, size(&data)) {
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: columns,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let _ = rustix::termios::tcsetwinsize(t.as_ref(), size);
                }
            }
            STDIN_END => break,
            _ => {}
        }
    }
    // A terminal's end of input is what the user types; a pipe's is its closing.
    if options.stdin_once && gave_input && options.terminal.is_none() {
        if let Some(input) = &options.input {
            *input.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// Columns and rows from a resize's JSON.
pub fn size(data: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

fn read_frame_blocking(conn: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut data = vec![0u8; len];
    conn.read_exact(&mut data).ok()?;
    Some((head[0], data))
}

/// The agent's side: the next frame; None at the end of the attachment.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(conn: &mut R) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut data = vec![0u8; len];
    conn.read_exact(&mut data).await.ok()?;
    Some((head[0], data))
}

/// The agent's side: sends one frame.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    conn: &mut W,
    channel: u8,
    data: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    conn.write_all(&frame(channel, data)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reaches_the_container_and_output_every_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let input: Input = Arc::new(Mutex::new(Some(std::fs::File::from(
            std::os::fd::OwnedFd::from(writer),
        ))));
        let attachments = Attachments::default();
        let options = Options {
            input: Some(input.clone()),
            stdin_once: true,
            terminal: None,
        };
        serve(listener, attachments.clone(), options);
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(&frame(STDIN, b"typed\n")).unwrap();
        let mut line = vec![0u8; 6];
        let mut reader = reader;
        reader.read_exact(&mut line).unwrap();
        assert_eq!(line, b"typed\n");
        // Output goes to the attached client (once it is registered: the input above proves it).
        attachments.send(STDOUT, b"out");
        assert_eq!(
            read_frame_blocking(&mut client),
            Some((STDOUT, b"out".to_vec()))
        );
        // stdinOnce: the first attachment's end of input closes the container's stdin.
        client.write_all(&frame(STDIN_END, b"")).unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(input.lock().unwrap().is_none());
        attachments.close();
        assert_eq!(read_frame_blocking(&mut client), None);
    }

    #[test]
    fn socket_paths_fit_a_unix_socket() {
        let long_id = format!("{}-{}", "a".repeat(12), "c".repeat(63));
        let p = socket_path(Path::new("/run/drover-oci/0123456789abcdef"), &long_id);
        assert!(p.as_os_str().len() < 108, "{}", p.display());
    }
}
