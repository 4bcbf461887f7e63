//! Running one of this crate's participants: each is a
//! [`Participant`] of the library, served by
//! [`sagaflow_participant_kit::serve`] (migrations, step service by method
//! path, `CommandLog`, health, reflection, mutual TLS, metrics, drain).

use sagaflow_common::db::Migration;
use sagaflow_participant_kit::{Config, Participant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Kind, inventory, order, payment, trip};

/// Participant `kind`, as the library serves it.
pub fn participant(kind: Kind) -> Participant {
    match kind {
        Kind::Order => order::participant(),
        Kind::Payment => payment::participant(),
        Kind::Inventory => inventory::participant(),
        Kind::Flight => trip::units::FLIGHT.participant(),
        Kind::Hotel => trip::units::HOTEL.participant(),
        Kind::Car => trip::units::CAR.participant(),
        Kind::Trip => trip::participant(),
    }
}

/// The participant's migrations, in order (the library's and its own).
pub fn migrations(kind: Kind) -> Vec<Migration> {
    participant(kind).migrations()
}

/// Run participant `kind` on `listener` until `shutdown` is cancelled, then
/// finish in-flight RPCs and return (see [`sagaflow_participant_kit::serve`]).
pub async fn serve(
    kind: Kind,
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    sagaflow_participant_kit::serve(participant(kind), config, listener, shutdown).await
}
