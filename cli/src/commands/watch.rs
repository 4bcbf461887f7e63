//! `sagaflow watch SAGA_ID`: one saga live, through the server-streaming
//! `WatchSaga`, until it ends.
//!
//! Each history entry is printed as a line as it commits (with `--json`,
//! one JSON object per line). On a terminal, a progress line
//! (`[2/4 steps] RUNNING` and a spinner) sits under the timeline; piped
//! output gets the lines only.
//!
//! The watch ends when the saga does: COMPLETED (exit 0), COMPENSATED (2),
//! and also COMPENSATION_FAILED (3) and SUSPENDED (4), where the server keeps
//! the stream open because an operator may resume the saga, but a person
//! has to act first.
//!
//! A stream that breaks (the server says UNAVAILABLE "resume": a slow reader
//! or an orchestrator shutting down; or the connection drops) is resumed
//! on a new connection with `after_seq` = the last seq received, so no entry
//! is lost or shown twice; it backs off between attempts, says so on
//! stderr, and gives up (exit 1) when no stream could be had for
//! `--reconnect-for`.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sagaflow_protos::orchestrator::v1::{
    HistoryEntry, Saga, SagaState, StepStatus, WatchSagaRequest, WatchSagaResponse,
};
use serde_json::json;
use tonic::{Code, Status};

use crate::args::Watch;
use crate::connect::{Api, Client};
use crate::error::{chain, code_name, is_transport};
use crate::render::{self, clean, state_name};
use crate::{Error, exit, say};

/// First and longest pause before reconnecting.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often the spinner turns.
const SPIN: Duration = Duration::from_millis(120);
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

pub async fn run(api: &Api, a: Watch, json: bool) -> Result<ExitCode, Error> {
    let tty = !json && std::io::stdout().is_terminal();
    let mut w = Watching {
        saga_id: a.saga_id,
        after_seq: 0,
        view: View::new(json, tty),
        broken_since: None,
        backoff: BACKOFF_FIRST,
    };
    let mut client = api.client().await?;
    loop {
        let mut why = match follow(api, &mut client, &mut w).await {
            Ok(code) => return Ok(code),
            Err(Broken::Fatal(e)) => return Err(e),
            Err(Broken::Resume(why)) => why,
        };
        let since = *w.broken_since.get_or_insert_with(Instant::now);
        client = loop {
            if since.elapsed() >= a.reconnect_for {
                w.view.clear_progress()?;
                return Err(Error::Unreachable {
                    url: api.url.clone(),
                    cause: format!(
                        "no stream for {}s, giving up: {why}",
                        a.reconnect_for.as_secs()
                    ),
                });
            }
            let delay = w.next_backoff();
            w.view.notice(&format!(
                "watch: stream interrupted ({why}); reconnecting after seq {} in {:.1}s",
                w.after_seq,
                delay.as_secs_f64()
            ))?;
            tokio::time::sleep(delay).await;
            match api.client().await {
                Ok(c) => break c,
                Err(e) => why = e.to_string(),
            }
        };
    }
}

/// Where a watch stands, across reconnections.
struct Watching {
    saga_id: String,
    /// The last history seq shown: a new stream resumes after it.
    after_seq: u64,
    view: View,
    /// Since when no stream has delivered anything (None while one does).
    broken_since: Option<Instant>,
    /// The next pause before reconnecting.
    backoff: Duration,
}

impl Watching {
    fn next_backoff(&mut self) -> Duration {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
        delay
    }

    /// Show a message's entries; the exit status once the saga has ended.
    fn apply(&mut self, msg: WatchSagaResponse) -> Result<Option<ExitCode>, Error> {
        self.broken_since = None;
        self.backoff = BACKOFF_FIRST;
        if msg.pruned_before_seq > 0 {
            self.view.pruned(&self.saga_id, msg.pruned_before_seq)?;
        }
        let saga = msg.saga.unwrap_or_default();
        self.view.header(&self.saga_id, &saga)?;
        for entry in &msg.entries {
            if entry.seq <= self.after_seq {
                continue;
            }
            self.view.entry(&self.saga_id, entry)?;
            self.after_seq = entry.seq;
        }
        self.view.progress(&saga.steps, saga.state)?;
        let code = match SagaState::try_from(saga.state) {
            Ok(SagaState::Completed) => exit::OK,
            Ok(SagaState::Compensated) => exit::COMPENSATED,
            Ok(SagaState::CompensationFailed) => exit::COMPENSATION_FAILED,
            Ok(SagaState::Suspended) => exit::SUSPENDED,
            Ok(SagaState::Running | SagaState::Compensating | SagaState::Unspecified) | Err(_) => {
                return Ok(None);
            }
        };
        self.view.end(&self.saga_id, &saga, code)?;
        Ok(Some(ExitCode::from(code)))
    }
}

/// Why a stream stopped before the saga ended.
enum Broken {
    /// Reconnect and resume (the reason, for stderr).
    Resume(String),
    /// A refusal (NOT_FOUND, PERMISSION_DENIED, ...) or bad output.
    Fatal(Error),
}

impl From<Error> for Broken {
    fn from(e: Error) -> Self {
        Broken::Fatal(e)
    }
}

/// One stream, from `w.after_seq` until the saga ends or the stream breaks.
async fn follow(api: &Api, client: &mut Client, w: &mut Watching) -> Result<ExitCode, Broken> {
    let request = WatchSagaRequest {
        saga_id: w.saga_id.clone(),
        after_seq: w.after_seq,
    };
    let mut stream = match client.watch_saga(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(broken(api, s)),
    };
    let mut spin = tokio::time::interval(SPIN);
    spin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = spin.tick(), if w.view.tty => {
                w.view.spin()?;
                continue;
            }
        };
        match next {
            Ok(Some(msg)) => {
                if let Some(code) = w.apply(msg)? {
                    return Ok(code);
                }
            }
            Ok(None) => {
                return Err(Broken::Resume(
                    "the stream ended before the saga did".to_owned(),
                ));
            }
            Err(s) => return Err(broken(api, s)),
        }
    }
}

/// UNAVAILABLE (the server's "resume", or no connection) and a broken
/// connection are resumed; anything else the server said ends the watch.
fn broken(api: &Api, s: Status) -> Broken {
    if s.code() == Code::Unavailable || is_transport(&s) {
        let why = if is_transport(&s) {
            chain(&s)
        } else {
            format!("{}: {}", code_name(s.code()), s.message())
        };
        Broken::Resume(why)
    } else {
        Broken::Fatal(api.error(s))
    }
}

/// The output: lines on stdout, a progress line under them on a terminal,
/// notices on stderr.
struct View {
    json: bool,
    tty: bool,
    /// The header was printed (once per watch, not per stream).
    started: bool,
    /// The progress line's text, when one is shown.
    progress: Option<String>,
    frame: usize,
}

impl View {
    fn new(json: bool, tty: bool) -> View {
        View {
            json,
            tty,
            started: false,
            progress: None,
            frame: 0,
        }
    }

    fn header(&mut self, saga_id: &str, saga: &Saga) -> Result<(), Error> {
        if std::mem::replace(&mut self.started, true) || self.json {
            return Ok(());
        }
        let order = saga.order.as_ref().map(render::order).unwrap_or_default();
        self.line(&clean(&format!(
            "saga {saga_id} ({}, {} steps) {order}",
            saga.saga_type,
            saga.steps.len()
        )))
    }

    fn entry(&mut self, saga_id: &str, e: &HistoryEntry) -> Result<(), Error> {
        if self.json {
            let mut v = render::entry_json(e);
            v["event"] = "entry".into();
            v["saga_id"] = saga_id.into();
            return self.line(&v.to_string());
        }
        self.line(&format!(
            "{}  #{:<3} {:<20} {:<19} {}",
            render::clock(&e.at),
            e.seq,
            clean(&e.kind),
            state_name(e.state),
            clean(&e.detail)
        ))
    }

    fn pruned(&mut self, saga_id: &str, before: u64) -> Result<(), Error> {
        if self.json {
            return self.line(
                &json!({"event": "pruned", "saga_id": saga_id, "before_seq": before}).to_string(),
            );
        }
        self.notice(&format!(
            "watch: history before seq {before} was removed by retention"
        ))
    }

    fn end(&mut self, saga_id: &str, saga: &Saga, code: u8) -> Result<(), Error> {
        self.clear_progress()?;
        self.progress = None;
        if self.json {
            return self.line(
                &json!({
                    "event": "end",
                    "saga_id": saga_id,
                    "state": state_name(saga.state),
                    "reason": saga.reason,
                    "failed_step": saga.failed_step,
                    "steps": saga.steps.iter().map(render::step_json).collect::<Vec<_>>(),
                    "exit_code": code,
                })
                .to_string(),
            );
        }
        let state = state_name(saga.state);
        let at = if saga.failed_step.is_empty() {
            String::new()
        } else {
            format!(" at {}", saga.failed_step)
        };
        let text = match SagaState::try_from(saga.state) {
            Ok(SagaState::Completed) => state,
            Ok(SagaState::Compensated) => format!("{state}{at}: {}", saga.reason),
            _ => format!(
                "{state}{at}: {} (an operator must act: sagaflow retry|cancel {saga_id})",
                saga.reason
            ),
        };
        self.line(&clean(&text))
    }

    /// A line of the timeline, under which the progress line is redrawn.
    fn line(&mut self, text: &str) -> Result<(), Error> {
        self.clear_progress()?;
        say(text)?;
        self.draw()
    }

    /// A notice on stderr, between timeline lines.
    fn notice(&mut self, text: &str) -> Result<(), Error> {
        self.clear_progress()?;
        eprintln!("{}", clean(text));
        self.draw()
    }

    fn progress(&mut self, steps: &[StepStatus], state: i32) -> Result<(), Error> {
        if !self.tty {
            return Ok(());
        }
        let done = |s: &&StepStatus| s.status == "SUCCEEDED";
        let undone =
            |s: &&StepStatus| matches!(s.status.as_str(), "COMPENSATED" | "NOT_COMPENSATED");
        let text = match SagaState::try_from(state) {
            Ok(SagaState::Compensating | SagaState::Compensated) => format!(
                "[{}/{} steps, {} undone] {}",
                steps.iter().filter(done).count(),
                steps.len(),
                steps.iter().filter(undone).count(),
                state_name(state)
            ),
            _ => format!(
                "[{}/{} steps] {}",
                steps.iter().filter(done).count(),
                steps.len(),
                state_name(state)
            ),
        };
        self.clear_progress()?;
        self.progress = Some(text);
        self.draw()
    }

    fn spin(&mut self) -> Result<(), Error> {
        self.frame = (self.frame + 1) % SPINNER.len();
        self.draw()
    }

    fn draw(&mut self) -> Result<(), Error> {
        let Some(text) = &self.progress else {
            return Ok(());
        };
        let mut out = std::io::stdout().lock();
        write!(out, "\r\x1b[2K{} {text}", SPINNER[self.frame])
            .and_then(|()| out.flush())
            .map_err(Error::Output)
    }

    fn clear_progress(&mut self) -> Result<(), Error> {
        if !self.tty || self.progress.is_none() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        write!(out, "\r\x1b[2K")
            .and_then(|()| out.flush())
            .map_err(Error::Output)
    }
}
