//! A connection to the API server: its URL, the cluster CA that signed the server's
//! certificate, and a bearer token (a node's, or the control loops' admin token), given as is
//! or in a file read again every minute.

use kube::config::AuthInfo;

/// A client for `urls` (comma-separated: the members of an HA control plane, tried in turn
/// when one cannot be reached; see [`crate::failover`]) that trusts `ca_pem` and presents
/// `token`.
pub fn connect(urls: &str, ca_pem: &str, token: &str) -> anyhow::Result<kube::Client> {
    let urls: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let one = |url: &str| {
        client(
            url,
            ca_pem,
            AuthInfo {
                token: Some(secrecy::SecretString::from(token.to_string())),
                ..Default::default()
            },
            urls.len() > 1,
        )
    };
    match urls.as_slice() {
        [] => anyhow::bail!("--server names no URL"),
        [url] => one(url),
        many => {
            let servers = many
                .iter()
                .map(|url| Ok((url.to_string(), one(url)?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(kube::Client::new(
                crate::failover::Failover::new(servers),
                "default",
            ))
        }
    }
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
        false,
    )
}

/// With `several` servers, a dead one must be passed over quickly: connecting gives up after
/// 3 s instead of kube's 30.
fn client(
    url: &str,
    ca_pem: &str,
    auth_info: AuthInfo,
    several: bool,
) -> anyhow::Result<kube::Client> {
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
    if several {
        config.connect_timeout = Some(std::time::Duration::from_secs(3));
    }
    Ok(kube::Client::try_from(config)?)
}
