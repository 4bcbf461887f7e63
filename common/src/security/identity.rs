//! Pinning the client identity a participant accepts.
//!
//! The TLS handshake proves a client holds a certificate from the client
//! CA. That is not enough: the same CA signs every participant's own
//! certificate, and may sign others. So each call is also checked here: the
//! client certificate must carry a DNS subjectAltName equal to the one
//! allowed identity (`SAGAFLOW_ALLOWED_CLIENT`, default
//! `sagaflow-orchestrator`), compared without regard to ASCII case. The
//! subject's common name is not consulted: subjectAltName is where names
//! belong (RFC 6125), and one rule leaves nothing to guess.
//!
//! A call from another identity is `PERMISSION_DENIED` naming what the
//! certificate says (a few names, each shortened) and who is allowed.

use tonic::service::Interceptor;
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// The identity allowed to command participants unless configured.
pub const DEFAULT_CLIENT: &str = "sagaflow-orchestrator";

/// Validate an identity setting: a DNS name (letters, digits, `-`, `.`),
/// at most 253 characters; returned in lower case.
pub fn parse_identity(var: &str, value: &str) -> anyhow::Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    anyhow::ensure!(
        ok,
        "{var} must be a DNS name (letters, digits, '-', '.'; at most 253 characters)"
    );
    Ok(value.to_ascii_lowercase())
}

/// The DNS subjectAltNames of a DER certificate.
pub fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No client certificate reached the service (not over mutual TLS).
    NoCertificate,
    /// The certificate could not be read.
    Unreadable(String),
    /// The certificate names someone else.
    OtherIdentity { names: Vec<String> },
}

/// Decide on the leaf certificate (DER) a call came with.
pub fn check(leaf: Option<&[u8]>, allowed: &str) -> Result<(), Refusal> {
    let der = leaf.ok_or(Refusal::NoCertificate)?;
    let names = dns_names(der).map_err(Refusal::Unreadable)?;
    if names.iter().any(|n| n.eq_ignore_ascii_case(allowed)) {
        Ok(())
    } else {
        Err(Refusal::OtherIdentity { names })
    }
}

/// Names shown in a refusal, and the longest shown of each.
const SHOWN_NAMES: usize = 3;
const SHOWN_LEN: usize = 64;

impl Refusal {
    /// The one conversion to a status.
    pub fn into_status(self, allowed: &str) -> Status {
        let why = match self {
            Refusal::NoCertificate => "the call came without a client certificate".to_owned(),
            Refusal::Unreadable(e) => e,
            Refusal::OtherIdentity { names } if names.is_empty() => {
                "the client certificate has no DNS subjectAltName".to_owned()
            }
            Refusal::OtherIdentity { names } => {
                let mut shown: Vec<String> = names
                    .iter()
                    .take(SHOWN_NAMES)
                    .map(|n| format!("{:?}", n.chars().take(SHOWN_LEN).collect::<String>()))
                    .collect();
                if names.len() > SHOWN_NAMES {
                    shown.push(format!("and {} more", names.len() - SHOWN_NAMES));
                }
                format!("the client certificate names {}", shown.join(", "))
            }
        };
        Status::permission_denied(format!(
            "client identity: {why}; only {allowed} may call this service"
        ))
    }
}

/// A server interceptor enforcing the pin on every call of the service it
/// wraps; [`ClientPin::Off`] lets everything through (insecure mode).
#[derive(Debug, Clone)]
pub enum ClientPin {
    Off,
    Only(String),
}

impl Interceptor for ClientPin {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let ClientPin::Only(allowed) = self else {
            return Ok(request);
        };
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        match check(leaf, allowed) {
            Ok(()) => Ok(request),
            Err(refusal) => {
                let status = refusal.into_status(allowed);
                tracing::warn!(reason = status.message(), "call refused");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: &str) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_allowed_name_in_the_subject_alt_name_passes_in_any_case() {
        let der = cert(&["other.example", "Sagaflow-Orchestrator"], "x");
        assert_eq!(check(Some(&der), "sagaflow-orchestrator"), Ok(()));
    }

    #[test]
    fn another_name_is_refused_and_named() {
        let der = cert(&["sagaflow-payment", "127.0.0.1"], "sagaflow-payment");
        let refusal = check(Some(&der), "sagaflow-orchestrator").unwrap_err();
        assert_eq!(
            refusal,
            Refusal::OtherIdentity {
                names: vec!["sagaflow-payment".into()]
            }
        );
        let status = refusal.into_status("sagaflow-orchestrator");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "client identity: the client certificate names \"sagaflow-payment\"; \
             only sagaflow-orchestrator may call this service"
        );
    }

    #[test]
    fn the_common_name_alone_does_not_count() {
        let der = cert(&[], "sagaflow-orchestrator");
        let status = check(Some(&der), "sagaflow-orchestrator")
            .unwrap_err()
            .into_status("sagaflow-orchestrator");
        assert!(
            status.message().contains("no DNS subjectAltName"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_refusal_shows_a_bounded_part_of_the_names() {
        let long = "a".repeat(200);
        let der = cert(&[&long, "b", "c", "d", "e"], "x");
        let status = check(Some(&der), "sagaflow-orchestrator")
            .unwrap_err()
            .into_status("sagaflow-orchestrator");
        assert!(status.message().len() < 300, "{}", status.message());
        assert!(
            status.message().contains("and 2 more"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn no_or_garbled_certificates_are_refused() {
        assert_eq!(check(None, "x"), Err(Refusal::NoCertificate));
        assert!(matches!(
            check(Some(b"junk"), "x"),
            Err(Refusal::Unreadable(_))
        ));
    }

    #[test]
    fn identities_are_dns_names() {
        assert_eq!(
            parse_identity("V", "Sagaflow-Orchestrator").unwrap(),
            "sagaflow-orchestrator"
        );
        assert!(parse_identity("V", "").is_err());
        assert!(parse_identity("V", "a b").is_err());
        assert!(parse_identity("V", &"a".repeat(254)).is_err());
    }
}
