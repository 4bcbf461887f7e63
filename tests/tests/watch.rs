//! Watching sagas live, on real processes: `WatchSaga` replays then streams
//! a saga in flight and resumes exactly after any seq; a watcher on one
//! instance sees a saga another instance advances, and resumes on another
//! instance after its own is SIGKILLed, with every entry exactly once;
//! `WatchSagas` keeps counts and states right across reconnects with its
//! cursor while a mixed batch runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use sagaflow_protos::orchestrator::v1::{
    GetSagaRequest, HistoryEntry, SagaState, WatchSagaRequest, WatchSagasRequest,
};
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::orders::{mixed, order};
use sagaflow_tests::system::{Client, Options, System};
use sagaflow_tests::wait_for;
use tonic::Code;

const SETTLE: Duration = Duration::from_secs(90);

/// Short deadlines: a step held by a paused participant is re-sent soon
/// after the participant is back.
fn quick() -> Options {
    Options {
        env: vec![("SAGAFLOW_COMMAND_TIMEOUT_MS".to_owned(), "1000".to_owned())],
        policies: Policies {
            deadline: Some(Duration::from_millis(1500)),
            backoff_cap: Some(Duration::from_millis(500)),
            ..Policies::default()
        },
        ..Options::default()
    }
}

/// Everything one WatchSaga stream delivers, and how it ended.
#[derive(Debug, Default, Clone)]
struct Seen {
    entries: Vec<HistoryEntry>,
    states: Vec<i32>,
    /// `None` while open; `Some(Ok)` for a clean end, `Some(Err(code))`.
    end: Option<Result<(), Code>>,
}

/// Watch `saga` after `after` on `client`, recording into `seen`.
fn watch(mut client: Client, saga: String, after: u64, seen: Arc<Mutex<Seen>>) {
    tokio::spawn(async move {
        let stream = client
            .watch_saga(WatchSagaRequest {
                saga_id: saga,
                after_seq: after,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => {
                seen.lock().unwrap().end = Some(Err(e.code()));
                return;
            }
        };
        loop {
            match stream.next().await {
                Some(Ok(m)) => {
                    let mut s = seen.lock().unwrap();
                    s.entries.extend(m.entries);
                    s.states.push(m.saga.map(|g| g.state).unwrap_or_default());
                }
                Some(Err(e)) => {
                    seen.lock().unwrap().end = Some(Err(e.code()));
                    return;
                }
                None => {
                    seen.lock().unwrap().end = Some(Ok(()));
                    return;
                }
            }
        }
    });
}

async fn until<F: Fn(&Seen) -> bool>(what: &str, seen: &Arc<Mutex<Seen>>, f: F) -> Seen {
    wait_for(what, SETTLE, || {
        let s = seen.lock().unwrap().clone();
        let ok = f(&s);
        async move { Ok(ok.then_some(s)) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", seen.lock().unwrap()))
}

fn seqs(entries: &[HistoryEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

async fn history(client: &mut Client, saga: &str) -> Vec<HistoryEntry> {
    client
        .get_saga(GetSagaRequest {
            saga_id: saga.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_replayed_then_streamed_live_and_resumes_exactly_after_any_seq()
-> anyhow::Result<()> {
    let sys = System::start("watch", quick()).await?;
    let mut client = sys.client().await?;

    // Unknown and malformed ids, and a resume point past the end.
    let e = client
        .watch_saga(WatchSagaRequest {
            saga_id: uuid::Uuid::now_v7().to_string(),
            after_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = client
        .watch_saga(WatchSagaRequest {
            saga_id: "not-a-uuid\0".into(),
            after_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("saga_id:"), "{e:?}");

    // A saga held at its payment step: the replay, then the rest live.
    sys.pause("payment")?;
    let id = client
        .place_order(order("cust-alice", &[("sku-widget", 1)], 1_000))
        .await?
        .into_inner()
        .saga_id;
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch(client.clone(), id.clone(), 0, seen.clone());
    let first = until("the first message", &seen, |s| !s.states.is_empty()).await;
    assert_eq!(first.states[0], SagaState::Running as i32);
    assert!(first.end.is_none());
    sys.resume("payment")?;
    let done = until("the stream to end", &seen, |s| s.end.is_some()).await;
    assert_eq!(done.end, Some(Ok(())), "{done:?}");
    assert_eq!(done.states.last(), Some(&(SagaState::Completed as i32)));
    assert!(
        done.states.len() >= 2,
        "live messages after the replay: {done:?}"
    );
    let stored = history(&mut client, &id).await;
    let n = stored.len() as u64;
    assert_eq!(seqs(&done.entries), (1..=n).collect::<Vec<_>>());
    assert_eq!(
        done.entries.iter().map(|e| &e.kind).collect::<Vec<_>>(),
        stored.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );

    // Resuming after every seq gives exactly the rest, then ends.
    for after in 0..=n {
        let seen = Arc::new(Mutex::new(Seen::default()));
        watch(client.clone(), id.clone(), after, seen.clone());
        let s = until("a resumed stream to end", &seen, |s| s.end.is_some()).await;
        assert_eq!(s.end, Some(Ok(())), "after {after}: {s:?}");
        assert_eq!(seqs(&s.entries), (after + 1..=n).collect::<Vec<_>>());
    }
    let e = client
        .watch_saga(WatchSagaRequest {
            saga_id: id.clone(),
            after_seq: n + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("after_seq:"), "{e:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_another_instance_advance_the_saga_and_resumes_elsewhere_after_a_kill()
-> anyhow::Result<()> {
    let mut sys = System::start("watchx", quick()).await?;
    // Orchestrator 1 only serves watchers: it consumes another topic and
    // its timers never come due, so orchestrator 0 makes every change.
    sys.set_process_env(
        "orchestrator-1",
        &[
            ("SAGAFLOW_EVENTS_TOPIC", "watch-only"),
            ("SAGAFLOW_EVENTS_SUBSCRIPTION", "watch-only"),
            ("SAGAFLOW_TIMER_POLL_MS", "3600000"),
        ],
    );
    sys.spawn_orchestrator(1)?;
    sys.wait_orchestrator(1).await?;
    let mut placer = sys.client_of(0).await?;
    let watcher_on_1 = sys.client_of(1).await?;

    sys.pause("payment")?;
    sys.pause("inventory")?;
    let id = placer
        .place_order(order("cust-alice", &[("sku-widget", 1)], 1_000))
        .await?
        .into_inner()
        .saga_id;
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch(watcher_on_1, id.clone(), 0, seen.clone());
    until("the first message on orchestrator 1", &seen, |s| {
        !s.states.is_empty()
    })
    .await;
    // Orchestrator 0 applies the payment: the watcher on 1 sees it live.
    sys.resume("payment")?;
    until("the payment, seen on orchestrator 1", &seen, |s| {
        s.entries
            .iter()
            .any(|e| e.detail.starts_with("process_payment succeeded"))
    })
    .await;

    // Orchestrator 1 dies; the client resumes on 0 from its last seq.
    sys.kill("orchestrator-1");
    let cut = until("the stream on orchestrator 1 to break", &seen, |s| {
        s.end.is_some()
    })
    .await;
    assert!(matches!(cut.end, Some(Err(_))), "{cut:?}");
    let last = cut.entries.last().map(|e| e.seq).unwrap_or(0);
    let rest = Arc::new(Mutex::new(Seen::default()));
    watch(sys.client_of(0).await?, id.clone(), last, rest.clone());
    sys.resume("inventory")?;
    let rest = until("the resumed stream to end", &rest, |s| s.end.is_some()).await;
    assert_eq!(rest.end, Some(Ok(())), "{rest:?}");
    assert_eq!(rest.states.last(), Some(&(SagaState::Completed as i32)));

    let mut all = cut.entries.clone();
    all.extend(rest.entries);
    let n = history(&mut placer, &id).await.len() as u64;
    assert_eq!(
        seqs(&all),
        (1..=n).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    Ok(())
}

/// A list view kept from `WatchSagas`: counts and states by saga id.
#[derive(Debug, Default, Clone)]
struct ListView {
    counts: HashMap<i32, i64>,
    states: HashMap<String, i32>,
    cursor: String,
    messages: usize,
}

impl ListView {
    fn apply(&mut self, m: sagaflow_protos::orchestrator::v1::WatchSagasResponse) {
        if let Some(s) = m.snapshot {
            self.counts = s.counts.iter().map(|c| (c.state, c.count)).collect();
            self.states = s
                .sagas
                .iter()
                .map(|g| (g.saga_id.clone(), g.state))
                .collect();
        }
        for c in m.changes {
            let saga = c.saga.unwrap_or_default();
            if c.previous_state != 0 {
                *self.counts.entry(c.previous_state).or_default() -= 1;
            }
            *self.counts.entry(saga.state).or_default() += 1;
            self.states.insert(saga.saga_id, saga.state);
        }
        self.cursor = m.cursor;
        self.messages += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_stream_keeps_counts_exact_across_reconnects_with_its_cursor() -> anyhow::Result<()>
{
    let sys = System::start("watchlist", Options::default()).await?;
    let mut client = sys.client().await?;

    for (req, field) in [
        (
            WatchSagasRequest {
                cursor: "1.5.garbage".into(),
                ..Default::default()
            },
            "cursor:",
        ),
        (
            WatchSagasRequest {
                states: vec![42],
                ..Default::default()
            },
            "states[0]:",
        ),
        (
            WatchSagasRequest {
                snapshot_size: 100_000,
                ..Default::default()
            },
            "snapshot_size:",
        ),
    ] {
        let e = client.watch_sagas(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }

    // A batch placed before the watcher connects is in its snapshot.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(client.place_order(mixed(i).0).await?.into_inner().saga_id);
    }
    let view = Arc::new(Mutex::new(ListView::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    // The watcher: reconnects with its cursor after every third message.
    let watcher = {
        let view = view.clone();
        let stop = stop.clone();
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut reconnects = 0;
            while !stop.is_cancelled() {
                let cursor = view.lock().unwrap().cursor.clone();
                let mut stream = client
                    .watch_sagas(WatchSagasRequest {
                        snapshot_size: 500,
                        cursor,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let mut n = 0;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return anyhow::Ok(reconnects),
                        m = stream.next() => match m {
                            Some(Ok(m)) => {
                                assert!(
                                    m.snapshot.is_none() || view.lock().unwrap().cursor.is_empty(),
                                    "a resumed stream sends no snapshot"
                                );
                                view.lock().unwrap().apply(m);
                                n += 1;
                                if n == 3 {
                                    break;
                                }
                            }
                            Some(Err(e)) => anyhow::bail!("stream failed: {e:?}"),
                            None => anyhow::bail!("stream ended"),
                        },
                    }
                }
                reconnects += 1;
            }
            Ok(reconnects)
        })
    };
    wait_for("the snapshot", SETTLE, || {
        let n = view.lock().unwrap().messages;
        async move { Ok((n > 0).then_some(())) }
    })
    .await?;
    for i in 5..60 {
        ids.push(client.place_order(mixed(i).0).await?.into_inner().saga_id);
    }
    let done = sys.wait_terminal(&ids, SETTLE).await?;
    let want: HashMap<String, i32> = done.iter().map(|s| (s.saga_id.clone(), s.state)).collect();
    wait_for("the list view to catch up", SETTLE, || {
        let v = view.lock().unwrap().clone();
        let ok = want.iter().all(|(id, st)| v.states.get(id) == Some(st));
        async move { Ok(ok.then_some(())) }
    })
    .await?;
    stop.cancel();
    let reconnects = watcher.await??;
    assert!(reconnects >= 3, "reconnected {reconnects} times");

    let v = view.lock().unwrap().clone();
    let server = sys.count_by_state().await?;
    for state in 1..=6 {
        assert_eq!(
            v.counts.get(&state).copied().unwrap_or(0),
            server.get(&state).copied().unwrap_or(0) as i64,
            "count of state {state}: view {:?}, server {server:?}",
            v.counts
        );
    }
    assert_eq!(v.states.len(), 60);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_told_to_resume_and_resuming_loses_nothing()
-> anyhow::Result<()> {
    // One queued message per watcher: a client that does not read fills it
    // (behind the HTTP/2 window) and is cut off.
    let mut options = quick();
    options
        .env
        .push(("SAGAFLOW_WATCH_BUFFER".to_owned(), "1".to_owned()));
    options.insecure = true;
    let sys = System::start("watchslow", options).await?;
    let mut client = sys.client().await?;
    // A connection with a small HTTP/2 window, so the server soon has to
    // queue what the client does not read.
    let url = sys.orchestrator_urls()[0].clone();
    let narrow = sagaflow_tests::clients::endpoint(&url, None)?
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(4096))
        .connect()
        .await?;
    let mut stalled = sagaflow_tests::clients::api_client(narrow, None)?
        .watch_sagas(WatchSagasRequest::default())
        .await?
        .into_inner();
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(client.place_order(mixed(i).0).await?.into_inner().saga_id);
    }
    let done = sys.wait_terminal(&ids, SETTLE).await?;

    // Now read what was queued: it ends with a status saying to resume.
    let mut view = ListView::default();
    let status = loop {
        match tokio::time::timeout(SETTLE, stalled.next()).await? {
            Some(Ok(m)) => view.apply(m),
            Some(Err(e)) => break e,
            None => anyhow::bail!("the stream ended cleanly; expected a resume status"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("resume"), "{status:?}");
    assert!(view.messages >= 1);
    let got_before = view.states.len();
    assert!(got_before < 300, "cut off before the end: {got_before}");

    // Resuming with the last cursor received catches up exactly.
    let mut resumed = client
        .watch_sagas(WatchSagasRequest {
            cursor: view.cursor.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let want: HashMap<String, i32> = done.iter().map(|s| (s.saga_id.clone(), s.state)).collect();
    while !want.iter().all(|(id, st)| view.states.get(id) == Some(st)) {
        match tokio::time::timeout(SETTLE, resumed.next()).await? {
            Some(Ok(m)) => {
                assert!(m.snapshot.is_none(), "resumed without a snapshot");
                view.apply(m);
            }
            other => anyhow::bail!("resumed stream: {other:?}"),
        }
    }
    let server = sys.count_by_state().await?;
    for state in 1..=6 {
        assert_eq!(
            view.counts.get(&state).copied().unwrap_or(0),
            server.get(&state).copied().unwrap_or(0) as i64,
            "count of state {state}"
        );
    }
    Ok(())
}
