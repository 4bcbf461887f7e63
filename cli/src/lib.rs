//! `sagaflow`: the command-line client of the orchestrator's API, and the
//! operator's commands (dead letters, reconciliation). docs/cli.md has the
//! commands, flags, environment and exit codes.
//!
//! Layout:
//! - [`args`]: the command line (clap), `--help` and the exit codes.
//! - [`connect`]: the API's URL, TLS and token, and connecting.
//! - [`commands`]: one module per command.
//! - [`render`]: tables and JSON; [`money`]: amounts in major units.
//! - [`error`]: what the user reads when something fails (exit 1).

pub mod args;
pub mod commands;
pub mod connect;
pub mod error;
pub mod money;
pub mod render;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

pub use error::Error;

/// Exit statuses (see [`args::EXIT_CODES`]).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const COMPENSATED: u8 = 2;
    pub const COMPENSATION_FAILED: u8 = 3;
    pub const SUSPENDED: u8 = 4;
    /// `reconcile` found mismatches.
    pub const MISMATCHES: u8 = 3;
}

/// Parse the command line, run the command, map the outcome to the exit
/// status. Usage errors exit 1 (clap's own 2 means COMPENSATED here).
pub fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::ERROR
            } else {
                exit::OK
            });
        }
    };
    init_logs();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(exit::ERROR)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Warnings and errors of the libraries on stderr (`RUST_LOG` overrides).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Write `text` and a newline to stdout, flushed (a closed pipe is an
/// error, not a panic).
pub fn say(text: impl std::fmt::Display) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// Write `text` as is (it ends with its own newline).
pub fn say_raw(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}
