//! Who may command whom, on real processes over loopback gRPC.
//!
//! - Participants: a forged `RefundPayment` (fresh command id) for a
//!   completed saga, sent straight to the payment service, is refused
//!   without a client certificate (TLS handshake), with a certificate from
//!   the same CA under another name (PERMISSION_DENIED), with another
//!   participant's certificate (PERMISSION_DENIED) and in plaintext; nothing
//!   is written. The same command with the orchestrator's certificate is
//!   accepted, so it was the identity that was refused, not the command.
//! - The public API: no token or an unknown token is UNAUTHENTICATED; a
//!   client token on an operator action is PERMISSION_DENIED and changes
//!   nothing; the operator token passes; health stays open; plaintext fails.
//! - Start: without certificates and tokens each binary refuses to start and
//!   names what is missing; with `SAGAFLOW_INSECURE=true` it warns.

use std::process::Stdio;
use std::time::Duration;

use prost::Message as _;
use sagaflow_common::db;
use sagaflow_protos::orchestrator::v1::{
    CancelSagaRequest, GetSagaRequest, ListDeadLettersRequest, ListSagasRequest,
    RedriveDeadLettersRequest, RetrySagaRequest, SagaState,
};
use sagaflow_protos::participant::v1::inventory_service_client::InventoryServiceClient;
use sagaflow_protos::participant::v1::payment_service_client::PaymentServiceClient;
use sagaflow_protos::participant::v1::{GetItemsRequest, OrderInput, OrderItem, StepCommand};
use sagaflow_tests::business::{order_status, payment_status};
use sagaflow_tests::orders::order;
use sagaflow_tests::system::{self, Caller, Options, Peer, System};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SETTLE: Duration = Duration::from_secs(90);

/// A refund of `saga_id`'s payment, as the orchestrator would send it, but
/// with a command id it never sent.
fn forged_refund(saga_id: &str) -> StepCommand {
    let input = OrderInput {
        customer_id: "cust-alice".into(),
        items: vec![OrderItem {
            sku: "sku-widget".into(),
            quantity: 1,
        }],
        amount_cents: 100,
        currency: "EUR".into(),
    };
    StepCommand {
        command_id: uuid::Uuid::now_v7().to_string(),
        saga_id: saga_id.to_owned(),
        step: 1,
        step_name: "process_payment".into(),
        attempt: 1,
        saga_type: "order".into(),
        input: input.encode_to_vec(),
    }
}

/// (payment status, inbox rows, outbox rows) of the payment database, and
/// whether the forged command has an inbox row.
async fn payment_books(sys: &System, saga_id: &str, command_id: &str) -> anyhow::Result<String> {
    let c = db::connect(&sys.dbs.payment).await?;
    let count = |table: &'static str| {
        let c = &c;
        async move {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await?
                .get(0);
            anyhow::Ok(n)
        }
    };
    let forged: i64 = c
        .query_one(
            "SELECT count(*) FROM inbox WHERE command_id = $1",
            &[&uuid::Uuid::parse_str(command_id)?],
        )
        .await?
        .get(0);
    Ok(format!(
        "payment={:?} inbox={} outbox={} forged_in_inbox={forged}",
        payment_status(&sys.dbs, saga_id).await?,
        count("inbox").await?,
        count("outbox").await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_orchestrator_may_command_a_participant() -> anyhow::Result<()> {
    let sys = System::start("security", Options::default()).await?;
    // The orchestrator's own identity works: the saga completes.
    let placed = sys
        .client()
        .await?
        .place_order(order("cust-alice", &[("sku-widget", 1)], 100))
        .await?
        .into_inner();
    let saga_id = placed.saga_id;
    let done = sys
        .wait_terminal(std::slice::from_ref(&saga_id), SETTLE)
        .await?;
    assert_eq!(done[0].state, SagaState::Completed as i32);
    let forged = forged_refund(&saga_id);
    let before = payment_books(&sys, &saga_id, &forged.command_id).await?;
    assert!(before.starts_with("payment=Some(\"CHARGED\")"), "{before}");
    assert!(before.ends_with("forged_in_inbox=0"), "{before}");
    let payment = |peer| -> anyhow::Result<_> {
        Ok(PaymentServiceClient::new(
            sys.participant_channel("payment", peer)?,
        ))
    };

    // (a) No client certificate: the connection fails (a transport error,
    // no status from the service), because the server ends the handshake
    // with a `certificate required` alert.
    let no_cert = payment(Peer::NoCertificate)?
        .refund_payment(forged.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            no_cert.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{no_cert:?}"
    );
    let handshake = sys.handshake_without_certificate("payment").await?;
    assert!(handshake.contains("CertificateRequired"), "{handshake}");

    // (b) A certificate from the same CA under another name.
    let rogue = payment(Peer::Rogue)?
        .refund_payment(forged.clone())
        .await
        .unwrap_err();
    assert_eq!(rogue.code(), Code::PermissionDenied, "{rogue:?}");
    assert_eq!(
        rogue.message(),
        "client identity: the client certificate names \"sagaflow-rogue\"; \
         only sagaflow-orchestrator may call this service"
    );

    // Another participant's own certificate, used as a client.
    let inventory_as_client = payment(Peer::Participant("inventory"))?
        .refund_payment(forged.clone())
        .await
        .unwrap_err();
    assert_eq!(inventory_as_client.code(), Code::PermissionDenied);
    assert!(
        inventory_as_client
            .message()
            .contains("\"sagaflow-inventory\""),
        "{}",
        inventory_as_client.message()
    );

    // Plaintext against a TLS participant.
    let plaintext = PaymentServiceClient::new(sys.plaintext_channel("payment")?)
        .refund_payment(forged.clone())
        .await
        .unwrap_err();
    assert_ne!(plaintext.code(), Code::Ok);
    assert_ne!(plaintext.code(), Code::PermissionDenied);

    // Read-only look-ups are pinned too.
    let look_up = InventoryServiceClient::new(
        sys.participant_channel("inventory", Peer::Participant("payment"))?,
    )
    .get_items(GetItemsRequest {
        skus: vec!["sku-widget".into()],
    })
    .await
    .unwrap_err();
    assert_eq!(look_up.code(), Code::PermissionDenied);

    // Nothing was written, and the saga's books are as it left them.
    let after = payment_books(&sys, &saga_id, &forged.command_id).await?;
    assert_eq!(after, before);
    assert_eq!(
        order_status(&sys.dbs, &saga_id).await?.as_deref(),
        Some("APPROVED")
    );

    // The control: with the orchestrator's certificate the very same forged
    // command is accepted (which is why only the orchestrator may hold it).
    payment(Peer::Orchestrator)?
        .refund_payment(forged.clone())
        .await?;
    let controlled = payment_books(&sys, &saga_id, &forged.command_id).await?;
    assert!(
        controlled.starts_with("payment=Some(\"REFUNDED\")")
            && controlled.ends_with("forged_in_inbox=1"),
        "{controlled}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_token_and_operator_actions_an_operator_token() -> anyhow::Result<()> {
    let sys = System::start("security-api", Options::default()).await?;
    let as_caller = |caller| sys.client_as(0, caller);
    let list = || ListSagasRequest {
        states: vec![],
        page_size: 10,
        page_token: String::new(),
    };

    // No token, or one nobody configured: UNAUTHENTICATED, nothing placed.
    for caller in [
        Caller::NoToken,
        Caller::Token("an-unknown-token-0123456789".into()),
    ] {
        let mut client = as_caller(caller.clone()).await?;
        let placed = client
            .place_order(order("cust-alice", &[("sku-widget", 1)], 100))
            .await
            .unwrap_err();
        assert_eq!(
            placed.code(),
            Code::Unauthenticated,
            "{caller:?}: {placed:?}"
        );
        let listed = client.list_sagas(list()).await.unwrap_err();
        assert_eq!(listed.code(), Code::Unauthenticated, "{caller:?}");
    }
    assert!(
        sys.client()
            .await?
            .list_sagas(list())
            .await?
            .into_inner()
            .sagas
            .is_empty(),
        "an unauthenticated PlaceOrder wrote nothing"
    );

    // A client token places and reads, but no operator action passes.
    let mut client = as_caller(Caller::Client).await?;
    let saga_id = client
        .place_order(order("cust-alice", &[("sku-widget", 1)], 100))
        .await?
        .into_inner()
        .saga_id;
    let cancel = CancelSagaRequest {
        saga_id: saga_id.clone(),
        reason: "not mine to cancel".into(),
        request_id: String::new(),
    };
    let retry = RetrySagaRequest {
        saga_id: saga_id.clone(),
        reason: String::new(),
        request_id: String::new(),
    };
    let redrive_all = RedriveDeadLettersRequest {
        ids: vec![],
        all_pending: true,
    };
    let denied = [
        client.cancel_saga(cancel.clone()).await.map(drop),
        client.retry_saga(retry.clone()).await.map(drop),
        client
            .redrive_dead_letters(redrive_all.clone())
            .await
            .map(drop),
        client
            .list_dead_letters(ListDeadLettersRequest { limit: 0 })
            .await
            .map(drop),
    ];
    for (status, method) in denied.into_iter().zip([
        "CancelSaga",
        "RetrySaga",
        "RedriveDeadLetters",
        "ListDeadLetters",
    ]) {
        let status = status.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {status:?}"
        );
        assert_eq!(
            status.message(),
            format!("authorization: {method} needs an operator token")
        );
    }
    // The refused cancel changed nothing: the saga completes.
    let done = sys
        .wait_terminal(std::slice::from_ref(&saga_id), SETTLE)
        .await?;
    assert_eq!(done[0].state, SagaState::Completed as i32);
    let saga = client
        .get_saga(GetSagaRequest {
            saga_id: saga_id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        saga.history.iter().all(|h| !h.kind.contains("cancel")),
        "{:?}",
        saga.history
    );

    // The operator token passes the check and reaches the API's own rules.
    let mut operator = as_caller(Caller::Operator).await?;
    let cancelled = operator.cancel_saga(cancel).await.unwrap_err();
    assert_eq!(cancelled.code(), Code::FailedPrecondition, "{cancelled:?}");
    let retried = operator.retry_saga(retry).await.unwrap_err();
    assert_eq!(retried.code(), Code::FailedPrecondition, "{retried:?}");
    let letters = operator
        .list_dead_letters(ListDeadLettersRequest { limit: 0 })
        .await?
        .into_inner();
    assert_eq!((letters.total, letters.dead_letters.len()), (0, 0));
    let redriven = operator
        .redrive_dead_letters(redrive_all)
        .await?
        .into_inner();
    assert_eq!(redriven.redriven, 0);
    let bad_id = operator
        .redrive_dead_letters(RedriveDeadLettersRequest {
            ids: vec![7, -1],
            all_pending: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert_eq!(bad_id.message(), "ids[1]: must be positive, got -1");
    let unknown_id = operator
        .redrive_dead_letters(RedriveDeadLettersRequest {
            ids: vec![424242],
            all_pending: false,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_id.code(), Code::NotFound);
    assert_eq!(unknown_id.message(), "ids[0]: no dead letter 424242");

    // Health needs no token; plaintext does not reach the API at all.
    let check = || HealthCheckRequest {
        service: String::new(),
    };
    let health = HealthClient::new(sys.orchestrator_channel(0)?)
        .check(check())
        .await?
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let plaintext = HealthClient::new(sys.plaintext_channel("orchestrator-0")?)
        .check(check())
        .await;
    assert!(
        plaintext.is_err(),
        "plaintext reached the TLS API: {plaintext:?}"
    );
    Ok(())
}

/// Run `bin args` with only `env` (no inherited settings) and return its
/// exit success and its log.
fn run_alone(bin: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, String)> {
    let out = system::binary(bin)?
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[tokio::test]
async fn binaries_refuse_to_start_unsecured_unless_told_and_then_warn() -> anyhow::Result<()> {
    // Nothing configured: a refusal that names every missing setting and the switch.
    let (ok, log) = run_alone("sagaflow-participant", &["payment"], &[])?;
    assert!(!ok, "{log}");
    for setting in [
        "SAGAFLOW_TLS_CERT",
        "SAGAFLOW_TLS_KEY",
        "SAGAFLOW_TLS_CLIENT_CA",
        "SAGAFLOW_INSECURE=true",
    ] {
        assert!(log.contains(setting), "{setting} not named: {log}");
    }
    let (ok, log) = run_alone("sagaflow-orchestrator", &[], &[])?;
    assert!(!ok, "{log}");
    for setting in [
        "SAGAFLOW_TLS_CERT",
        "SAGAFLOW_PARTICIPANT_CA",
        "SAGAFLOW_CLIENT_CERT",
        "SAGAFLOW_CLIENT_KEY",
        "SAGAFLOW_API_TOKENS (or SAGAFLOW_API_TOKENS_FILE)",
        "SAGAFLOW_OPERATOR_TOKENS (or SAGAFLOW_OPERATOR_TOKENS_FILE)",
        "SAGAFLOW_INSECURE=true",
    ] {
        assert!(log.contains(setting), "{setting} not named: {log}");
    }
    let (ok, log) = run_alone("sagaflow", &["dead-letters", "list"], &[])?;
    assert!(!ok, "{log}");
    assert!(
        log.contains("SAGAFLOW_API_CA") && log.contains("SAGAFLOW_API_TOKEN"),
        "{log}"
    );

    // With the switch they start, and say loudly that they are insecure
    // (then stop: the database they are given does not exist).
    let nowhere = "postgres://postgres@127.0.0.1:1/none";
    let insecure = ("SAGAFLOW_INSECURE", "true");
    let (_, log) = run_alone(
        "sagaflow-participant",
        &["payment"],
        &[
            insecure,
            ("SAGAFLOW_PAYMENT_DATABASE_URL", nowhere),
            ("SAGAFLOW_PAYMENT_LISTEN", "127.0.0.1:0"),
        ],
    )?;
    assert!(
        log.contains("SAGAFLOW_INSECURE=true: INSECURE MODE"),
        "{log}"
    );
    assert!(log.contains("WARN"), "{log}");
    let (_, log) = run_alone(
        "sagaflow-orchestrator",
        &[],
        &[
            insecure,
            ("SAGAFLOW_ORCHESTRATOR_DATABASE_URL", nowhere),
            ("SAGAFLOW_ORCHESTRATOR_LISTEN", "127.0.0.1:0"),
        ],
    )?;
    assert!(
        log.contains("SAGAFLOW_INSECURE=true: INSECURE MODE"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_system_runs_in_plaintext_and_every_binary_says_so() -> anyhow::Result<()> {
    let sys = System::start(
        "insecure",
        Options {
            insecure: true,
            ..Options::default()
        },
    )
    .await?;
    let placed = sys
        .client_as(0, Caller::NoToken)
        .await?
        .place_order(order("cust-alice", &[("sku-widget", 1)], 100))
        .await?
        .into_inner();
    let done = sys.wait_terminal(&[placed.saga_id], SETTLE).await?;
    assert_eq!(done[0].state, SagaState::Completed as i32);
    // Anyone may command a participant now: that is what the warning is for.
    let anyone = InventoryServiceClient::new(sys.plaintext_channel("inventory")?)
        .get_items(GetItemsRequest {
            skus: vec!["sku-widget".into()],
        })
        .await?;
    assert_eq!(anyone.into_inner().items.len(), 1);
    for name in ["order", "payment", "inventory", "orchestrator-0"] {
        let log = std::fs::read_to_string(sys.log_of(name))?;
        let warning = log
            .lines()
            .find(|l| l.contains("SAGAFLOW_INSECURE=true: INSECURE MODE"))
            .unwrap_or_else(|| panic!("{name} did not warn: {log}"));
        assert!(warning.contains("WARN"), "{warning}");
    }
    Ok(())
}
