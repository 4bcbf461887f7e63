//! A whole Sagaflow system as child processes: three participants, one or
//! more outbox relays and one or more orchestrators, over fresh databases and
//! a Pub/Sub emulator (started here unless `PUBSUB_EMULATOR_HOST` is set).
//!
//! Process names: `order`, `payment`, `inventory`; `relay`, `relay-1`, ...;
//! `orchestrator-0`, `orchestrator-1`, .... Any of them can be SIGKILLed
//! ([`System::kill`]), SIGTERMed ([`System::terminate`]) and started again
//! ([`System::spawn`], [`System::restart`]); the emulator can be restarted on
//! the same port ([`System::restart_emulator`]), losing all its state.
//!
//! A system runs secure, as in production: its own CA, certificates and
//! tokens ([`crate::credentials`]), mutual TLS to participants, TLS and
//! tokens on the API. Every client a test needs comes from here:
//! [`System::client`] (operator token), [`System::client_as`] (a chosen
//! token), [`System::orchestrator_clients`] (client token, for placing),
//! [`System::participant_channel`] (a chosen identity). `Options::insecure`
//! runs it with `SAGAFLOW_INSECURE=true` instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sagaflow_common::pubsub::PubSubConfig;

use sagaflow_protos::orchestrator::v1::{GetSagaRequest, ListSagasRequest, Saga, SagaState};

use crate::clients::serving;
pub use crate::clients::{Caller, Client};
use crate::credentials::Credentials;
pub use crate::credentials::Peer;
use crate::databases::Databases;
use crate::definitions::Policies;
use crate::emulator::Emulator;
use crate::{free_port, wait_for};

/// The service binaries: those in `SAGAFLOW_BIN_DIR` when it is set (a
/// release build, say, or another build to compare with), else built by
/// cargo next to the running executable.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("SAGAFLOW_BIN_DIR").filter(|d| !d.is_empty()) {
                return Ok(PathBuf::from(dir));
            }
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/<test> or target/<profile>/<bin>
            let mut dir = exe.parent().map(PathBuf::from).ok_or("no exe dir")?;
            if dir.ends_with("deps") {
                dir.pop();
            }
            let profile = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("debug")
                .to_owned();
            // Make sure the service binaries are built and current (a no-op
            // when they are); cargo's lock makes concurrent calls safe. The
            // same command as `.ci/run`'s, so features unify the same way
            // and nothing is built twice.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "--workspace", "--bins", "--examples"]);
            if profile == "release" {
                cmd.arg("--release");
            }
            let status = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "cargo build of the service binaries failed: {status}"
                ));
            }
            Ok(dir)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A command for service binary `bin` (built and current), with no
/// settings of any system: for tests of how a binary starts.
pub fn binary(bin: &str) -> anyhow::Result<Command> {
    Ok(Command::new(bin_dir()?.join(bin)))
}

/// The kinds of process a system runs.
pub const PARTICIPANTS: [&str; 3] = ["order", "payment", "inventory"];

/// The trip saga's own participants, run besides the others when
/// [`Options::trip`] is set.
pub const TRIP_PARTICIPANTS: [&str; 4] = ["flight", "hotel", "car", "trip"];

#[derive(Default)]
pub struct Options {
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
    /// Step policies for the order saga, and for the trip saga when
    /// [`trip`](Self::trip) is set (shorter deadlines, more attempts):
    /// written as a definitions directory in the log directory, which the
    /// orchestrators read. Empty: the shipped definitions.
    pub policies: Policies,
    /// Use the default database names (kept) instead of fresh ones.
    pub default_databases: bool,
    /// Orchestrators to start (`orchestrator-0` ..); 0 means 1.
    pub orchestrators: usize,
    /// Relays to start (`relay`, `relay-1`, ..); 0 means 1.
    pub relays: usize,
    /// Run without TLS and tokens (`SAGAFLOW_INSECURE=true`), as a
    /// benchmark may.
    pub insecure: bool,
    /// Also run the trip saga: its four participants (each with a fresh
    /// database, published by the relays) and its shipped definition file
    /// next to the order saga's.
    pub trip: bool,
    /// Participants the test runs itself, each with the saga definition it
    /// serves and a relay of its own.
    pub outside: Vec<Outside>,
}

/// A participant the system does not start (the test serves it, or runs it
/// as a process of its own): the orchestrators reach it at `url`
/// (`SAGAFLOW_PARTICIPANT_<NAME>_URL`), its definition file goes into the
/// definitions directory next to the order saga's, and a relay of its own,
/// `relay-<name>`, publishes its database's outbox to the system's topic.
#[derive(Debug, Clone)]
pub struct Outside {
    /// The participant's name, as the definition's steps name it.
    pub name: String,
    pub url: String,
    pub database_url: String,
    /// The definition file's name (`ride.v1.yaml`) and text.
    pub definition: (String, String),
}

/// The name of relay number `n`: `relay`, then `relay-1`, `relay-2`, ...
pub fn relay_name(n: usize) -> String {
    if n == 0 {
        "relay".to_owned()
    } else {
        format!("relay-{n}")
    }
}

/// How long a service may take to report SERVING after it is spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct System {
    pub dbs: Databases,
    pub emulator_host: String,
    /// Listen address of each participant and of each orchestrator
    /// (`orchestrator-N`); `NAME.http`: the HTTP address of process `NAME`
    /// (every process has its own, so parallel systems never collide).
    pub addrs: HashMap<String, String>,
    pub topic: String,
    pub subscription: String,
    pub log_dir: PathBuf,
    /// `None` when insecure.
    pub(crate) credentials: Option<Credentials>,
    env: Vec<(String, String)>,
    /// The participants this system runs.
    participants: Vec<&'static str>,
    /// Extra environment of one process (by name), on top of `env`.
    process_env: HashMap<String, Vec<(String, String)>>,
    procs: HashMap<String, Proc>,
    // Declared last: processes die before the emulator does. `None` when an
    // outside emulator (`PUBSUB_EMULATOR_HOST`) is used.
    emulator: Option<Emulator>,
}

impl System {
    /// Fresh databases, an emulator (unless `PUBSUB_EMULATOR_HOST` is set)
    /// and every service, ready to take orders.
    pub async fn start(prefix: &str, options: Options) -> anyhow::Result<System> {
        let bins = bin_dir()?;
        let mut dbs = if options.default_databases {
            Databases::defaults().await?
        } else {
            Databases::create(prefix).await?
        };
        let mut participants = PARTICIPANTS.to_vec();
        let mut trip_dbs = Vec::new();
        if options.trip {
            participants.extend(TRIP_PARTICIPANTS);
            for p in TRIP_PARTICIPANTS {
                trip_dbs.push((p, dbs.add(p).await?));
            }
        }
        let (emulator, emulator_host) = match std::env::var("PUBSUB_EMULATOR_HOST") {
            Ok(h) if !h.is_empty() => (None, h),
            _ => {
                let e = Emulator::start().await?;
                let h = e.host.clone();
                (Some(e), h)
            }
        };
        let run = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("sagaflow-events-{}", &run[..12]);
        let subscription = format!("sagaflow-orchestrator-{}", &run[..12]);
        let log_dir = std::env::temp_dir().join(format!("sagaflow-{prefix}-{}", &run[..12]));
        std::fs::create_dir_all(&log_dir)?;
        let credentials = match options.insecure {
            true => None,
            false => Some(Credentials::generate(&log_dir.join("tls"), &participants)?),
        };
        let scheme = if options.insecure { "http" } else { "https" };
        let mut addrs = HashMap::new();
        for p in &participants {
            addrs.insert((*p).to_owned(), format!("127.0.0.1:{}", free_port()));
        }
        let mut env = vec![
            ("PUBSUB_EMULATOR_HOST".to_owned(), emulator_host.clone()),
            ("SAGAFLOW_EVENTS_TOPIC".to_owned(), topic.clone()),
            (
                "SAGAFLOW_EVENTS_SUBSCRIPTION".to_owned(),
                subscription.clone(),
            ),
            (
                "SAGAFLOW_ORCHESTRATOR_DATABASE_URL".to_owned(),
                dbs.orchestrator.clone(),
            ),
            ("SAGAFLOW_ORDER_DATABASE_URL".to_owned(), dbs.order.clone()),
            (
                "SAGAFLOW_PAYMENT_DATABASE_URL".to_owned(),
                dbs.payment.clone(),
            ),
            (
                "SAGAFLOW_INVENTORY_DATABASE_URL".to_owned(),
                dbs.inventory.clone(),
            ),
            (
                "SAGAFLOW_RELAY_DATABASE_URLS".to_owned(),
                [&dbs.order, &dbs.payment, &dbs.inventory]
                    .into_iter()
                    .chain(trip_dbs.iter().map(|(_, url)| url))
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            // PostgreSQL allows 100 connections by default and two systems
            // may run at once: 8 per pool keeps both well under it.
            ("SAGAFLOW_DB_POOL_SIZE".to_owned(), "8".to_owned()),
            (
                "RUST_LOG".to_owned(),
                std::env::var("SAGAFLOW_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        for p in &participants {
            let up = p.to_uppercase();
            env.push((format!("SAGAFLOW_{up}_LISTEN"), addrs[*p].clone()));
            // The order saga's three by their older names (still read).
            let url_var = match PARTICIPANTS.contains(p) {
                true => format!("SAGAFLOW_{up}_URL"),
                false => format!("SAGAFLOW_PARTICIPANT_{up}_URL"),
            };
            env.push((url_var, format!("{scheme}://{}", addrs[*p])));
        }
        for (p, url) in &trip_dbs {
            env.push((
                format!("SAGAFLOW_{}_DATABASE_URL", p.to_uppercase()),
                url.clone(),
            ));
        }
        if options.insecure {
            env.push(("SAGAFLOW_INSECURE".to_owned(), "true".to_owned()));
        }
        for o in &options.outside {
            env.push((
                format!(
                    "SAGAFLOW_PARTICIPANT_{}_URL",
                    o.name.to_uppercase().replace('-', "_")
                ),
                o.url.clone(),
            ));
        }
        if !options.policies.is_empty() || options.trip || !options.outside.is_empty() {
            let dir = log_dir.join("definitions");
            options.policies.write(&dir)?;
            for o in &options.outside {
                std::fs::write(dir.join(&o.definition.0), &o.definition.1)?;
            }
            if options.trip {
                let trip = sagaflow_participants::trip::DEFINITION;
                let trip = match options.policies.is_empty() {
                    true => trip.to_owned(),
                    false => options.policies.apply(trip)?,
                };
                std::fs::write(dir.join("trip.v1.yaml"), trip)?;
            }
            env.push((
                "SAGAFLOW_DEFINITIONS_DIR".to_owned(),
                dir.display().to_string(),
            ));
        }
        env.extend(options.env);
        let _ = bins;
        let mut system = System {
            dbs,
            emulator_host,
            addrs,
            topic,
            subscription,
            log_dir,
            credentials,
            env,
            participants: participants.clone(),
            process_env: HashMap::new(),
            procs: HashMap::new(),
            emulator,
        };
        for p in &participants {
            system.spawn(p)?;
        }
        for p in &participants {
            system.wait_ready(p).await?;
        }
        for n in 0..options.relays.max(1) {
            system.spawn(&relay_name(n))?;
        }
        for o in &options.outside {
            let relay = format!("relay-{}", o.name);
            system.set_process_env(
                &relay,
                &[("SAGAFLOW_RELAY_DATABASE_URLS", o.database_url.as_str())],
            );
            system.spawn(&relay)?;
        }
        for n in 0..options.orchestrators.max(1) {
            system.spawn_orchestrator(n)?;
        }
        for n in 0..options.orchestrators.max(1) {
            system.wait_orchestrator(n).await?;
        }
        Ok(system)
    }

    /// Whether this system runs the trip saga's participants
    /// ([`Options::trip`]).
    pub fn runs_trips(&self) -> bool {
        self.participants.contains(&"trip")
    }

    /// The value of `var` in this system's environment (the last one set).
    pub fn env_value(&self, var: &str) -> Option<String> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
    }

    /// Where this system's Pub/Sub is, for test-side clients.
    pub fn pubsub(&self) -> PubSubConfig {
        PubSubConfig {
            project: std::env::var("SAGAFLOW_PUBSUB_PROJECT")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "sagaflow-local".to_owned()),
            emulator_host: Some(self.emulator_host.clone()),
        }
    }

    /// The log file of process `name` (every run appends to it).
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// SIGKILL the emulator: every topic, subscription and unacknowledged
    /// message is gone. Errors when the emulator is not ours to kill
    /// (`PUBSUB_EMULATOR_HOST` was set).
    pub fn kill_emulator(&mut self) -> anyhow::Result<()> {
        self.emulator
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the emulator is external (PUBSUB_EMULATOR_HOST)"))?
            .kill();
        Ok(())
    }

    /// Start the emulator again, empty, on the same host:port, after
    /// [`kill_emulator`](Self::kill_emulator); waits until it listens.
    pub async fn start_emulator(&mut self) -> anyhow::Result<()> {
        self.emulator
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the emulator is external (PUBSUB_EMULATOR_HOST)"))?
            .start_again()
            .await
    }

    /// Kill the emulator and start a fresh one on the same host:port; returns
    /// how long it was unreachable. The services must re-create what they
    /// need themselves.
    pub async fn restart_emulator(&mut self) -> anyhow::Result<Duration> {
        self.emulator
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the emulator is external (PUBSUB_EMULATOR_HOST)"))?
            .restart()
            .await
    }

    /// The emulator's log file, when the emulator is ours.
    pub fn emulator_log(&self) -> Option<PathBuf> {
        self.emulator.as_ref().map(|e| e.log.clone())
    }

    /// Start a process: a participant name, `relay`, `relay-N`,
    /// `orchestrator-N` (see also [`spawn_orchestrator`](Self::spawn_orchestrator)).
    /// A process of that name still running is SIGKILLed first.
    pub fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        self.kill(name);
        let participant = self.participants.contains(&name);
        let (bin, args): (&str, Vec<&str>) = if participant {
            ("sagaflow-participant", vec![name])
        } else if name.starts_with("relay") {
            ("sagaflow-outbox-relay", vec![])
        } else if name.starts_with("orchestrator") {
            ("sagaflow-orchestrator", vec![])
        } else {
            anyhow::bail!("unknown process kind {name}");
        };
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let http = self
            .addrs
            .entry(format!("{name}.http"))
            .or_insert_with(|| format!("127.0.0.1:{}", free_port()))
            .clone();
        let http_var = if participant {
            format!("SAGAFLOW_{}_HTTP_LISTEN", name.to_uppercase())
        } else if name.starts_with("relay") {
            "SAGAFLOW_RELAY_HTTP_LISTEN".to_owned()
        } else {
            "SAGAFLOW_ORCHESTRATOR_HTTP_LISTEN".to_owned()
        };
        let mut cmd = self.command(bin)?;
        cmd.env(http_var, http)
            .args(args)
            .envs(
                self.credentials
                    .iter()
                    .flat_map(|c| c.env_for(name))
                    .collect::<Vec<_>>(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(addr) = self
            .addrs
            .get(name)
            .filter(|_| name.starts_with("orchestrator"))
        {
            cmd.env("SAGAFLOW_ORCHESTRATOR_LISTEN", addr);
        }
        if let Some(extra) = self.process_env.get(name) {
            cmd.envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawning {bin}: {e}"))?;
        self.procs.insert(name.to_owned(), Proc { child });
        Ok(())
    }

    /// Give process `name` extra environment from its next start on (see
    /// [`restart`](Self::restart)), e.g. a skewed clock for one instance.
    pub fn set_process_env(&mut self, name: &str, vars: &[(&str, &str)]) {
        self.process_env.insert(
            name.to_owned(),
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
    }

    /// SIGKILL process `name` (if running) and start it again; waits until it
    /// is ready (see [`wait_ready`](Self::wait_ready)).
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.kill(name);
        self.start_again(name).await
    }

    /// Stop process `name` with SIGTERM (its drain: an orchestrator closes
    /// its Pub/Sub streams) and start it again, as a deploy or a settings
    /// change would; waits until it is ready. A SIGKILL instead can leave
    /// the emulator handing new messages to the dead process's streams
    /// until their ack deadline: use [`restart`](Self::restart) where the
    /// crash is the point.
    pub async fn restart_gracefully(&mut self, name: &str) -> anyhow::Result<()> {
        let status = self.terminate(name, Duration::from_secs(60)).await?;
        anyhow::ensure!(status.success(), "{name} exited with {status} on SIGTERM");
        self.start_again(name).await
    }

    /// Start process `name` (stopped) again, and wait until it is ready.
    async fn start_again(&mut self, name: &str) -> anyhow::Result<()> {
        if name.starts_with("orchestrator") {
            let n: usize = name
                .trim_start_matches("orchestrator-")
                .parse()
                .map_err(|_| anyhow::anyhow!("bad orchestrator name {name}"))?;
            self.spawn_orchestrator(n)?;
        } else {
            self.spawn(name)?;
        }
        self.wait_ready(name).await
    }

    /// Wait until process `name` serves gRPC health (participants and
    /// orchestrators). Relays serve nothing: they are ready once spawned.
    pub async fn wait_ready(&self, name: &str) -> anyhow::Result<()> {
        if name.starts_with("relay") {
            return Ok(());
        }
        self.wait_healthy(name).await
    }

    /// The names of the processes started and not killed, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self.procs.keys().cloned().collect();
        names.sort();
        names
    }

    /// Processes that exited without being told to (a crash, or a clean exit
    /// nobody asked for), with their exit status. They are forgotten: spawn
    /// them again to bring them back.
    pub fn reap(&mut self) -> Vec<(String, ExitStatus)> {
        let mut exited = Vec::new();
        for (name, p) in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                exited.push((name.clone(), status));
            }
        }
        for (name, _) in &exited {
            self.procs.remove(name);
        }
        exited.sort_by(|a, b| a.0.cmp(&b.0));
        exited
    }

    /// Start orchestrator number `n` on its own port.
    pub fn spawn_orchestrator(&mut self, n: usize) -> anyhow::Result<()> {
        let name = format!("orchestrator-{n}");
        self.addrs
            .entry(name.clone())
            .or_insert_with(|| format!("127.0.0.1:{}", free_port()));
        self.addrs
            .entry(format!("{name}.http"))
            .or_insert_with(|| format!("127.0.0.1:{}", free_port()));
        self.spawn(&name)
    }

    /// The HTTP address of orchestrator `n` (the web console,
    /// `/config.json`), as a URL.
    pub fn console_url(&self, n: usize) -> String {
        format!("http://{}/", self.addrs[&format!("orchestrator-{n}.http")])
    }

    /// The HTTP address of process `name` (`/healthz`, `/readyz`,
    /// `/metrics`), as a URL without the trailing slash.
    pub fn http_url(&self, name: &str) -> anyhow::Result<String> {
        self.addrs
            .get(&format!("{name}.http"))
            .map(|a| format!("http://{a}"))
            .ok_or_else(|| anyhow::anyhow!("{name} has no HTTP address (not started?)"))
    }

    /// A command for one of the service binaries with the environment every
    /// process of this system shares (no process's own certificate).
    pub fn command(&self, bin: &str) -> anyhow::Result<Command> {
        let mut cmd = binary(bin)?;
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Ok(cmd)
    }

    /// Run one of the workspace binaries as a command (e.g. `sagaflow
    /// dead-letters list`) with this system's environment, the address of
    /// its first running orchestrator (`SAGAFLOW_API_URL`) and the
    /// commands' CA and operator token.
    pub fn run_command(&self, bin: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let url = self.orchestrator_url(self.first_orchestrator());
        let out = self
            .command(bin)?
            .args(args)
            .envs(self.credentials.iter().flat_map(|c| c.cli_env()))
            .env("SAGAFLOW_API_URL", url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{bin} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// Run one of the service binaries as a command with this system's
    /// environment, whatever its exit status (an operator command such as
    /// `reconcile` reports with it).
    pub async fn command_output(
        &self,
        bin: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        // An orchestrator command (`reconcile`) runs in an orchestrator's
        // environment, as an operator runs it beside the service.
        let own = match (&self.credentials, bin) {
            (Some(c), "sagaflow-orchestrator") => c.env_for("orchestrator-0"),
            _ => Vec::new(),
        };
        Ok(tokio::process::Command::new(bin_dir()?.join(bin))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(own)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await?)
    }

    /// The `sagaflow` command, not started, as an operator runs it beside
    /// the first running orchestrator: this system's environment, that
    /// orchestrator's own settings (for `reconcile`), its API address
    /// (`SAGAFLOW_API_URL`), the API's CA and an operator token.
    pub fn cli_command(&self) -> anyhow::Result<tokio::process::Command> {
        let first = self.first_orchestrator();
        let mut cmd = tokio::process::Command::new(bin_dir()?.join("sagaflow"));
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(self.credentials.iter().flat_map(|c| {
                let mut env = c.env_for(&format!("orchestrator-{first}"));
                env.extend(c.cli_env());
                env
            }))
            .env("SAGAFLOW_API_URL", self.orchestrator_url(first))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Run `sagaflow args…` (see [`cli_command`](Self::cli_command)),
    /// whatever its exit status (`watch` and `reconcile` report with it).
    pub async fn cli_output(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(self.cli_command()?.args(args).output().await?)
    }

    /// SIGKILL a process, as a crash would.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut p) = self.procs.remove(name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGSTOP a process: it holds its connections and its work but does
    /// nothing until [`resume`](Self::resume).
    pub fn pause(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT a process stopped by [`pause`](Self::pause).
    pub fn resume(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, nix::sys::signal::Signal::SIGCONT)
    }

    /// The process id of `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name).map(|p| p.child.id())
    }

    fn signal(&self, name: &str, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let p = self
            .procs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.child.id() as i32), signal)?;
        Ok(())
    }

    /// SIGTERM a process and wait (up to `timeout`) for it to exit by itself;
    /// returns its exit status. On timeout the process is SIGKILLed.
    pub async fn terminate(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.sigterm(name)?;
        self.wait_exit(name, timeout).await
    }

    /// Send SIGTERM to a process without waiting (see
    /// [`wait_exit`](Self::wait_exit)): several can shut down at once.
    pub fn sigterm(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, nix::sys::signal::Signal::SIGTERM)
    }

    /// Wait (up to `timeout`) for a process to exit, and forget it. On
    /// timeout the process is SIGKILLed and an error returned.
    pub async fn wait_exit(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut p = self
            .procs
            .remove(name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        let status = wait_for(&format!("{name} to exit"), timeout, || {
            let r = p.child.try_wait();
            async move { Ok(r?) }
        })
        .await?;
        Ok(status)
    }

    /// Wait until process `name` reports SERVING on gRPC health (over TLS
    /// when secure: a participant sees the orchestrator's certificate).
    async fn wait_healthy(&self, name: &str) -> anyhow::Result<()> {
        let addr = self
            .addrs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("unknown process {name}"))?;
        let endpoint = if name.starts_with("orchestrator") {
            self.orchestrator_endpoint(addr)?
        } else {
            self.participant_endpoint(name, Peer::Orchestrator)?
        };
        wait_for(
            &format!("{name} at {addr} to report SERVING"),
            READY_TIMEOUT,
            || {
                let endpoint = endpoint.clone();
                async move { Ok(serving(&endpoint).await.then_some(())) }
            },
        )
        .await
    }

    /// Wait until orchestrator `n` answers its API.
    pub async fn wait_orchestrator(&self, n: usize) -> anyhow::Result<()> {
        self.wait_healthy(&format!("orchestrator-{n}")).await
    }

    /// Numbers of the orchestrators started, in order.
    pub(crate) fn orchestrator_numbers(&self) -> Vec<usize> {
        let mut numbers: Vec<usize> = self
            .addrs
            .keys()
            .filter_map(|name| name.strip_prefix("orchestrator-")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        numbers
    }

    /// The lowest-numbered orchestrator still running (0 if none is).
    pub(crate) fn first_orchestrator(&self) -> usize {
        let mut running: Vec<usize> = self
            .procs
            .keys()
            .filter_map(|n| n.strip_prefix("orchestrator-")?.parse().ok())
            .collect();
        running.sort_unstable();
        running.first().copied().unwrap_or(0)
    }

    pub(crate) fn orchestrator_url(&self, n: usize) -> String {
        format!(
            "{}://{}",
            self.scheme(),
            self.addrs[&format!("orchestrator-{n}")]
        )
    }

    /// The gRPC URLs of every orchestrator this system has started (running
    /// or not), by number.
    pub fn orchestrator_urls(&self) -> Vec<String> {
        self.orchestrator_numbers()
            .into_iter()
            .map(|n| self.orchestrator_url(n))
            .collect()
    }

    /// Wait until every saga in `ids` is terminal; returns them in order.
    /// Polls `ListSagas` for terminal sagas (cheap), then fetches each one.
    pub async fn wait_terminal(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Vec<Saga>> {
        use futures::StreamExt as _;
        let client = self.client().await?;
        let wanted: std::collections::HashSet<&String> = ids.iter().collect();
        wait_for(&format!("{} sagas to finish", ids.len()), timeout, || {
            let mut client = client.clone();
            let wanted = &wanted;
            async move {
                let mut terminal = 0;
                let mut token = String::new();
                loop {
                    let page = client
                        .list_sagas(ListSagasRequest {
                            states: vec![
                                SagaState::Completed as i32,
                                SagaState::Compensated as i32,
                                SagaState::CompensationFailed as i32,
                            ],
                            page_size: 500,
                            page_token: token,
                        })
                        .await?
                        .into_inner();
                    terminal += page
                        .sagas
                        .iter()
                        .filter(|s| wanted.contains(&s.saga_id))
                        .count();
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                Ok((terminal == wanted.len()).then_some(()))
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs in {}", self.log_dir.display()))?;
        let sagas: Vec<anyhow::Result<Saga>> = futures::stream::iter(ids.to_vec())
            .map(|id| {
                let mut client = client.clone();
                async move {
                    Ok(client
                        .get_saga(GetSagaRequest { saga_id: id })
                        .await?
                        .into_inner())
                }
            })
            .buffered(8)
            .collect()
            .await;
        sagas.into_iter().collect()
    }

    /// Count sagas by state through ListSagas (all pages).
    pub async fn count_by_state(&self) -> anyhow::Result<HashMap<i32, usize>> {
        let mut client = self.client().await?;
        let mut counts = HashMap::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_sagas(ListSagasRequest {
                    states: vec![],
                    page_size: 500,
                    page_token: token,
                })
                .await?
                .into_inner();
            for s in &page.sagas {
                *counts.entry(s.state).or_insert(0) += 1;
            }
            if page.next_page_token.is_empty() {
                return Ok(counts);
            }
            token = page.next_page_token;
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // Stop the services before the databases are dropped under them.
        self.procs.clear();
    }
}

pub fn is_terminal(state: i32) -> bool {
    state == SagaState::Completed as i32
        || state == SagaState::Compensated as i32
        || state == SagaState::CompensationFailed as i32
}
