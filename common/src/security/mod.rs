//! Who may talk to whom, shared by every binary, the demo and the tests.
//!
//! Two rules, both on by default:
//! - **Only the orchestrator commands participants.** Participants serve
//!   gRPC over TLS and require, at the handshake, a client certificate that
//!   chains to their configured client CA ([`tls`]). A CA may sign many
//!   certificates (every participant's own, for a start), so each call is
//!   then checked against the one client identity allowed to make it: a DNS
//!   subjectAltName equal to `SAGAFLOW_ALLOWED_CLIENT` ([`identity`]).
//! - **The public API takes bearer tokens** ([`secret`]): every call a
//!   client token or an operator token, operator actions an operator token.
//!   Tokens are compared in constant time and never logged.
//!
//! `SAGAFLOW_INSECURE=true` is the one switch that turns both off (plaintext
//! gRPC, no tokens), for a local demo or a benchmark; a binary started with
//! it says so loudly ([`warn_insecure`]). Without it, a binary that lacks a
//! certificate or a token setting refuses to start and names what is
//! missing ([`Required`]).
//!
//! [`pki`] (feature `pki`) makes a throw-away CA, certificates and tokens;
//! [`probe`] shows what a server answers a client without a certificate.

pub mod identity;
#[cfg(feature = "pki")]
pub mod pki;
#[cfg(feature = "pki")]
pub mod probe;
pub mod secret;
pub mod tls;

use crate::config;

/// The switch that runs a binary without TLS and tokens.
pub const INSECURE: &str = "SAGAFLOW_INSECURE";

/// Whether `SAGAFLOW_INSECURE=true` (anything but `true`/`false` is an
/// error naming the variable).
pub fn insecure_from_env() -> anyhow::Result<bool> {
    config::parse_or(INSECURE, false)
}

/// The warning a binary logs at start when it runs insecure. It is a
/// warning, not a refusal: the demo and the benchmarks use it on purpose.
pub fn warn_insecure(binary: &str, exposed: &str) {
    tracing::warn!(
        binary,
        "{INSECURE}=true: INSECURE MODE, no TLS and no tokens: {exposed}. \
         Use it only for a local demo or a benchmark; see docs/security.md"
    );
}

/// Settings a secure binary cannot start without, collected so that one
/// error names every missing one.
#[derive(Debug)]
pub struct Required {
    binary: &'static str,
    missing: Vec<String>,
}

impl Required {
    pub fn new(binary: &'static str) -> Self {
        Required {
            binary,
            missing: Vec::new(),
        }
    }

    /// The variable's value; noted as missing when unset or empty.
    pub fn var(&mut self, name: &str) -> Option<String> {
        let value = config::var_opt(name);
        if value.is_none() {
            self.missing.push(name.to_owned());
        }
        value
    }

    /// Note a setting as missing (for one with alternatives, such as a
    /// `_FILE` form).
    pub fn missing(&mut self, what: impl Into<String>) {
        self.missing.push(what.into());
    }

    /// Ok when nothing is missing; otherwise the refusal to start.
    pub fn check(self) -> anyhow::Result<()> {
        if self.missing.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "{} runs secure by default and these settings are missing: {}. \
             See docs/security.md to create certificates and tokens, or set \
             {INSECURE}=true to run without TLS and tokens (local demo and benchmarks only)",
            self.binary,
            self.missing.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_every_missing_setting_and_the_switch() {
        let mut r = Required::new("sagaflow-participant");
        r.missing("SAGAFLOW_TLS_CERT");
        r.missing("SAGAFLOW_API_TOKENS (or SAGAFLOW_API_TOKENS_FILE)");
        let e = r.check().unwrap_err().to_string();
        assert!(
            e.starts_with("sagaflow-participant runs secure by default"),
            "{e}"
        );
        assert!(
            e.contains("SAGAFLOW_TLS_CERT, SAGAFLOW_API_TOKENS (or"),
            "{e}"
        );
        assert!(e.contains("SAGAFLOW_INSECURE=true"), "{e}");
        assert!(Required::new("x").check().is_ok());
    }
}
