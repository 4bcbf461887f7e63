//! `CommandLog.ListCommandOutcomes`: every participant lists, read-only, the
//! commands it handled for a saga, from its inbox.

mod support;

use sagaflow_participants::Kind;
use sagaflow_protos::events::v1::{CommandKind, Outcome};
use sagaflow_protos::participant::v1::command_log_client::CommandLogClient;
use sagaflow_protos::participant::v1::inventory_service_client::InventoryServiceClient;
use sagaflow_protos::participant::v1::order_service_client::OrderServiceClient;
use sagaflow_protos::participant::v1::{
    CommandOutcome, ListCommandOutcomesRequest, OrderInput, StepCommand,
};
use support::{TestParticipant, command, input};
use uuid::Uuid;

async fn list(p: &TestParticipant, saga_id: &str) -> Result<Vec<CommandOutcome>, tonic::Status> {
    CommandLogClient::new(p.channel.clone())
        .list_command_outcomes(ListCommandOutcomesRequest {
            saga_id: saga_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().commands)
}

fn widget() -> OrderInput {
    input("cust-alice", 1_000, &[("sku-widget", 1)])
}

#[tokio::test]
async fn the_commands_a_participant_handled_for_a_saga_are_listed_with_their_outcomes() {
    // Given an order created, cancelled, and its late approval refused;
    // and another saga's order
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let saga = Uuid::now_v7();
    let create = command(saga, 0, "create_order", &widget());
    let cancel = command(saga, 0, "create_order", &widget());
    let approve = command(saga, 3, "approve_order", &widget());
    client.create_order(create.clone()).await.unwrap();
    // A repeat is the same command: listed once.
    client
        .create_order(StepCommand {
            attempt: 2,
            ..create.clone()
        })
        .await
        .unwrap();
    client.cancel_order(cancel.clone()).await.unwrap();
    let refused = client
        .approve_order(approve.clone())
        .await
        .unwrap()
        .into_inner();
    client
        .create_order(command(Uuid::now_v7(), 0, "create_order", &widget()))
        .await
        .unwrap();

    // When the saga's commands are listed
    let listed = list(&p, &saga.to_string()).await.unwrap();

    // Then each command appears once, oldest first, with its outcome
    let got: Vec<(String, u32, &str, CommandKind, Outcome, &str)> = listed
        .iter()
        .map(|c| {
            (
                c.command_id.clone(),
                c.step,
                c.step_name.as_str(),
                c.kind(),
                c.outcome(),
                c.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                create.command_id.clone(),
                0,
                "create_order",
                CommandKind::Action,
                Outcome::Succeeded,
                ""
            ),
            (
                cancel.command_id.clone(),
                0,
                "create_order",
                CommandKind::Compensation,
                Outcome::Succeeded,
                ""
            ),
            (
                approve.command_id.clone(),
                3,
                "approve_order",
                CommandKind::Action,
                Outcome::Refused,
                "order_cancelled"
            ),
        ]
    );
    assert_eq!(listed[2].event_id, refused.event_id);
    assert!(listed.iter().all(|c| c.received_at.is_some()));
}

#[tokio::test]
async fn a_saga_the_participant_never_heard_of_has_no_commands() {
    let p = TestParticipant::start(Kind::Inventory).await;
    // Something else in the inbox, so an empty answer means "none of this saga".
    InventoryServiceClient::new(p.channel.clone())
        .reserve_inventory(command(Uuid::now_v7(), 2, "reserve_inventory", &widget()))
        .await
        .unwrap();

    let listed = list(&p, &Uuid::now_v7().to_string()).await.unwrap();

    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_bad_saga_id_is_invalid_argument_naming_the_field() {
    let p = TestParticipant::start(Kind::Payment).await;
    for (raw, message) in [
        ("", "saga_id: required"),
        ("42", "saga_id: not a UUID: \"42\""),
    ] {
        let status = list(&p, raw).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{raw:?}");
        assert_eq!(status.message(), message);
    }
    assert_eq!(p.count("inbox").await, 0, "a read writes nothing");
}

#[tokio::test]
async fn the_answer_says_since_when_the_participant_remembers() {
    let p = TestParticipant::start(Kind::Order).await;
    let retention = Kind::Order
        .config(String::new(), sagaflow_participants::Security::Insecure)
        .inbox_retention;

    let answer = CommandLogClient::new(p.channel.clone())
        .list_command_outcomes(ListCommandOutcomesRequest {
            saga_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap()
        .into_inner();

    let forgotten_before =
        std::time::SystemTime::try_from(answer.forgotten_before.expect("a horizon")).unwrap();
    let horizon = std::time::SystemTime::now() - retention;
    let off = horizon
        .duration_since(forgotten_before)
        .unwrap_or_else(|e| e.duration());
    assert!(off < std::time::Duration::from_secs(60), "{off:?}");
}
