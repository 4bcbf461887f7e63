//! Definitions shared through the orchestrator's database: a version, once
//! stored, never changes, and every instance runs every stored version.
//!
//! At start each instance stores the definitions its files give (type,
//! version, the canonical JSON of the checked definition and its SHA-256, so
//! reformatting a file is not a change) and refuses to start when a stored
//! version's content differs, naming the file. It then runs the stored
//! versions its files lack as well (a saga started under v1 finishes under
//! v1 after v1's file is gone), and [`refresh`] keeps adding versions other
//! instances store (an old instance meeting a v2 saga loads v2).

use std::collections::HashSet;

use deadpool_postgres::Pool;
use sagaflow_common::db::Migration;

use crate::saga::Definition;

/// The table of stored versions (version 90).
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 90,
    name: "saga definitions",
    sql: r#"
CREATE TABLE saga_definitions (
    saga_type  text        NOT NULL,
    version    integer     NOT NULL,
    -- SHA-256 (hex) of `definition`, the canonical JSON of the checked
    -- definition: the same for any formatting of its file.
    hash       text        NOT NULL,
    definition text        NOT NULL,
    -- The file it was first stored from, for errors.
    source     text        NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_type, version)
);
"#,
}];

/// The canonical form a definition is stored and hashed as.
pub fn canonical(def: &Definition) -> String {
    serde_json::to_string(def).expect("a definition serialises")
}

/// Store `files` (file name, definition before any override) where they
/// are new; refuse one whose stored version differs. Returns the stored
/// definitions none of `files` gives.
pub async fn share(pool: &Pool, files: &[(String, Definition)]) -> anyhow::Result<Vec<Definition>> {
    let client = pool.get().await?;
    for (source, def) in files {
        let text = canonical(def);
        let version = def.version as i32;
        client
            .execute(
                "INSERT INTO saga_definitions (saga_type, version, hash, definition, source)
                 VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'), $3, $4)
                 ON CONFLICT (saga_type, version) DO NOTHING",
                &[&def.saga_type, &version, &text, source],
            )
            .await?;
        let row = client
            .query_one(
                "SELECT hash = encode(sha256(convert_to($3, 'UTF8')), 'hex'), source,
                        to_char(stored_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
                   FROM saga_definitions WHERE saga_type = $1 AND version = $2",
                &[&def.saga_type, &version, &text],
            )
            .await?;
        let same: bool = row.get(0);
        if !same {
            let (stored_from, at): (String, String) = (row.get(1), row.get(2));
            let next: i32 = client
                .query_one(
                    "SELECT max(version) + 1 FROM saga_definitions WHERE saga_type = $1",
                    &[&def.saga_type],
                )
                .await?
                .get(0);
            anyhow::bail!(
                "{source}: {} version {} differs from the one stored from {stored_from} at {at}: a stored version never changes; give the new content version {next}",
                def.saga_type,
                def.version
            );
        }
    }
    let have: HashSet<(String, u32)> = files
        .iter()
        .map(|(_, d)| (d.saga_type.clone(), d.version))
        .collect();
    stored_except(pool, &have).await
}

/// The stored definitions other than `have`, each checked; one that does
/// not read back or check is skipped with an error logged.
pub async fn stored_except(
    pool: &Pool,
    have: &HashSet<(String, u32)>,
) -> anyhow::Result<Vec<Definition>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT saga_type, version, definition, source FROM saga_definitions
              ORDER BY saga_type, version",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let (saga_type, version): (String, i32) = (row.get(0), row.get(1));
        if have.contains(&(saga_type.clone(), version as u32)) {
            continue;
        }
        let source: String = row.get(3);
        match serde_json::from_str::<Definition>(row.get(2)) {
            Ok(def) => match def.validate() {
                Ok(()) => out.push(def),
                Err(e) => {
                    tracing::error!(%saga_type, version, %source, error = %e, "a stored definition does not check; its sagas are left to instances that run it")
                }
            },
            Err(e) => {
                tracing::error!(%saga_type, version, %source, error = %e, "a stored definition does not read back; its sagas are left to instances that run it")
            }
        }
    }
    Ok(out)
}

/// Add the versions other instances stored since this one started; how
/// many were added.
pub async fn refresh(pool: &Pool) -> anyhow::Result<usize> {
    let have: HashSet<(String, u32)> = super::registry()
        .into_iter()
        .map(|d| (d.saga_type.clone(), d.version))
        .collect();
    let new = stored_except(pool, &have).await?;
    let added = new.len();
    for def in &new {
        tracing::info!(saga_type = %def.saga_type, version = def.version, "saga definition loaded from the database (stored by another instance)");
    }
    if added > 0 {
        super::add(new);
    }
    Ok(added)
}

/// A stored definition and what is stored with it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub definition: Definition,
    pub hash: String,
    pub source: String,
    pub stored_at: chrono::DateTime<chrono::Utc>,
}

/// The stored definitions (of `saga_type` only, when given), by type, newest
/// version first. Rows that do not read back are skipped (and logged).
pub async fn list(pool: &Pool, saga_type: Option<&str>) -> anyhow::Result<Vec<Stored>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT saga_type, version, definition, hash, source, stored_at FROM saga_definitions
              WHERE $1::text IS NULL OR saga_type = $1
              ORDER BY saga_type, version DESC",
            &[&saga_type],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let (saga_type, version): (String, i32) = (row.get(0), row.get(1));
        match serde_json::from_str::<Definition>(row.get(2)) {
            Ok(definition) => out.push(Stored {
                definition,
                hash: row.get(3),
                source: row.get(4),
                stored_at: row.get(5),
            }),
            Err(e) => {
                tracing::error!(%saga_type, version, error = %e, "a stored definition does not read back")
            }
        }
    }
    Ok(out)
}
