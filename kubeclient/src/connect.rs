//! A connection to the API server: its URL, the cluster CA that signed the server's
//! certificate, and a bearer token (a node's, or the control loops' admin token), given as is
//! or in a file read again every minute.

use kube::config::AuthInfo;

/// A client for `url` that trusts `ca_pem` and presents `token`.
pub fn connect(url: &str, ca_pem: &str, token: &str) -> anyhow::Result<kube::Client> {
    client(
        url,
        ca_pem,
        AuthInfo {
            token: Some(secrecy::SecretString::from(token.to_string())),
            ..Default::default()
        },
    )
}

/// A client for `url` that trusts `ca_pem` and presents the token in the file `token_file`,
/// read again every minute (kube's token files): a credential replaced in the file is taken
/// without a restart. The file must hold the token alone, without a newline.
pub fn connect_with_token_file(
    url: &str,
    ca_pem: &str,
    token_file: &std::path::Path,
) -> anyhow::Result<kube::Client> {
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", token_file.display()))?;
    anyhow::ensure!(
        !token.is_empty() && token == token.trim(),
        "{} must hold the token alone, without spaces or newlines",
        token_file.display()
    );
    client(
        url,
        ca_pem,
        AuthInfo {
            token_file: Some(token_file.display().to_string()),
            ..Default::default()
        },
    )
}

fn client(url: &str, ca_pem: &str, auth_info: AuthInfo) -> anyhow::Result<kube::Client> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--server {url:?} is not a URL: {e}"))?;
    let mut config = kube::Config::new(uri);
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("the CA file is not PEM certificates: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "the CA file holds no certificate");
    config.root_cert = Some(certs);
    config.auth_info = auth_info;
    config.read_timeout = None; // watches stay open
    Ok(kube::Client::try_from(config)?)
}
