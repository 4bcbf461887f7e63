//! One bad saga never stops the others.
//!
//! Rows the orchestrator cannot handle are planted among sagas in flight,
//! each due long before the rest: a saga whose stored state cannot be read,
//! one whose state no longer fits its definition (its timer is rejected),
//! and one of a definition version this build does not have. Meanwhile
//! other sagas need their timers (the inventory service is down when they
//! reach it). The timers go on for everyone; the first two bad sagas are
//! SUSPENDED with their reasons, listed by state, and an operator resumes
//! or cancels them once repaired; the third is left alone, logged once. An
//! orchestrator that starts with a bad row in flight starts, and suspends
//! it.

use std::time::Duration;

use sagaflow_common::db;
use sagaflow_protos::orchestrator::v1::{
    CancelSagaRequest, GetSagaRequest, ListSagasRequest, RetrySagaRequest, Saga, SagaState,
};
use sagaflow_tests::audit::{self, count_in_log};
use sagaflow_tests::checks::Checks;
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::orders::{Expect, mixed, order};
use sagaflow_tests::placer::{Pace, place_all};
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::{outcomes, wait_for};

fn policies() -> Policies {
    Policies {
        deadline: Some(Duration::from_millis(1500)),
        attempts: Some(40),
        compensation_attempts: Some(40),
        backoff_cap: Some(Duration::from_millis(500)),
        ..Policies::default()
    }
}

fn env() -> Vec<(String, String)> {
    [("SAGAFLOW_TIMER_POLL_MS", "100")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Place an order; its saga id.
async fn place_one(client: &mut sagaflow_tests::clients::Client) -> anyhow::Result<uuid::Uuid> {
    let placed = client
        .place_order(order("cust-alice", &[("sku-widget", 1)], 500))
        .await?
        .into_inner();
    Ok(uuid::Uuid::parse_str(&placed.saga_id)?)
}

async fn saga(sys: &System, id: uuid::Uuid) -> anyhow::Result<Saga> {
    Ok(sys
        .client()
        .await?
        .get_saga(GetSagaRequest {
            saga_id: id.to_string(),
        })
        .await?
        .into_inner())
}

async fn wait_state(sys: &System, id: uuid::Uuid, state: SagaState) -> anyhow::Result<Saga> {
    wait_for(
        &format!("saga {id} to be {state:?}"),
        Duration::from_secs(90),
        || async move {
            let s = saga(sys, id).await?;
            Ok((s.state == state as i32).then_some(s))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_saga_never_stops_the_others() -> anyhow::Result<()> {
    let mut sys = System::start(
        "suspend",
        Options {
            env: env(),
            policies: policies(),
            ..Options::default()
        },
    )
    .await?;
    let mut client = sys.client().await?;
    let c = db::connect(&sys.dbs.orchestrator).await?;

    // Three sagas stall at process_payment (payment is down), then go bad.
    sys.kill("payment");
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(place_one(&mut client).await?);
    }
    let [unreadable, misfit, unknown_version] = stalled[..] else {
        unreachable!()
    };
    let original = |id: uuid::Uuid| {
        let c = &c;
        async move {
            let row = c
                .query_one("SELECT state FROM sagas WHERE saga_id = $1", &[&id])
                .await?;
            anyhow::Ok(row.get::<_, serde_json::Value>(0))
        }
    };
    // Read and corrupt in one transaction holding the rows' locks: the
    // orchestrator may be applying an outcome to them right now, and the
    // state kept for the repair must be the one that was corrupted.
    c.batch_execute("BEGIN").await?;
    c.execute(
        "SELECT 1 FROM sagas WHERE saga_id = ANY($1) FOR UPDATE",
        &[&vec![unreadable, misfit, unknown_version]],
    )
    .await?;
    let unreadable_state = original(unreadable).await?;
    let misfit_state = original(misfit).await?;
    c.batch_execute(&format!(
        "UPDATE sagas SET state = '{{\"not\": \"a saga state\"}}' WHERE saga_id = '{unreadable}';
         UPDATE sagas SET state = jsonb_set(state, '{{steps}}', (state->'steps') - 3)
                      WHERE saga_id = '{misfit}';
         UPDATE sagas SET definition_version = 99 WHERE saga_id = '{unknown_version}';
         UPDATE saga_wakeups SET due = now() - interval '1 hour'
                      WHERE saga_id IN ('{unreadable}', '{misfit}', '{unknown_version}');
         COMMIT;"
    ))
    .await?;
    let unknown_wakeup: Option<chrono::DateTime<chrono::Utc>> = c
        .query_one(
            "SELECT due FROM saga_wakeups WHERE saga_id = $1",
            &[&unknown_version],
        )
        .await?
        .get(0);

    // Other sagas need their timers: inventory is down when they reach it.
    sys.kill("inventory");
    sys.restart("payment").await?;
    let others = place_all(
        &sys.orchestrator_clients()?,
        (0..30).map(mixed).collect(),
        Pace {
            per_second: 20.0,
            ..Pace::default()
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    sys.restart("inventory").await?;
    let other_ids: Vec<uuid::Uuid> = others.iter().map(|p| p.saga_id).collect();
    audit::wait_all_terminal(&sys.dbs.orchestrator, &other_ids, Duration::from_secs(120))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))?;
    let resent: i64 = c
        .query_one(
            "SELECT count(*) FROM saga_history WHERE saga_id = ANY($1) AND kind = 'resent'",
            &[&other_ids],
        )
        .await?
        .get(0);
    println!("suspend: 30 other sagas finished; {resent} commands re-sent by their timers");
    assert!(resent > 0, "the other sagas did not need their timers");
    let expected: Vec<(uuid::Uuid, Expect)> =
        others.iter().map(|p| (p.saga_id, p.expect)).collect();
    let o = outcomes::classify(&sys.dbs.orchestrator, &expected).await?;
    assert!(
        o.wrong.is_empty() && o.affected_total() == 0,
        "{o}: {:?}",
        o.wrong
    );

    // The two bad sagas are suspended, say why, and are listed by state.
    let s = wait_state(&sys, unreadable, SagaState::Suspended).await?;
    assert!(s.reason.contains("cannot be read"), "{}", s.reason);
    let s = wait_state(&sys, misfit, SagaState::Suspended).await?;
    assert!(
        s.reason.contains("timer was rejected") && s.reason.contains("SF1004"),
        "{}",
        s.reason
    );
    let listed = client
        .list_sagas(ListSagasRequest {
            states: vec![SagaState::Suspended as i32],
            page_size: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let mut listed: Vec<String> = listed.sagas.into_iter().map(|s| s.saga_id).collect();
    listed.sort();
    let mut want = vec![unreadable.to_string(), misfit.to_string()];
    want.sort();
    assert_eq!(listed, want);
    // The one of an unknown version is left alone, and said so once.
    let r = c
        .query_one(
            "SELECT s.status, w.due FROM sagas s LEFT JOIN saga_wakeups w USING (saga_id)
             WHERE s.saga_id = $1",
            &[&unknown_version],
        )
        .await?;
    assert_eq!(r.get::<_, String>(0), "RUNNING");
    assert_eq!(
        r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(1),
        unknown_wakeup
    );
    let log = sys.log_of("orchestrator-0");
    let said = "definition version this instance does not have";
    wait_for(
        "the unknown version to be logged",
        Duration::from_secs(30),
        || {
            let log = &log;
            async move { Ok((count_in_log(log, said) > 0).then_some(())) }
        },
    )
    .await?;
    // Counted every few seconds, logged once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(count_in_log(&log, said), 1, "logged once");

    // An orchestrator that starts with a bad row in flight starts, and
    // suspends it: one more saga stalls at payment, and goes bad while the
    // orchestrator is down.
    sys.kill("payment");
    let at_start = place_one(&mut client).await?;
    sys.kill("orchestrator-0");
    let at_start_state = original(at_start).await?;
    c.execute(
        "WITH s AS (UPDATE sagas SET state = '[]' WHERE saga_id = $1)
         UPDATE saga_wakeups SET due = now() + interval '1 hour' WHERE saga_id = $1",
        &[&at_start],
    )
    .await?;
    sys.restart("orchestrator-0").await?;
    let mut client = sys.client().await?;
    let s = wait_state(&sys, at_start, SagaState::Suspended).await?;
    assert!(s.reason.contains("at start-up"), "{}", s.reason);
    sys.restart("payment").await?;
    stalled.push(at_start);

    // Until it is repaired, nothing can act on an unreadable saga.
    let e = client
        .retry_saga(RetrySagaRequest {
            saga_id: unreadable.to_string(),
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("still unreadable");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("SF1009"), "{}", e.message());
    let e = client
        .cancel_saga(CancelSagaRequest {
            saga_id: misfit.to_string(),
            reason: "give up".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("still misfit");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // Repaired: retried sagas resume and complete, a cancelled one is
    // compensated, the other version's saga runs once its version is known.
    for (id, state) in [
        (unreadable, &unreadable_state),
        (misfit, &misfit_state),
        (at_start, &at_start_state),
    ] {
        c.execute(
            "UPDATE sagas SET state = $2 WHERE saga_id = $1",
            &[&id, state],
        )
        .await?;
    }
    c.execute(
        "UPDATE sagas SET definition_version = 1 WHERE saga_id = $1",
        &[&unknown_version],
    )
    .await?;
    for id in [unreadable, at_start] {
        let resumed = client
            .retry_saga(RetrySagaRequest {
                saga_id: id.to_string(),
                reason: "state repaired".into(),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        assert_eq!(resumed.state, SagaState::Running as i32, "{resumed:?}");
    }
    let cancelled = client
        .cancel_saga(CancelSagaRequest {
            saga_id: misfit.to_string(),
            reason: "customer gave up waiting".into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(cancelled.state, SagaState::Compensating as i32);
    audit::wait_all_terminal(&sys.dbs.orchestrator, &stalled, Duration::from_secs(90))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))?;
    let ends = audit::statuses(&sys.dbs.orchestrator, &stalled).await?;
    assert_eq!(ends[&unreadable], "COMPLETED");
    assert_eq!(ends[&at_start], "COMPLETED");
    assert_eq!(ends[&unknown_version], "COMPLETED");
    assert_eq!(ends[&misfit], "COMPENSATED");
    let history = saga(&sys, unreadable).await?.history;
    let kinds: Vec<&str> = history.iter().map(|h| h.kind.as_str()).collect();
    assert!(
        kinds.contains(&"suspended") && kinds.contains(&"resumed"),
        "{kinds:?}"
    );
    Checks::run(&sys).await?.assert_ok(&sys);
    Ok(())
}
