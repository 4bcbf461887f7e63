//! The inventory participant (database `sagaflow_inventory`).
//!
//! | RPC                | kind         | effect                                                     |
//! |--------------------|--------------|------------------------------------------------------------|
//! | `ReserveInventory` | action       | decrement every line's stock: `RESERVED`; refused `stock_short` / `unknown_sku` (recorded as `REFUSED`) |
//! | `ReleaseInventory` | compensation | `RESERVED` → `RELEASED`, stock restored; absent → `VOIDED` tombstone; otherwise a no-op |
//! | `GetItems`         | read-only    | the requested skus that exist, with their stock (at most 1000 skus of at most 200 bytes, no control characters) |

mod reservation;

use futures::FutureExt as _;
use sagaflow_participant_kit::{Error, Migration, Participant, key};
use sagaflow_protos::participant::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer, SERVICE_NAME,
};
use sagaflow_protos::participant::v1::{
    CatalogItem, CommandAck, GetItemsRequest, GetItemsResponse, StepCommand,
};
use tonic::{Request, Response, Status};

use crate::input::order_input;

/// The inventory participant: its tables and seeds, its two step RPCs, and
/// `GetItems`.
pub fn participant() -> Participant {
    Participant::new(crate::Kind::Inventory.name(), SERVICE_NAME)
        .migration(TABLES)
        .migration(SEEDS)
        .action("ReserveInventory", |tx, cmd| {
            async move { reservation::reserve(tx, cmd.saga_id, &order_input(cmd)?).await }.boxed()
        })
        .compensation("ReleaseInventory", |tx, cmd| {
            reservation::release(tx, cmd.saga_id).boxed()
        })
        .other_methods(|pool| InventoryServiceServer::new(Lookups { pool }))
}

/// A `VOIDED` row with no items is a tombstone: the release arrived before
/// (or instead of) the reservation.
const TABLES: Migration = Migration {
    version: 3,
    name: "items and reservations",
    sql: r#"
CREATE TABLE items (
    sku   text PRIMARY KEY,
    name  text NOT NULL,
    stock bigint NOT NULL CHECK (stock >= 0)
);
CREATE TABLE reservations (
    saga_id    uuid PRIMARY KEY,
    items      jsonb,
    status     text NOT NULL CHECK (status IN ('RESERVED', 'REFUSED', 'RELEASED', 'VOIDED')),
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (status = 'VOIDED' OR items IS NOT NULL)
);
"#,
};

const SEEDS: Migration = Migration {
    version: 4,
    name: "seed items",
    sql: r#"
INSERT INTO items (sku, name, stock) VALUES
    ('sku-widget',  'Widget',       1000000),
    ('sku-gadget',  'Gadget',       1000000),
    ('sku-rare',    'Rare thing',   5),
    ('sku-soldout', 'Sold-out one', 0)
ON CONFLICT (sku) DO NOTHING;
"#,
};

/// Most skus one `GetItems` call may ask for.
const MAX_LOOKUP: usize = 1000;

/// `GetItems`, over the participant's pool.
#[derive(Clone)]
struct Lookups {
    pool: deadpool_postgres::Pool,
}

impl Lookups {
    async fn lookup(&self, skus: Vec<String>) -> Result<Vec<CatalogItem>, Error> {
        if skus.len() > MAX_LOOKUP {
            return Err(Error::invalid("skus", format!("more than {MAX_LOOKUP}")));
        }
        for (i, sku) in skus.iter().enumerate() {
            key(&format!("skus[{i}]"), sku)?;
        }
        let client = self.pool.get().await?;
        let select = client
            .prepare_cached("SELECT sku, stock FROM items WHERE sku = ANY($1) ORDER BY sku")
            .await?;
        let rows = client.query(&select, &[&skus]).await?;
        Ok(rows
            .iter()
            .map(|row| CatalogItem {
                sku: row.get(0),
                stock: row.get(1),
            })
            .collect())
    }
}

#[tonic::async_trait]
impl InventoryService for Lookups {
    async fn reserve_inventory(
        &self,
        _: Request<StepCommand>,
    ) -> Result<Response<CommandAck>, Status> {
        Err(crate::served_as_a_step("ReserveInventory"))
    }

    async fn release_inventory(
        &self,
        _: Request<StepCommand>,
    ) -> Result<Response<CommandAck>, Status> {
        Err(crate::served_as_a_step("ReleaseInventory"))
    }

    async fn get_items(
        &self,
        request: Request<GetItemsRequest>,
    ) -> Result<Response<GetItemsResponse>, Status> {
        let items = self.lookup(request.into_inner().skus).await?;
        Ok(Response::new(GetItemsResponse { items }))
    }
}
