//! A participant the test serves itself, for saga types defined only by a
//! file: the booking desk. It holds a seat (undone by releasing it),
//! confirms the booking (the pivot: nothing undoes it) and notifies the
//! traveller (forward-only). It is a [`Participant`] of the participant
//! library, served by it (the inbox claim, the decision, the outcome event
//! in the outbox, in one transaction) over its own fresh database; its
//! events reach the orchestrator through a relay and Pub/Sub like any
//! other's.
//!
//! Its commands carry JSON inputs, built by the definition's mappings from
//! the saga's input and earlier steps' outputs. Business rules, all
//! data-driven so a test can change them between a refusal and a retry:
//! - `HoldSeat` (`{traveller}`) refuses a traveller listed in `no_seats`,
//!   else holds a seat and outputs `{"seat": "S-…"}`; `ReleaseSeat`
//!   (`{seat}`, absent when the hold's outcome was never known) releases
//!   it, or leaves a tombstone when it comes first, and records the seat it
//!   was told;
//! - `ReserveCar` (`{traveller}`, run in parallel with `HoldSeat`) waits
//!   first for the milliseconds listed for the traveller in `slow_cars`
//!   (so a sibling's refusal can overtake it), then reserves a car and
//!   outputs `{"car": "C-…"}`, or is refused `compensated_before_action`
//!   when `ReturnCar` (`{car}`) came first and left a tombstone;
//! - `Confirm` (`{traveller, seat}`) refuses a traveller whose seat is not
//!   held (`no_hold`) or who is listed in `banned`, else books the seat and
//!   outputs `{"booking_ref": "BK-…"}`;
//! - `Notify` (`{to, booking_ref}`) refuses while the traveller's mailbox is
//!   closed (`mailbox_closed: <traveller>`), else records a notice with the
//!   reference it was given. For the traveller `verbose` it returns an
//!   output over the limit, which the contract refuses to commit.

use futures::FutureExt as _;
use sagaflow_common::{db, testkit};
use sagaflow_participant_kit::{
    COMPENSATED_BEFORE_ACTION, Command, Config, Decision, Error, Participant, Security, Tx,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The desk's gRPC service name: its methods are `/sagaflow.test.v1.Desk/*`.
pub const SERVICE: &str = "sagaflow.test.v1.Desk";

const TABLES: db::Migration = db::Migration {
    version: 100,
    name: "desk",
    sql: r#"
CREATE TABLE holds (
    saga_id       uuid PRIMARY KEY,
    traveller     text,
    seat          text,
    status        text NOT NULL CHECK (status IN ('HELD', 'RELEASED')),
    released_seat text
);
CREATE TABLE bookings (
    saga_id     uuid PRIMARY KEY,
    traveller   text NOT NULL,
    seat        text,
    booking_ref text NOT NULL
);
CREATE TABLE notices (
    command_id  uuid PRIMARY KEY,
    saga_id     uuid NOT NULL,
    traveller   text NOT NULL,
    booking_ref text
);
CREATE TABLE cars (
    saga_id   uuid PRIMARY KEY,
    traveller text,
    car       text,
    status    text NOT NULL CHECK (status IN ('RESERVED', 'RETURNED'))
);
CREATE TABLE slow_cars (traveller text PRIMARY KEY, ms integer NOT NULL);
CREATE TABLE mailboxes (traveller text PRIMARY KEY, open boolean NOT NULL);
CREATE TABLE no_seats (traveller text PRIMARY KEY);
CREATE TABLE banned (traveller text PRIMARY KEY);
"#,
};

/// The desk: its database and its server on a loopback port.
pub struct Desk {
    /// Its database's URL (give it to a relay).
    pub database_url: String,
    /// Where it listens (`http://127.0.0.1:PORT`).
    pub url: String,
    pool: deadpool_postgres::Pool,
    name: String,
    shutdown: CancellationToken,
}

/// What the desk's tables say of one saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    /// `HELD`, `RELEASED`, or `None`.
    pub hold: Option<String>,
    pub booked: bool,
    pub notices: i64,
}

/// The car of one saga, and how the desk answered its commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Car {
    /// `RESERVED`, `RETURNED`, or `None`.
    pub status: Option<String>,
    /// The outcome and reason the desk stored for the reservation
    /// (`SUCCEEDED`, or `REFUSED` with its reason), if it decided.
    pub reservation: Option<(String, String)>,
}

/// What the desk was told and gave, for one saga: the seat it held, the
/// seat a release named, the seat and reference of the booking, and the
/// references its notices were sent with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    pub seat: Option<String>,
    pub released_seat: Option<String>,
    pub booked_seat: Option<String>,
    pub booking_ref: Option<String>,
    pub noticed_refs: Vec<Option<String>>,
}

impl Desk {
    /// A fresh database, migrated, and the desk serving on a free port.
    pub async fn start(prefix: &str) -> anyhow::Result<Desk> {
        let id = Uuid::new_v4().simple().to_string();
        let name = format!("sf_{prefix}_{}_desk", &id[..12]);
        let database_url = testkit::create(&name).await?;
        let pool = db::pool(&database_url, 4)?;
        // Migrated here too, so the desk's tables are there on return.
        db::migrate(&pool, &participant().migrations()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let mut config = Config::new(database_url.clone(), Security::Insecure);
        config.pool_size = 4;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) =
                sagaflow_participant_kit::serve(participant(), config, listener, stop).await
            {
                tracing::error!("the desk stopped: {e:#}");
            }
        });
        Ok(Desk {
            database_url,
            url,
            pool,
            name,
            shutdown,
        })
    }

    /// Make `traveller`'s car reservations wait `ms` before deciding.
    pub async fn slow_cars(&self, traveller: &str, ms: i32) -> anyhow::Result<()> {
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO slow_cars (traveller, ms) VALUES ($1, $2)",
                &[&traveller, &ms],
            )
            .await?;
        Ok(())
    }

    /// The car of one saga: its row, and the desk's answers (the
    /// reservation is step 1 of the booking saga).
    pub async fn car(&self, saga_id: Uuid) -> anyhow::Result<Car> {
        let client = self.pool.get().await?;
        let status = client
            .query_opt("SELECT status FROM cars WHERE saga_id = $1", &[&saga_id])
            .await?
            .map(|r| r.get(0));
        let reservation = client
            .query_opt(
                "SELECT outcome, coalesce(reason, '') FROM inbox
                 WHERE saga_id = $1 AND step = 1 AND kind = 'action' AND outcome IS NOT NULL",
                &[&saga_id],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)));
        Ok(Car {
            status,
            reservation,
        })
    }

    /// Open or close `traveller`'s mailbox.
    pub async fn set_mailbox(&self, traveller: &str, open: bool) -> anyhow::Result<()> {
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO mailboxes (traveller, open) VALUES ($1, $2)
                 ON CONFLICT (traveller) DO UPDATE SET open = EXCLUDED.open",
                &[&traveller, &open],
            )
            .await?;
        Ok(())
    }

    /// List `traveller` in `table` (`no_seats` or `banned`).
    pub async fn list(&self, table: &str, traveller: &str) -> anyhow::Result<()> {
        anyhow::ensure!(matches!(table, "no_seats" | "banned"), "no table {table}");
        self.pool
            .get()
            .await?
            .execute(
                &format!("INSERT INTO {table} (traveller) VALUES ($1) ON CONFLICT DO NOTHING"),
                &[&traveller],
            )
            .await?;
        Ok(())
    }

    /// The desk's rows of one saga.
    pub async fn rows(&self, saga_id: Uuid) -> anyhow::Result<Rows> {
        let client = self.pool.get().await?;
        let hold = client
            .query_opt("SELECT status FROM holds WHERE saga_id = $1", &[&saga_id])
            .await?
            .map(|r| r.get(0));
        let booked = client
            .query_opt("SELECT 1 FROM bookings WHERE saga_id = $1", &[&saga_id])
            .await?
            .is_some();
        let notices = client
            .query_one(
                "SELECT count(*) FROM notices WHERE saga_id = $1",
                &[&saga_id],
            )
            .await?
            .get(0);
        Ok(Rows {
            hold,
            booked,
            notices,
        })
    }

    /// What the desk was told and gave for one saga.
    pub async fn told(&self, saga_id: Uuid) -> anyhow::Result<Told> {
        let client = self.pool.get().await?;
        let hold = client
            .query_opt(
                "SELECT seat, released_seat FROM holds WHERE saga_id = $1",
                &[&saga_id],
            )
            .await?;
        let booking = client
            .query_opt(
                "SELECT seat, booking_ref FROM bookings WHERE saga_id = $1",
                &[&saga_id],
            )
            .await?;
        let notices = client
            .query(
                "SELECT booking_ref FROM notices WHERE saga_id = $1",
                &[&saga_id],
            )
            .await?;
        Ok(Told {
            seat: hold.as_ref().and_then(|r| r.get(0)),
            released_seat: hold.as_ref().and_then(|r| r.get(1)),
            booked_seat: booking.as_ref().and_then(|r| r.get(0)),
            booking_ref: booking.as_ref().map(|r| r.get(1)),
            noticed_refs: notices.iter().map(|r| r.get(0)).collect(),
        })
    }

    /// Commands the desk handled for one saga (its inbox rows).
    pub async fn commands(&self, saga_id: Uuid) -> anyhow::Result<i64> {
        Ok(self
            .pool
            .get()
            .await?
            .query_one("SELECT count(*) FROM inbox WHERE saga_id = $1", &[&saga_id])
            .await?
            .get(0))
    }
}

impl Drop for Desk {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if std::env::var_os("SAGAFLOW_KEEP_DATABASES").is_none() {
            testkit::drop_now(vec![std::mem::take(&mut self.name)]);
        }
    }
}

/// Field `name` of a command's JSON input; `required` makes its absence
/// an invalid command.
/// A code for the saga: the whole id (a v7 id's first digits are its
/// time, which sagas started together share).
fn code(prefix: &str, saga_id: Uuid) -> String {
    format!("{prefix}-{}", saga_id.simple())
}

async fn listed(tx: &Tx<'_>, table: &str, traveller: &str) -> Result<bool, Error> {
    Ok(tx
        .query_opt(
            &format!("SELECT 1 FROM {table} WHERE traveller = $1"),
            &[&traveller],
        )
        .await?
        .is_some())
}

async fn hold_seat(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let who = cmd.required_text("traveller")?;
    if listed(tx, "no_seats", &who).await? {
        return Ok(Decision::refused("no_seats", json!({})));
    }
    let seat = code("S", cmd.saga_id);
    let inserted = tx
        .execute(
            "INSERT INTO holds (saga_id, traveller, seat, status) VALUES ($1, $2, $3, 'HELD')
             ON CONFLICT (saga_id) DO NOTHING",
            &[&cmd.saga_id, &who, &seat],
        )
        .await?;
    if inserted == 1 {
        return Ok(
            Decision::succeeded(json!({ "hold": "HELD" })).with_output(json!({ "seat": seat }))
        );
    }
    let status: String = tx
        .query_one(
            "SELECT status FROM holds WHERE saga_id = $1 FOR UPDATE",
            &[&cmd.saga_id],
        )
        .await?
        .get(0);
    Ok(match status.as_str() {
        "RELEASED" => Decision::refused(COMPENSATED_BEFORE_ACTION, json!({})),
        _ => Decision::succeeded(json!({ "hold": status, "existing": true }))
            .with_output(json!({ "seat": seat })),
    })
}

async fn release_seat(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    // A tombstone when the release comes first; else release the hold.
    // The seat comes from the hold's output, when it was known.
    let seat = cmd.text("seat")?;
    tx.execute(
        "INSERT INTO holds (saga_id, status, released_seat) VALUES ($1, 'RELEASED', $2)
         ON CONFLICT (saga_id) DO UPDATE SET status = 'RELEASED', released_seat = $2",
        &[&cmd.saga_id, &seat],
    )
    .await?;
    Ok(Decision::succeeded(json!({ "hold": "RELEASED" })))
}

async fn reserve_car(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let who = cmd.required_text("traveller")?;
    let slow: Option<i32> = tx
        .query_opt("SELECT ms FROM slow_cars WHERE traveller = $1", &[&who])
        .await?
        .map(|r| r.get(0));
    if let Some(ms) = slow {
        tokio::time::sleep(std::time::Duration::from_millis(ms.max(0) as u64)).await;
    }
    let car = code("C", cmd.saga_id);
    let inserted = tx
        .execute(
            "INSERT INTO cars (saga_id, traveller, car, status) VALUES ($1, $2, $3, 'RESERVED')
             ON CONFLICT (saga_id) DO NOTHING",
            &[&cmd.saga_id, &who, &car],
        )
        .await?;
    if inserted == 1 {
        return Ok(Decision::succeeded(json!({})).with_output(json!({ "car": car })));
    }
    let status: String = tx
        .query_one(
            "SELECT status FROM cars WHERE saga_id = $1 FOR UPDATE",
            &[&cmd.saga_id],
        )
        .await?
        .get(0);
    Ok(match status.as_str() {
        "RETURNED" => Decision::refused(COMPENSATED_BEFORE_ACTION, json!({})),
        _ => Decision::succeeded(json!({ "existing": true })).with_output(json!({ "car": car })),
    })
}

async fn return_car(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    // A tombstone when the return comes first (the reservation then
    // refuses); else the reservation is returned.
    tx.execute(
        "INSERT INTO cars (saga_id, status) VALUES ($1, 'RETURNED')
         ON CONFLICT (saga_id) DO UPDATE SET status = 'RETURNED'",
        &[&cmd.saga_id],
    )
    .await?;
    Ok(Decision::succeeded(json!({ "car": cmd.text("car")? })))
}

async fn confirm(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let who = cmd.required_text("traveller")?;
    let held = tx
        .query_opt(
            "SELECT 1 FROM holds WHERE saga_id = $1 AND status = 'HELD' FOR UPDATE",
            &[&cmd.saga_id],
        )
        .await?
        .is_some();
    if !held {
        return Ok(Decision::refused("no_hold", json!({})));
    }
    if listed(tx, "banned", &who).await? {
        return Ok(Decision::refused(format!("banned: {who}"), json!({})));
    }
    let seat = cmd.text("seat")?;
    let booking_ref = code("BK", cmd.saga_id);
    tx.execute(
        "INSERT INTO bookings (saga_id, traveller, seat, booking_ref) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
        &[&cmd.saga_id, &who, &seat, &booking_ref],
    )
    .await?;
    Ok(Decision::succeeded(json!({ "booked": true }))
        .with_output(json!({ "booking_ref": booking_ref })))
}

async fn notify(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
    let who = cmd.required_text("to")?;
    let booking_ref = cmd.text("booking_ref")?;
    let closed = tx
        .query_opt(
            "SELECT 1 FROM mailboxes WHERE traveller = $1 AND NOT open",
            &[&who],
        )
        .await?
        .is_some();
    if closed {
        return Ok(Decision::refused(
            format!("mailbox_closed: {who}"),
            json!({}),
        ));
    }
    tx.execute(
        "INSERT INTO notices (command_id, saga_id, traveller, booking_ref) VALUES ($1, $2, $3, $4)",
        &[&cmd.command_id, &cmd.saga_id, &who, &booking_ref],
    )
    .await?;
    let decision = Decision::succeeded(json!({ "notified": who }));
    if who == "verbose" {
        // More than a step output may carry: the contract refuses to
        // commit it, and the notice above is rolled back with it.
        return Ok(decision.with_output(json!({ "transcript": "x".repeat(5000) })));
    }
    Ok(decision.with_output(json!({ "sent_to": who })))
}

/// The desk, as the participant library serves it.
fn participant() -> Participant {
    Participant::new("desk", SERVICE)
        .migration(TABLES)
        .action("HoldSeat", |tx, cmd| hold_seat(tx, cmd).boxed())
        .compensation("ReleaseSeat", |tx, cmd| release_seat(tx, cmd).boxed())
        .action("ReserveCar", |tx, cmd| reserve_car(tx, cmd).boxed())
        .compensation("ReturnCar", |tx, cmd| return_car(tx, cmd).boxed())
        .action("Confirm", |tx, cmd| confirm(tx, cmd).boxed())
        .action("Notify", |tx, cmd| notify(tx, cmd).boxed())
}
