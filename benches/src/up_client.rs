//! What the benches that drive a `drover up` share: waiting for its credentials, and an HTTPS
//! client that trusts its CA with its admin token. (Included with `#[path]` by each bench
//! binary; the benches crate has no library.)

use std::path::Path;
use std::time::{Duration, Instant};

/// Waits (up to 60 s) until `drover up --data-dir DATA` has written its CA and admin token,
/// then returns a client for its API and the token.
pub async fn admin_client(data: &Path) -> anyhow::Result<(reqwest::Client, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !data.join("pki/admin.token").exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "drover up never wrote its certificates"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca = reqwest::Certificate::from_pem(&std::fs::read(data.join("pki/ca.crt"))?)?;
    let token = std::fs::read_to_string(data.join("pki/admin.token"))?
        .trim()
        .to_string();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .build()?;
    Ok((http, token))
}
