//! A connection to the API server: its URL, the cluster CA that signed the server's
//! certificate, and a bearer token (a node's, or the control loops' admin token).

use kube::config::AuthInfo;

/// A client for `url` that trusts `ca_pem` and presents `token`.
pub fn connect(url: &str, ca_pem: &str, token: &str) -> anyhow::Result<kube::Client> {
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
    config.auth_info = AuthInfo {
        token: Some(secrecy::SecretString::from(token.to_string())),
        ..Default::default()
    };
    config.read_timeout = None; // watches stay open
    Ok(kube::Client::try_from(config)?)
}
