//! Container log files, in the kubelet's CRI format: one line per line of output,
//! `<RFC 3339 time with nanoseconds> <stdout|stderr> <F|P> <text>`, so `kubectl logs` can
//! show timestamps and tell the streams apart. A file that grows past its limit is rotated
//! once (`<file>.1`), as the kubelet's `containerLogMaxSize` does.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Rotate a log file once it is larger than this.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

struct State {
    file: Option<File>,
    size: u64,
    /// Output not yet ended by a newline, per stream.
    partial: [Vec<u8>; 2],
}

/// One container run's log file. Cheap to clone; writers from both streams share it.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile").field("path", &self.path).finish()
    }
}

fn timestamp() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

impl LogFile {
    /// Creates (or appends to) the log file at `path`, making its directory.
    pub fn create(path: &Path) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(State {
                file: Some(file),
                size,
                partial: [Vec::new(), Vec::new()],
            })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends output of one stream; whole lines are written, the rest waits for its newline.
    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut st = self.lock();
        let idx = stream as usize;
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut st.partial[idx]);
            line.extend_from_slice(&bytes[..nl]);
            self.append(&mut st, stream, &line, true);
            bytes = &bytes[nl + 1..];
        }
        st.partial[idx].extend_from_slice(bytes);
        // A very long line without a newline is written as a partial record.
        if st.partial[idx].len() >= 16 * 1024 {
            let line = std::mem::take(&mut st.partial[idx]);
            self.append(&mut st, stream, &line, false);
        }
    }

    /// Writes what is left of unfinished lines (when the container has exited).
    pub fn finish(&self) {
        let mut st = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut st.partial[stream as usize]);
            if !line.is_empty() {
                self.append(&mut st, stream, &line, true);
            }
        }
        if let Some(f) = st.file.as_mut() {
            let _ = f.flush();
        }
    }

    fn append(&self, st: &mut State, stream: Stream, line: &[u8], full: bool) {
        if st.size > MAX_LOG_BYTES {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, &rotated);
            st.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
            st.size = 0;
        }
        let mut record = format!(
            "{} {} {} ",
            timestamp(),
            stream.name(),
            if full { "F" } else { "P" }
        )
        .into_bytes();
        record.extend_from_slice(line);
        record.push(b'\n');
        if let Some(f) = st.file.as_mut() {
            if f.write_all(&record).is_ok() {
                st.size += record.len() as u64;
            }
        }
    }

    /// A writer for one stream (what the runtime hands the program as stdout or stderr).
    pub fn writer(&self, stream: Stream) -> LogWriter {
        LogWriter {
            log: self.clone(),
            stream,
        }
    }
}

/// One stream of a [`LogFile`], as an `AsyncWrite`.
#[derive(Clone)]
pub struct LogWriter {
    log: LogFile,
    stream: Stream,
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Local file appends of a few KiB: written in place rather than on a blocking thread.
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One line of a log file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub timestamp: String,
    pub stream: String,
    pub text: String,
    /// Ends a line (F) rather than continuing in the next record (P).
    pub full: bool,
}

pub fn parse_line(raw: &str) -> Option<LogLine> {
    let mut parts = raw.splitn(4, ' ');
    let timestamp = parts.next()?.to_string();
    let stream = parts.next()?.to_string();
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("").to_string();
    Some(LogLine {
        timestamp,
        stream,
        text,
        full: tag != "P",
    })
}

/// The lines of a log file (with its rotated predecessor first), as `kubectl logs` shows
/// them: the text, optionally after its timestamp; only the last `tail` if given.
pub fn read(path: &Path, timestamps: bool, tail: Option<usize>) -> std::io::Result<Vec<String>> {
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    let mut lines = Vec::new();
    for p in [PathBuf::from(rotated), path.to_path_buf()] {
        let file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && p != path => continue,
            Err(e) => return Err(e),
        };
        for raw in BufReader::new(file).lines() {
            if let Some(l) = parse_line(&raw?) {
                lines.push(render(&l, timestamps));
            }
        }
    }
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok(lines)
}

pub fn render(l: &LogLine, timestamps: bool) -> String {
    let end = if l.full { "\n" } else { "" };
    if timestamps {
        format!("{} {}{end}", l.timestamp, l.text)
    } else {
        format!("{}{end}", l.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_whole_and_read_back_with_or_without_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = LogFile::create(&path).unwrap();
        log.write(Stream::Stdout, b"hello ");
        log.write(Stream::Stderr, b"oops\n");
        log.write(Stream::Stdout, b"world\nsecond\nunfinished");
        log.finish();
        let lines = read(&path, false, None).unwrap();
        assert_eq!(
            lines,
            vec!["oops\n", "hello world\n", "second\n", "unfinished\n"]
        );
        let tail = read(&path, true, Some(1)).unwrap();
        assert_eq!(tail.len(), 1);
        assert!(tail[0].ends_with("Z unfinished\n"), "{tail:?}");
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.lines().next().unwrap().contains(" stderr F oops"));
    }
}
