//! Mutual TLS between members, and for the admin's debug client: every peer connection is TLS
//! 1.2+ where both sides present a certificate signed by the cluster's CA, and the certificate
//! names this cluster (its subject's organization is the cluster id). A connection without
//! such a certificate fails in the handshake, before any request is read.
//!
//! The store does not make certificates (the API server's `pki` does, with the cluster CA);
//! it loads them from the data dir (`pki/ca.crt`, `pki/member.crt`, `pki/member.key`) and
//! checks them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The member's certificates, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberCredentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

const CA_FILE: &str = "pki/ca.crt";
const CERT_FILE: &str = "pki/member.crt";
const KEY_FILE: &str = "pki/member.key";

fn files(data_dir: &Path) -> [PathBuf; 3] {
    [CA_FILE, CERT_FILE, KEY_FILE].map(|f| data_dir.join(f))
}

impl MemberCredentials {
    /// The credentials kept in `data_dir`, if the member has them.
    pub fn load(data_dir: &Path) -> Result<Option<MemberCredentials>, String> {
        let [ca, cert, key] = files(data_dir);
        if !cert.exists() {
            return Ok(None);
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        Ok(Some(MemberCredentials {
            ca_pem: read(&ca)?,
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
        }))
    }

    /// Keeps the credentials in `data_dir/pki` (the directory 0700, the files 0600). The
    /// certificate, whose presence says the member has credentials, is written last.
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        let [ca, cert, key] = files(data_dir);
        for (path, text) in [
            (ca, &self.ca_pem),
            (key, &self.key_pem),
            (cert, &self.cert_pem),
        ] {
            crate::files::write_private(&path, text.as_bytes())?;
        }
        Ok(())
    }
}

/// The TLS settings of one member (or of a debug client holding a member's credentials).
#[derive(Clone)]
pub struct PeerTls {
    pub cluster_id: String,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    pub fn new(creds: &MemberCredentials, cluster_id: &str) -> Result<PeerTls, String> {
        let mut roots = RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut creds.ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| format!("bad cluster CA certificate: {e}"))?;
            roots
                .add(ca)
                .map_err(|e| format!("bad cluster CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no cluster CA certificate in pki/ca.crt".into());
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut creds.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad member certificate: {e}"))?;
        let key: PrivateKeyDer<'static> =
            rustls_pemfile::private_key(&mut creds.key_pem.as_bytes())
                .map_err(|e| format!("bad member key: {e}"))?
                .ok_or("no private key in pki/member.key")?;
        // Our own certificate must be one the others accept.
        let leaf = chain.first().ok_or("no certificate in pki/member.crt")?;
        check_cluster(leaf, cluster_id).map_err(|e| format!("pki/member.crt: {e}"))?;

        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("cannot check client certificates: {e}"))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(OfCluster {
                inner: clients,
                cluster_id: cluster_id.to_string(),
            }))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("bad member certificate: {e}"))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let servers =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| format!("cannot check server certificates: {e}"))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OfCluster {
                inner: servers,
                cluster_id: cluster_id.to_string(),
            }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("bad member certificate: {e}"))?;
        Ok(PeerTls {
            cluster_id: cluster_id.to_string(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Whether a certificate names `cluster_id` as its subject's organization.
pub fn check_cluster(cert: &CertificateDer<'_>, cluster_id: &str) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let named = parsed
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .any(|o| o == cluster_id);
    if named {
        Ok(())
    } else {
        Err(format!(
            "the certificate is not for cluster {cluster_id} (its subject is {})",
            parsed.subject()
        ))
    }
}

/// A verifier that accepts what `inner` (WebPKI against the cluster CA) accepts and only if the
/// certificate names this cluster: a certificate of another cluster signed by a shared CA (an
/// operator reusing one) still cannot take part.
#[derive(Debug)]
struct OfCluster<V: ?Sized> {
    inner: Arc<V>,
    cluster_id: String,
}

fn refused(e: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(std::io::Error::other(e)),
    )))
}

impl ClientCertVerifier for OfCluster<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_cluster(end_entity, &self.cluster_id).map_err(refused)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ServerCertVerifier for OfCluster<rustls::client::WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_cluster(end_entity, &self.cluster_id).map_err(refused)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
