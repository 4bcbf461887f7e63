//! A raw TLS handshake without a client certificate, to see what a server
//! that requires one answers (tests of the refusal).
//!
//! Through gRPC the answer is racy: under TLS 1.3 the client finishes its
//! side of the handshake and sends its request before the server has
//! judged the (missing) certificate, so the client may see the server's
//! alert or just a closed connection. Here nothing is sent after the
//! handshake, so the first read returns the server's verdict.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt as _;

/// Connect to `addr` over TLS as `server_name`, trusting `ca_pem`, with no
/// client certificate; return what the first read says (for a server that
/// requires a certificate: the alert it sent, e.g. "received fatal alert:
/// CertificateRequired").
pub async fn without_certificate(
    addr: &str,
    server_name: &str,
    ca_pem: &[u8],
) -> anyhow::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return Ok(e.to_string()),
    };
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut byte)).await;
    Ok(match read {
        Err(_) => "no answer within 10 s".to_owned(),
        Ok(Ok(n)) => format!("read {n} bytes"),
        Ok(Err(e)) => e.to_string(),
    })
}
