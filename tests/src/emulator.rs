//! The Google Cloud Pub/Sub emulator as a child process.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const EMULATOR_BIN: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// A running emulator; killed (with its JVM) when dropped.
pub struct Emulator {
    pub host: String,
    child: Child,
}

impl Emulator {
    /// Start an emulator on a free port and wait until it listens (~5 s).
    pub async fn start() -> anyhow::Result<Emulator> {
        let port = crate::free_port();
        let host = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("sagaflow-emulator-{port}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(EMULATOR_BIN)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            // Own process group: the script starts a JVM we must kill too.
            .process_group(0)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting the Pub/Sub emulator ({EMULATOR_BIN}): {e}"))?;
        let emulator = Emulator { host, child };
        crate::wait_for_port(&emulator.host, Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("{e}; emulator log: {}", log.display()))?;
        Ok(emulator)
    }

    /// Kill the emulator (every queued message is lost: it is in-memory).
    pub fn kill(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}
