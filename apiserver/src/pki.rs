//! The cluster's certificates and the admin credential, made at first start and kept in the
//! data dir (`pki/`): a cluster CA, a serving certificate for the API signed by it, and an admin
//! bearer token; plus a kubeconfig that the real kubectl uses as it is.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub admin_token: String,
}

/// Replaces `path` atomically with `contents`, readable by its owner only (see
/// [`raft_store::files::write_private`]): a crash leaves the old file or the new, never a
/// truncated key or token.
pub fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    raft_store::files::write_private(path, contents.as_bytes())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The CA's parameters. Rebuilt identically wherever a member signs with the shared CA key, so
/// the certificates it signs name the CA exactly as the CA certificate does.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "drover-ca");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn cert_err(e: rcgen::Error) -> String {
    format!("cannot make certificates: {e}")
}

/// What every member of a cluster shares: the CA, the admin token and the secret half of the
/// join token (see [`join_token`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub admin_token: String,
    pub join_secret: String,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl ClusterSecrets {
    /// A new CA, admin token and join secret, for a new cluster.
    pub fn generate() -> Result<ClusterSecrets, String> {
        Self::generate_with_join_secret(random_hex(16))
    }

    /// A new CA and admin token for a new cluster whose join secret the operator chose (the
    /// shared secret of members started together).
    pub fn generate_with_join_secret(join_secret: String) -> Result<ClusterSecrets, String> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = ca_params()
            .map_err(cert_err)?
            .self_signed(&key)
            .map_err(cert_err)?;
        Ok(ClusterSecrets {
            ca_pem: cert.pem(),
            ca_key_pem: key.serialize_pem(),
            admin_token: random_hex(32),
            join_secret,
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, String> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(cert_err)?;
        Ok(Issuer::new(ca_params().map_err(cert_err)?, ca_key))
    }

    /// A member certificate for the peer protocol: a client and server certificate for
    /// `peer_ip` (and loopback), whose subject names the cluster (checked by every member).
    pub fn member_credentials(
        &self,
        cluster_id: &str,
        peer_ip: IpAddr,
    ) -> Result<raft_store::MemberCredentials, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "drover-member");
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let loopback = IpAddr::from([127, 0, 0, 1]);
        params.subject_alt_names = vec![SanType::IpAddress(peer_ip)];
        if peer_ip != loopback {
            params.subject_alt_names.push(SanType::IpAddress(loopback));
        }
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(cert_err)?;
        Ok(raft_store::MemberCredentials {
            ca_pem: self.ca_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl ClusterSecrets {
    /// A serving certificate for the node `name`'s endpoint (logs, exec, metrics), as the
    /// kubelet's serving certificate: subject `system:node:<name>` in `system:nodes`, its only
    /// name the DNS name `<name>`. The API server checks a node by that name, never by the
    /// address the node publishes, so a node cannot stand in for another.
    pub fn node_serving_credentials(&self, name: &str) -> Result<(String, String), String> {
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(cert_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("system:node:{name}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(cert_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The TLS settings the API server reaches nodes with: only the cluster CA is trusted, and a
/// node is named by its node name (see [`ClusterSecrets::node_serving_credentials`]).
pub fn node_client_tls(ca_pem: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| format!("bad CA certificate: {e}"))?)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A rustls server configuration serving `chain_pem` (certificates, leaf first) with
/// `key_pem`, offering `alpn`.
fn serving_config(
    chain_pem: &str,
    key_pem: &str,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad serving certificate: {e}"))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("bad serving key: {e}"))?
        .ok_or("no serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("bad serving certificate: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The rustls configuration a node serves its endpoint with.
pub fn node_server_tls(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, String> {
    serving_config(cert_pem, key_pem, &[b"http/1.1"])
}

/// The SHA-256 of the CA certificate (its DER), in hex: how a joining server recognises the
/// cluster before it trusts anything the cluster sends (kubeadm's discovery-token-ca-cert-hash).
pub fn ca_hash(ca_pem: &str) -> Result<String, String> {
    let der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .next()
        .ok_or("no CA certificate")?
        .map_err(|e| format!("bad CA certificate: {e}"))?;
    Ok(hex(ring::digest::digest(
        &ring::digest::SHA256,
        der.as_ref(),
    )
    .as_ref()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token a new server joins with: `drover1:sha256:<CA hash>:<join secret>`. The hash lets
/// the new server check that it talks to this cluster; the secret proves to the cluster that
/// the operator sent it. Whoever holds it can become a member: keep it as the CA key is kept.
pub fn join_token(secrets: &ClusterSecrets) -> Result<String, String> {
    Ok(format!(
        "{JOIN_TOKEN_PREFIX}{}:{}",
        ca_hash(&secrets.ca_pem)?,
        secrets.join_secret
    ))
}

const JOIN_TOKEN_PREFIX: &str = "drover1:sha256:";
const SHARED_SECRET_PREFIX: &str = "drover1:secret:";

/// A join token taken apart. A full token (`drover token server`) pins the cluster's CA by its
/// hash; a shared secret (`drover token generate`, given to every member of a cluster that
/// forms together, before any CA exists) has no hash: the member it joins through must prove
/// that it knows the secret before the CA it shows is trusted (`join::discover_ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: Option<String>,
    pub secret: String,
}

/// A new shared secret for a cluster formed by members started together: 256 random bits.
pub fn new_shared_secret() -> String {
    format!("{SHARED_SECRET_PREFIX}{}", random_hex(32))
}

/// The least a shared secret may hold: it is the only thing a member proves, and a proof can be
/// replayed against guesses offline, so it must be beyond guessing (128 bits).
const MIN_SECRET_HEX: usize = 32;

pub fn parse_join_token(token: &str) -> Result<JoinToken, String> {
    let bad = || {
        "not a Drover join token (expected drover1:sha256:<64 hex digits>:<secret>, as `drover \
         token server` prints it, or drover1:secret:<hex>, as `drover token generate` prints it)"
            .to_string()
    };
    let token = token.trim();
    if let Some(secret) = token.strip_prefix(SHARED_SECRET_PREFIX) {
        if secret.len() < MIN_SECRET_HEX || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the shared secret must be at least {MIN_SECRET_HEX} hex digits; make one with \
                 `drover token generate`"
            ));
        }
        return Ok(JoinToken {
            ca_hash: None,
            secret: secret.to_string(),
        });
    }
    let rest = token.strip_prefix(JOIN_TOKEN_PREFIX).ok_or_else(bad)?;
    let (hash, secret) = rest.split_once(':').ok_or_else(bad)?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
        return Err(bad());
    }
    Ok(JoinToken {
        ca_hash: Some(hash.to_ascii_lowercase()),
        secret: secret.to_string(),
    })
}

const PROPOSED_FILE: &str = "pki/cluster-secrets.json";

impl ClusterSecrets {
    /// Keeps the secrets a new cluster's first member made (0600) until the store has them:
    /// its member certificate is signed by this CA, so a crash before they are stored must not
    /// lose the CA key.
    pub fn save_proposed(&self, data_dir: &Path) -> Result<(), String> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let text = serde_json::json!({
            "ca": self.ca_pem, "caKey": self.ca_key_pem, "token": self.admin_token,
            "joinSecret": self.join_secret,
        })
        .to_string();
        write_private(&data_dir.join(PROPOSED_FILE), &text)
    }

    /// The secrets [`ClusterSecrets::save_proposed`] kept, if the store may not have them yet.
    pub fn load_proposed(data_dir: &Path) -> Result<Option<ClusterSecrets>, String> {
        let path = data_dir.join(PROPOSED_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
        let field = |f: &str| {
            v[f].as_str()
                .map(String::from)
                .ok_or_else(|| format!("{} has no {f}", path.display()))
        };
        Ok(Some(ClusterSecrets {
            ca_pem: field("ca")?,
            ca_key_pem: field("caKey")?,
            admin_token: field("token")?,
            join_secret: field("joinSecret")?,
        }))
    }

    /// Forgets the kept secrets once the store has them.
    pub fn forget_proposed(data_dir: &Path) {
        let _ = std::fs::remove_file(data_dir.join(PROPOSED_FILE));
    }
}

/// The names the API's serving certificate carries: loopback, the member's own addresses
/// (`addresses`; 0.0.0.0 is left out) and the `kubernetes` Service's address and DNS names,
/// which in-cluster clients dial (kube-apiserver's certificate names the same).
pub fn serving_names(addresses: &[IpAddr]) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1"].map(String::from).to_vec();
    let service_ip = IpAddr::V4(crate::admission::API_SERVICE_IP);
    for ip in addresses.iter().chain([&service_ip]) {
        if !ip.is_unspecified() {
            names.push(ip.to_string());
        }
    }
    names.extend(
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from),
    );
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The file beside the serving certificate that lists the names it was made for.
const HOSTS_FILE: &str = "apiserver.hosts";

/// The PKI this member already made, if it made one for `hosts` (restarts need no store to
/// serve TLS). A certificate made for other names (the member's address changed, or it
/// predates a name) is not used: the caller makes a new one.
pub fn load(data_dir: &Path, hosts: &[String]) -> Result<Option<Pki>, String> {
    let dir = data_dir.join("pki");
    let files = ["ca.crt", "apiserver.crt", "apiserver.key", "admin.token"].map(|f| dir.join(f));
    if !files.iter().all(|f| f.exists()) {
        return Ok(None);
    }
    let made_for = std::fs::read_to_string(dir.join(HOSTS_FILE)).unwrap_or_default();
    if made_for != hosts.join("\n") {
        tracing::info!(
            "the API's serving certificate names {:?}; a new one names {hosts:?}",
            made_for.lines().collect::<Vec<_>>()
        );
        return Ok(None);
    }
    let admin_token = read(&files[3])?.trim().to_string();
    // Tokens are signed with a key derived from it: an empty or cut one would make them
    // forgeable, so it is refused rather than used.
    if admin_token.len() < 32 {
        return Err(format!(
            "{} is damaged (the admin token is too short); restore it from another member's data dir",
            files[3].display()
        ));
    }
    Ok(Some(Pki {
        ca_pem: read(&files[0])?,
        cert_pem: read(&files[1])?,
        key_pem: read(&files[2])?,
        admin_token,
    }))
}

/// Makes this member's serving certificate for `hosts`, signed by the cluster CA, and keeps it
/// with the CA certificate and token in `data_dir/pki` (0600).
pub fn create(data_dir: &Path, hosts: &[String], secrets: &ClusterSecrets) -> Result<Pki, String> {
    let dir = data_dir.join("pki");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let issuer = secrets.issuer()?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "drover-apiserver");
    for host in hosts {
        params.subject_alt_names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(cert_err)?),
        });
    }
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    let pki = Pki {
        ca_pem: secrets.ca_pem.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        admin_token: secrets.admin_token.clone(),
    };
    write_private(&dir.join("ca.crt"), &pki.ca_pem)?;
    write_private(&dir.join("apiserver.crt"), &pki.cert_pem)?;
    write_private(&dir.join("apiserver.key"), &pki.key_pem)?;
    write_private(&dir.join("admin.token"), &pki.admin_token)?;
    write_private(&dir.join(HOSTS_FILE), &hosts.join("\n"))?;
    Ok(pki)
}

/// A kubeconfig for the admin, pointing at `server` (an https URL).
pub fn kubeconfig(pki: &Pki, server: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: drover\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: drover-admin\n  user:\n    token: {token}\n\
         contexts:\n- name: drover\n  context:\n    cluster: drover\n    user: drover-admin\n\
         current-context: drover\n",
        token = pki.admin_token
    )
}

/// Writes the admin kubeconfig to `path` (0600) and returns the path.
pub fn write_kubeconfig(pki: &Pki, server: &str, path: &Path) -> Result<PathBuf, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    write_private(path, &kubeconfig(pki, server))?;
    Ok(path.to_path_buf())
}

/// The rustls configuration that serves the API certificate, offering HTTP/2 and HTTP/1.1.
/// The CA goes after the leaf: a joining server finds in it the CA its token names.
pub fn server_tls(pki: &Pki) -> Result<rustls::ServerConfig, String> {
    let chain = format!("{}\n{}", pki.cert_pem.trim_end(), pki.ca_pem);
    serving_config(&chain, &pki.key_pem, &[b"h2", b"http/1.1"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_are_full_or_a_shared_secret_beyond_guessing() {
        let shared = new_shared_secret();
        let parsed = parse_join_token(&format!("{shared}\n")).unwrap();
        assert_eq!(parsed.ca_hash, None);
        assert_eq!(parsed.secret.len(), 64);
        let full = format!("drover1:sha256:{}:{}", "AB".repeat(32), "s3cret");
        assert_eq!(
            parse_join_token(&full).unwrap(),
            JoinToken {
                ca_hash: Some("ab".repeat(32)),
                secret: "s3cret".into()
            }
        );
        for bad in [
            "drover1:secret:abcd",
            "drover1:secret:zz000000000000000000000000000000",
            "drover1:sha256:abc:secret",
            "k10something",
            "",
        ] {
            assert!(parse_join_token(bad).is_err(), "{bad:?} was taken");
        }
    }
}
