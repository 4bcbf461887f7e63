//! The Google Cloud Pub/Sub emulator as a child process.
//!
//! It keeps everything in memory: [`Emulator::restart`] kills it and starts
//! a fresh one on the same port, which is how the tests make every topic,
//! subscription and unacknowledged message disappear at once.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EMULATOR_BIN: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// How long the emulator (a JVM) may take to listen; ~5 s on an idle
/// machine, much more on a busy one.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running emulator; killed (with its JVM) when dropped.
pub struct Emulator {
    pub host: String,
    pub port: u16,
    /// Stdout and stderr of every run on this port, appended.
    pub log: PathBuf,
    /// `None` while stopped.
    child: Option<Child>,
}

impl Emulator {
    /// Start an emulator on a free port and wait until it listens.
    pub async fn start() -> anyhow::Result<Emulator> {
        Self::start_on(crate::free_port()).await
    }

    /// Start an emulator on `port` and wait until it listens.
    pub async fn start_on(port: u16) -> anyhow::Result<Emulator> {
        let mut emulator = Emulator {
            host: format!("127.0.0.1:{port}"),
            port,
            log: std::env::temp_dir().join(format!("sagaflow-emulator-{port}.log")),
            child: None,
        };
        emulator.launch().await?;
        Ok(emulator)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the emulator is already running");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(EMULATOR_BIN)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            // Own process group: the script starts a JVM we must kill too.
            .process_group(0)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting the Pub/Sub emulator ({EMULATOR_BIN}): {e}"))?;
        self.child = Some(child);
        crate::wait_for_port(&self.host, START_TIMEOUT)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; emulator log: {}", self.log.display()))
    }

    /// Kill the emulator (every topic, subscription and queued message is
    /// lost: it is in-memory). A no-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Start it again on the same port after [`kill`](Self::kill).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.launch().await
    }

    /// Kill it and start a fresh, empty one on the same port; returns how
    /// long it was unreachable.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.kill();
        self.launch().await?;
        Ok(t.elapsed())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}
