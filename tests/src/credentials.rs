//! The certificates and tokens of one test system, made fresh for it (a
//! local CA from `sagaflow_common::security::pki`), written under its log
//! directory, and handed to each process through the documented settings
//! (docs/security.md).
//!
//! What is issued, all by one CA:
//! - each participant's server certificate (`localhost`, `127.0.0.1`, and
//!   its own name, `sagaflow-<participant>`);
//! - the orchestrator's API certificate (`localhost`, `127.0.0.1`);
//! - the orchestrator's client certificate, `sagaflow-orchestrator`: the
//!   identity participants accept;
//! - a "rogue" client certificate, `sagaflow-rogue`, for tests of refusals.
//!
//! And two tokens: a client token (`SAGAFLOW_API_TOKENS`, next to a second
//! one nobody uses, so the list form is exercised) and an operator token
//! (`SAGAFLOW_OPERATOR_TOKENS_FILE`, so the file form is).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sagaflow_common::security::identity::DEFAULT_CLIENT;
use sagaflow_common::security::pki::{self, Issued, Pki};
use sagaflow_common::security::secret::Secret;
use sagaflow_common::security::tls::ClientTls;

/// A certificate written to disk.
struct Written {
    issued: Issued,
    cert: PathBuf,
    key: PathBuf,
}

impl Written {
    fn new(pki: &Pki, dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<Written> {
        let issued = pki.issue(names)?;
        let (cert, key) = issued.write(dir, stem)?;
        Ok(Written { issued, cert, key })
    }
}

/// Who a test channel to a participant presents itself as.
#[derive(Debug, Clone, Copy)]
pub enum Peer<'a> {
    /// The orchestrator's client certificate.
    Orchestrator,
    /// `sagaflow-rogue`, from the same CA.
    Rogue,
    /// A participant's own certificate (from the same CA), as a client.
    Participant(&'a str),
    /// TLS, but no client certificate.
    NoCertificate,
}

pub struct Credentials {
    pub dir: PathBuf,
    ca: PathBuf,
    ca_pem: String,
    participants: HashMap<String, Written>,
    api: Written,
    orchestrator: Written,
    rogue: Issued,
    pub client_token: Secret,
    /// Configured next to the client token; nobody uses it.
    unused_token: Secret,
    pub operator_token: Secret,
    operator_tokens_file: PathBuf,
    cli_token_file: PathBuf,
}

impl Credentials {
    /// Make and write everything for `participants` into `dir`.
    pub fn generate(dir: &Path, participants: &[&str]) -> anyhow::Result<Credentials> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki::new("sagaflow test CA")?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, pki.ca_pem())?;
        let local = ["localhost", "127.0.0.1"];
        let mut issued = HashMap::new();
        for p in participants {
            let own = format!("sagaflow-{p}");
            let names = [own.as_str(), local[0], local[1]];
            issued.insert((*p).to_owned(), Written::new(&pki, dir, p, &names)?);
        }
        let client_token = pki::token();
        let operator_token = pki::token();
        let operator_tokens_file = dir.join("operator-tokens");
        pki::write_private(
            &operator_tokens_file,
            &format!("# operator tokens\n{}\n", operator_token.expose()),
        )?;
        let cli_token_file = dir.join("cli-token");
        pki::write_private(&cli_token_file, operator_token.expose())?;
        Ok(Credentials {
            dir: dir.to_owned(),
            ca,
            ca_pem: pki.ca_pem(),
            participants: issued,
            api: Written::new(&pki, dir, "orchestrator-api", &local)?,
            orchestrator: Written::new(&pki, dir, "orchestrator-client", &[DEFAULT_CLIENT])?,
            rogue: pki.issue(&["sagaflow-rogue"])?,
            client_token,
            unused_token: pki::token(),
            operator_token,
            operator_tokens_file,
            cli_token_file,
        })
    }

    /// The security settings of process `name` (a participant, `relay…`
    /// or `orchestrator-…`).
    pub fn env_for(&self, name: &str) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        let mut env: Vec<(&str, String)> = Vec::new();
        if let Some(own) = self.participants.get(name) {
            env.push(("SAGAFLOW_TLS_CERT", path(&own.cert)));
            env.push(("SAGAFLOW_TLS_KEY", path(&own.key)));
            env.push(("SAGAFLOW_TLS_CLIENT_CA", path(&self.ca)));
            env.push(("SAGAFLOW_ALLOWED_CLIENT", DEFAULT_CLIENT.to_owned()));
        } else if name.starts_with("orchestrator") {
            env.push(("SAGAFLOW_TLS_CERT", path(&self.api.cert)));
            env.push(("SAGAFLOW_TLS_KEY", path(&self.api.key)));
            env.push(("SAGAFLOW_PARTICIPANT_CA", path(&self.ca)));
            env.push(("SAGAFLOW_CLIENT_CERT", path(&self.orchestrator.cert)));
            env.push(("SAGAFLOW_CLIENT_KEY", path(&self.orchestrator.key)));
            env.push((
                "SAGAFLOW_API_TOKENS",
                format!(
                    "{},{}",
                    self.client_token.expose(),
                    self.unused_token.expose()
                ),
            ));
            env.push((
                "SAGAFLOW_OPERATOR_TOKENS_FILE",
                path(&self.operator_tokens_file),
            ));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The settings of the `dead-letters` commands (an operator token).
    pub fn cli_env(&self) -> Vec<(String, String)> {
        vec![
            ("SAGAFLOW_API_CA".to_owned(), self.ca.display().to_string()),
            (
                "SAGAFLOW_API_TOKEN_FILE".to_owned(),
                self.cli_token_file.display().to_string(),
            ),
        ]
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// TLS of a client of the orchestrator's API.
    pub fn api_tls(&self) -> ClientTls {
        ClientTls {
            server_ca_pem: self.ca_pem.clone().into_bytes(),
            identity: None,
        }
    }

    /// TLS of a client of a participant, presenting `peer`.
    pub fn participant_tls(&self, peer: Peer<'_>) -> anyhow::Result<ClientTls> {
        let identity = match peer {
            Peer::Orchestrator => Some(self.orchestrator.issued.key_pair()),
            Peer::Rogue => Some(self.rogue.key_pair()),
            Peer::Participant(p) => Some(
                self.participants
                    .get(p)
                    .ok_or_else(|| anyhow::anyhow!("no participant {p}"))?
                    .issued
                    .key_pair(),
            ),
            Peer::NoCertificate => None,
        };
        Ok(ClientTls {
            server_ca_pem: self.ca_pem.clone().into_bytes(),
            identity,
        })
    }
}
