//! The inventory participant (database `sagaflow_inventory`).
//!
//! | RPC                | kind         | effect                                                     |
//! |--------------------|--------------|------------------------------------------------------------|
//! | `ReserveInventory` | action       | decrement every line's stock: `RESERVED`; refused `stock_short` / `unknown_sku` (recorded as `REFUSED`) |
//! | `ReleaseInventory` | compensation | `RESERVED` → `RELEASED`, stock restored; absent → `VOIDED` tombstone; otherwise a no-op |
//! | `GetItems`         | read-only    | the requested skus that exist, with their stock (at most 1000 skus of at most 200 bytes, no control characters) |

mod reservation;

use futures::FutureExt as _;
use sagaflow_common::db::Migration;
use sagaflow_common::outbox;
use sagaflow_protos::participant::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use sagaflow_protos::participant::v1::{
    CatalogItem, CommandAck, GetItemsRequest, GetItemsResponse, StepCommand,
};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::command::{Executor, INBOX_MIGRATION, Rpc, key};

/// Every migration of the inventory database, in order.
pub const MIGRATIONS: [Migration; 6] = [
    outbox::MIGRATION,
    INBOX_MIGRATION,
    TABLES,
    SEEDS,
    crate::retention::MIGRATION,
    outbox::TUNING,
];

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

const RESERVE: Rpc = Rpc::action("ReserveInventory", true);
const RELEASE: Rpc = Rpc::compensation("ReleaseInventory");

/// Most skus one `GetItems` call may ask for.
const MAX_LOOKUP: usize = 1000;

/// The inventory service; cheap to clone.
#[derive(Clone)]
pub struct InventoryParticipant {
    exec: Executor,
}

impl InventoryParticipant {
    pub fn new(
        pool: deadpool_postgres::Pool,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            exec: Executor::new(
                pool,
                crate::Kind::Inventory.name(),
                sagaflow_protos::participant::v1::inventory_service_server::SERVICE_NAME,
                metrics,
            ),
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> InventoryServiceServer<Self> {
        InventoryServiceServer::new(self)
    }

    async fn lookup(&self, skus: Vec<String>) -> Result<Vec<CatalogItem>, Error> {
        if skus.len() > MAX_LOOKUP {
            return Err(Error::invalid("skus", format!("more than {MAX_LOOKUP}")));
        }
        for (i, sku) in skus.iter().enumerate() {
            key(&format!("skus[{i}]"), sku)?;
        }
        let client = self.exec.pool().get().await?;
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
impl InventoryService for InventoryParticipant {
    async fn reserve_inventory(
        &self,
        request: Request<StepCommand>,
    ) -> Result<Response<CommandAck>, Status> {
        self.exec
            .handle(RESERVE, request, |tx, cmd| {
                async move { reservation::reserve(tx, cmd.saga_id, cmd.input()?).await }.boxed()
            })
            .await
    }

    async fn release_inventory(
        &self,
        request: Request<StepCommand>,
    ) -> Result<Response<CommandAck>, Status> {
        self.exec
            .handle(RELEASE, request, |tx, cmd| {
                reservation::release(tx, cmd.saga_id).boxed()
            })
            .await
    }

    async fn get_items(
        &self,
        request: Request<GetItemsRequest>,
    ) -> Result<Response<GetItemsResponse>, Status> {
        let items = self.lookup(request.into_inner().skus).await?;
        Ok(Response::new(GetItemsResponse { items }))
    }
}
