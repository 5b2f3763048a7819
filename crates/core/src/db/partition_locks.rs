//! Session advisory locks that divide a consumer's partitions among the processes running it.
//! A lock lives as long as its connection, so a process killed outright frees its share at
//! once. Keys are two-int locks `(hashtext(group), id)`: members of a group lock their member
//! id under `<group>/members`, partitions are locked under `<group>`.

use tokio_postgres::Client;

use super::DbError;

/// Granted two-key advisory locks of group `$1` in this database (pg_locks shows the int4
/// keys as unsigned oids).
macro_rules! granted_in_group {
    () => {
        "locktype = 'advisory' AND objsubid = 2 AND granted
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         AND classid::bigint = (hashtext($1)::bigint & 4294967295)"
    };
}

fn members_of(group: &str) -> String {
    format!("{group}/members")
}

/// Joins `group` as `member`; false when another session holds that id.
pub async fn join(session: &Client, group: &str, member: i32) -> Result<bool, DbError> {
    try_take(session, &members_of(group), member).await
}

/// The member ids of `group` in this database, ascending.
pub async fn members(session: &Client, group: &str) -> Result<Vec<i32>, DbError> {
    let rows = session
        .query(
            concat!("SELECT objid::bigint FROM pg_locks WHERE ", granted_in_group!(), " ORDER BY 1"),
            &[&members_of(group)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u32 as i32).collect())
}

/// Takes `partition` of `group` unless another session holds it.
pub async fn try_take(session: &Client, group: &str, partition: i32) -> Result<bool, DbError> {
    let row = session.query_one("SELECT pg_try_advisory_lock(hashtext($1), $2)", &[&group, &partition]).await?;
    Ok(row.get(0))
}

/// Gives `partition` of `group` back.
pub async fn release(session: &Client, group: &str, partition: i32) -> Result<(), DbError> {
    session.query_one("SELECT pg_advisory_unlock(hashtext($1), $2)", &[&group, &partition]).await?;
    Ok(())
}

/// Partitions of `group` held, per holding backend pid: what an operator reads to see the split.
pub async fn holders(session: &Client, group: &str) -> Result<Vec<(i32, Vec<i32>)>, DbError> {
    let rows = session
        .query(
            concat!(
                "SELECT pid, array_agg(objid::bigint::int4 ORDER BY objid) FROM pg_locks WHERE ",
                granted_in_group!(),
                " GROUP BY pid ORDER BY pid"
            ),
            &[&group],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
