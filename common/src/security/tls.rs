//! TLS material from PEM files, as tonic server and client settings.
//!
//! Certificates and keys are read once, at start, from the files the
//! settings name; an unreadable or non-PEM file stops the binary with the
//! setting's name. The material is kept in memory (not the paths) so the
//! tests and the demo can hand over certificates they just generated.
//! Keys never appear in `Debug` output.
//!
//! rustls uses the aws-lc-rs provider, installed as the process default
//! before the first TLS configuration is built.

use std::fmt;
use std::sync::Once;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A certificate chain (PEM) and its private key (PEM).
#[derive(Clone)]
pub struct KeyPair {
    pub cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl KeyPair {
    pub fn new(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        KeyPair {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// Read the certificate and key files named by `cert_var` = `cert_path`
    /// and `key_var` = `key_path`.
    pub fn read(
        (cert_var, cert_path): (&str, &str),
        (key_var, key_path): (&str, &str),
    ) -> anyhow::Result<Self> {
        Ok(KeyPair {
            cert_pem: read_pem(cert_var, cert_path, "CERTIFICATE")?,
            key_pem: read_pem(key_var, key_path, "PRIVATE KEY")?,
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"***")
            .finish()
    }
}

/// Read a PEM file named by a setting; `kind` must appear in a
/// `-----BEGIN ...` line of it ("CERTIFICATE", "PRIVATE KEY").
pub fn read_pem(var: &str, path: &str, kind: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("{var}={path}: cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(kind));
    anyhow::ensure!(found, "{var}={path}: no PEM {kind} in it");
    Ok(pem)
}

/// A server's TLS: its own certificate and key, and for mutual TLS the CA
/// its clients' certificates must chain to.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub identity: KeyPair,
    /// `Some`: a client without a certificate from this CA fails the
    /// handshake.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// tonic's server settings (the handshake must finish within 10 s).
    pub fn config(&self) -> ServerTlsConfig {
        install_provider();
        let config = ServerTlsConfig::new()
            .identity(self.identity.identity())
            .timeout(std::time::Duration::from_secs(10));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// A client's TLS: the CA the server's certificate must chain to, and for
/// mutual TLS the client's own certificate and key.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub server_ca_pem: Vec<u8>,
    pub identity: Option<KeyPair>,
}

impl ClientTls {
    /// tonic's client settings. The server's name is checked against the
    /// URL's host (a DNS name or an IP address in its subjectAltName).
    pub fn config(&self) -> ClientTlsConfig {
        install_provider();
        let config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.server_ca_pem));
        match &self.identity {
            Some(identity) => config.identity(identity.identity()),
            None => config,
        }
    }
}

/// Make aws-lc-rs rustls's process default (a no-op once done, or when the
/// process already chose one).
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_print() {
        let pair = KeyPair::new("cert", "-----BEGIN PRIVATE KEY----- secret");
        let shown = format!(
            "{:?}",
            ServerTls {
                identity: pair,
                client_ca_pem: None
            }
        );
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn files_must_hold_the_pem_they_are_for() {
        let dir = std::env::temp_dir().join(format!("sagaflow-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let key = key.to_str().unwrap();
        assert!(read_pem("K", key, "PRIVATE KEY").is_ok());
        let e = read_pem("C", key, "CERTIFICATE").unwrap_err().to_string();
        assert_eq!(e, format!("C={key}: no PEM CERTIFICATE in it"));
        let e = read_pem("C", "/nonexistent/x.pem", "CERTIFICATE")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("C=/nonexistent/x.pem: cannot read"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
