//! Applies `migrations/*.sql` in order, once each, under an advisory lock so that several
//! processes starting together do not race.

use tokio_postgres::Client;

use super::DbError;

/// The migrations, in order. Add a file to `migrations/` and a line here.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_core", include_str!("../../../../migrations/0001_core.sql")),
    (2, "0002_worker_unreachable", include_str!("../../../../migrations/0002_worker_unreachable.sql")),
    (3, "0003_scenario_options", include_str!("../../../../migrations/0003_scenario_options.sql")),
    (4, "0004_dead_letters", include_str!("../../../../migrations/0004_dead_letters.sql")),
    (5, "0005_events_without_camera_urls", include_str!("../../../../migrations/0005_events_without_camera_urls.sql")),
    (6, "0006_results_keys", include_str!("../../../../migrations/0006_results_keys.sql")),
    (7, "0007_scenario_events", include_str!("../../../../migrations/0007_scenario_events.sql")),
    (8, "0008_scenario_events_notify", include_str!("../../../../migrations/0008_scenario_events_notify.sql")),
    (9, "0009_webhook_deliveries", include_str!("../../../../migrations/0009_webhook_deliveries.sql")),
    (10, "0010_scenario_events_seq", include_str!("../../../../migrations/0010_scenario_events_seq.sql")),
    (11, "0011_snapshots_and_health", include_str!("../../../../migrations/0011_snapshots_and_health.sql")),
    (12, "0012_results_by_time", include_str!("../../../../migrations/0012_results_by_time.sql")),
    (13, "0013_partitioned_results", include_str!("../../../../migrations/0013_partitioned_results.sql")),
    (14, "0014_webhook_fairness", include_str!("../../../../migrations/0014_webhook_fairness.sql")),
    (15, "0015_dead_letters_bounded", include_str!("../../../../migrations/0015_dead_letters_bounded.sql")),
    (16, "0016_placement_epochs", include_str!("../../../../migrations/0016_placement_epochs.sql")),
];

const MIGRATION_LOCK: i64 = 0x0076_6170_5f6d_6967; // "vap_mig"

/// Returns the versions it applied (empty when the schema was current).
pub async fn run(client: &mut Client) -> Result<Vec<i32>, DbError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let result = apply_pending(client).await;
    // Unlock even after a failure; the session ending would release it too.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    result
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>, DbError> {
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let done: Vec<i32> =
        client.query("SELECT version FROM schema_migrations", &[]).await?.iter().map(|r| r.get(0)).collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await.map_err(|source| DbError::Migration { name, source })?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&version, &name]).await?;
        tx.commit().await?;
        tracing::info!(version, name, "migration applied");
        applied.push(version);
    }
    Ok(applied)
}

/// Connects with the given settings and migrates.
pub async fn run_with(settings: &crate::config::DatabaseSettings) -> Result<Vec<i32>, DbError> {
    let (mut client, connection) = super::pg_config(settings).connect(tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(connection);
    let result = run(&mut client).await;
    drop(client);
    let _ = conn.await;
    result
}
