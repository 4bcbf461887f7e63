//! Postgres plumbing shared by every service: pools, database creation and a
//! small versioned migration runner.
//!
//! Migrations are `(version, name, sql)` triples applied in order, each in its
//! own transaction, under a transaction-scoped advisory lock so that several
//! instances starting together (two replicas of a deployment) apply each
//! migration once: the others wait on the lock, then find it recorded.

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// One versioned schema change. Versions are applied in ascending order and
/// never edited once released: add a new one instead.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Arbitrary constant: the advisory lock that serialises migrations.
const MIGRATION_LOCK_KEY: i64 = 0x5a6a_f10e;

/// A connection pool of at most `max_size` connections to `url`.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    pool_with_settings(url, max_size, &[])
}

/// As [`pool`], with server settings for every session of the pool (added
/// to any the url's `options` give), e.g. `("enable_seqscan", "off")`.
pub fn pool_with_settings(
    url: &str,
    max_size: usize,
    settings: &[(&str, &str)],
) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("invalid database url {}", redact(url)))?;
    if !settings.is_empty() {
        let mut options = pg.get_options().unwrap_or_default().to_owned();
        for (name, value) in settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        pg.options(options.trim());
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .context("building database pool")
}

/// Connect once (outside a pool), driving the connection on a task.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// Apply every migration not yet recorded in `sagaflow_migrations`.
///
/// Safe to call from several processes at once: every transaction here,
/// the one creating the record table included, first takes the same
/// transaction-scoped advisory lock, so they run one at a time and each
/// sees what the one before committed. The lock is released at commit or
/// rollback, and with the session if the process dies, so a crashed
/// instance never holds it. Advisory locks are per database: migrating one
/// database does not wait for another on the same server.
pub async fn migrate(pool: &Pool, migrations: &[Migration]) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("database unavailable")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sagaflow_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    tx.commit().await?;
    for m in migrations {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM sagaflow_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(m.sql)
                .await
                .with_context(|| format!("migration {} ({}) failed", m.version, m.name))?;
            tx.execute(
                "INSERT INTO sagaflow_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Create the database named in `url` if it does not exist, connecting to the
/// `postgres` maintenance database of the same server.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    let name = cfg
        .get_dbname()
        .context("database url names no database")?
        .to_owned();
    cfg.dbname("postgres");
    let (client, conn) = cfg.connect(NoTls).await.context("connecting to postgres")?;
    tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = client.batch_execute(&sql).await {
            // Lost a race with another creator (a replica starting at the
            // same time): fine. Postgres says DUPLICATE_DATABASE when the
            // other committed between our look and our CREATE, and a
            // unique violation on pg_database's name index when both
            // CREATEs ran at once.
            let lost_race = [
                tokio_postgres::error::SqlState::DUPLICATE_DATABASE,
                tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
            ]
            .iter()
            .any(|c| e.code() == Some(c));
            if !lost_race {
                return Err(e).context("creating database");
            }
        }
    }
    Ok(())
}

/// The url with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
    }
}
