//! A real OCI registry on loopback for tests that pull images: `/usr/bin/docker-registry`
//! (Debian's `docker-registry` package, the CNCF distribution registry) serving a temporary
//! directory on 127.0.0.1 and a free port, killed when the fixture is dropped.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let registry = testkit::registry::LocalRegistry::start();
//! let image = registry.image("busybox:1"); // "127.0.0.1:PORT/busybox:1"
//! let digest = testkit::images::busybox_image(&image).await?;
//! # Ok(()) }
//! ```
//!
//! Loopback registries are plain HTTP, which Drover (like Docker) uses without being told.
//! [`LocalRegistry::start_with_basic_auth`] makes one that wants a username and password
//! (htpasswd), for tests of pull secrets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where the Debian package puts the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub struct LocalRegistry {
    /// `127.0.0.1:PORT`, the registry part of image references.
    pub address: String,
    /// The username and password it wants, if started with basic auth.
    pub credentials: Option<(String, String)>,
    dir: tempfile::TempDir,
    child: Child,
}

impl LocalRegistry {
    /// Starts an open registry. Panics (with the registry's log) if it cannot.
    pub fn start() -> LocalRegistry {
        Self::try_start(None).unwrap_or_else(|e| panic!("cannot start the test registry: {e:#}"))
    }

    /// Starts a registry that serves only `username` with `password` (HTTP basic auth).
    pub fn start_with_basic_auth(username: &str, password: &str) -> LocalRegistry {
        Self::try_start(Some((username.into(), password.into())))
            .unwrap_or_else(|e| panic!("cannot start the test registry: {e:#}"))
    }

    /// Starts an open registry listening on `bind` (e.g. `0.0.0.0`, for nodes in other
    /// network namespaces that reach this host through a bridge); `address` stays loopback.
    pub fn start_on(bind: &str) -> LocalRegistry {
        Self::try_start_on(bind, None)
            .unwrap_or_else(|e| panic!("cannot start the test registry: {e:#}"))
    }

    pub fn try_start(credentials: Option<(String, String)>) -> anyhow::Result<LocalRegistry> {
        Self::try_start_on("127.0.0.1", credentials)
    }

    pub fn try_start_on(
        bind: &str,
        credentials: Option<(String, String)>,
    ) -> anyhow::Result<LocalRegistry> {
        anyhow::ensure!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install the docker-registry package"
        );
        // The port is found free and then given to the registry: another process may take
        // it in between, so a registry that exits at once is started again on another.
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let auth = match &credentials {
                Some((username, password)) => {
                    // The registry reads bcrypt hashes only.
                    let hash = bcrypt::hash_with_result(password, 4)?
                        .format_for_version(bcrypt::Version::TwoA);
                    let htpasswd = dir.path().join("htpasswd");
                    std::fs::write(&htpasswd, format!("{username}:{hash}\n"))?;
                    format!(
                        "auth:\n  htpasswd:\n    realm: drover-test\n    path: {}\n",
                        htpasswd.display()
                    )
                }
                None => String::new(),
            };
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let address = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {bind}:{port}\n\
                     {auth}",
                    dir.path().join("data").display()
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot run {REGISTRY_BIN}"))?;
            let mut registry = LocalRegistry {
                address,
                credentials: credentials.clone(),
                dir,
                child,
            };
            match registry.wait_until_serving() {
                Ok(()) => return Ok(registry),
                // Dropping the registry kills it.
                Err(e) => last_error = Some(e.context(registry.log())),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    /// Waits until `GET /v2/` is answered (200, or 401 when it wants credentials).
    fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the registry exited ({status})");
            }
            if let Ok(status) = self.get_v2() {
                if status == 200 || status == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the registry did not answer on {} within 15s", self.address);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP status of `GET /v2/`.
    fn get_v2(&self) -> std::io::Result<u16> {
        let mut stream = TcpStream::connect(&self.address)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.address
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        // "HTTP/1.0 200 OK"
        let status = String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok());
        status.ok_or_else(|| std::io::Error::other("not an HTTP answer"))
    }

    /// A reference to `name` (`repo:tag`) in this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.address)
    }

    /// The file the registry serves blob `digest` from: tests overwrite it to make a registry
    /// that serves corrupt content.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(hex))
            .join(hex)
            .join("data")
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
