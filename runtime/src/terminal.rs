//! A pseudo-terminal's controlling side, for `kubectl exec -t`: read and written
//! asynchronously, and resized as the client's terminal is. The command runs on the other
//! side: in a container, a terminal libcontainer makes in the container's devpts and hands over
//! through a console socket ([`receive`]); in tests, one of the host's ([`Terminal::open`]).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// The controlling side of a pseudo-terminal. Reads and writes go through two descriptors of
/// it, each a blocking file on tokio's blocking threads (`tokio::fs::File`): registering the
/// descriptor with the reactor would take `unsafe`, which this workspace forbids, and a file
/// does one operation at a time, so reading and writing each get their own.
pub struct Terminal {
    reader: Mutex<tokio::fs::File>,
    writer: Mutex<tokio::fs::File>,
    control: OwnedFd,
}

impl Terminal {
    /// Takes a terminal's controlling side.
    pub fn new(controller: OwnedFd) -> io::Result<Terminal> {
        let reader = std::fs::File::from(controller.try_clone()?);
        let writer = std::fs::File::from(controller.try_clone()?);
        Ok(Terminal {
            reader: Mutex::new(tokio::fs::File::from_std(reader)),
            writer: Mutex::new(tokio::fs::File::from_std(writer)),
            control: controller,
        })
    }

    /// A new terminal of the host's: its controlling side and the device for the command.
    pub fn open() -> io::Result<(Terminal, OwnedFd)> {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&controller)?;
        unlockpt(&controller)?;
        let name = ptsname(&controller, Vec::new())?;
        let device = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok((Terminal::new(controller)?, device))
    }

    /// Reads what the command wrote; 0 once every process on the other side has closed it
    /// (Linux answers EIO then).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.reader.lock().await.read(buf).await {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => Ok(0),
            other => other,
        }
    }

    /// Writes all of `data` as typed input.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let mut writer = self.writer.lock().await;
        writer.write_all(data).await?;
        writer.flush().await
    }

    /// Sets the terminal's size; the command gets SIGWINCH.
    pub fn resize(&self, columns: u16, rows: u16) -> io::Result<()> {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.control, size).map_err(io::Error::from)
    }
}

/// Waits on `listener` (bound at `path`, an OCI console socket) for one connection and takes
/// the terminal it passes (SCM_RIGHTS).
pub async fn receive(listener: &tokio::net::UnixListener, path: &Path) -> io::Result<Terminal> {
    let (stream, _) = listener.accept().await?;
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || take_fd(&stream)) {
            Ok(Some(fd)) => return Terminal::new(fd),
            Ok(None) => return Err(no_terminal(path)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// [`receive`] for a thread that may block (the shim): the terminal's controlling side.
pub fn receive_blocking(
    listener: &std::os::unix::net::UnixListener,
    path: &Path,
) -> io::Result<OwnedFd> {
    let (stream, _) = listener.accept()?;
    take_fd(&stream)?.ok_or_else(|| no_terminal(path))
}

fn no_terminal(path: &Path) -> io::Error {
    io::Error::other(format!("{} received no terminal", path.display()))
}

/// The descriptor a console socket's one message carries.
fn take_fd(stream: impl std::os::fd::AsFd) -> io::Result<Option<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut name = [0u8; 256];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        stream,
        &mut [io::IoSliceMut::new(&mut name)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let fd = ancillary.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok(fd)
}
