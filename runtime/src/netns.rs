//! Sockets made inside a pod's network namespace. A Wasm pod has no process of its own, so
//! the agent opens its listening socket from a short-lived thread that has joined the pod's
//! namespace: a socket stays in the namespace it was made in, wherever it is used from, and
//! the agent's other threads never change namespace.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;

/// Runs `make` on a thread inside the network namespace at `netns` (a /run/netns file).
pub fn within<T: Send + 'static>(
    netns: &Path,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = std::fs::File::open(netns).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", netns.display()),
        )
    })?;
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        make()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A listening TCP socket on `addr`, inside `netns` when given.
pub async fn listen(netns: Option<&Path>, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let Some(netns) = netns else {
        return tokio::net::TcpListener::bind(addr).await;
    };
    let netns = netns.to_path_buf();
    let listener = tokio::task::spawn_blocking(move || {
        within(&netns, move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
    })
    .await
    .map_err(io::Error::other)??;
    tokio::net::TcpListener::from_std(listener)
}
