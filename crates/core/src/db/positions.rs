//! Kafka positions of the consumers that keep their own (rskafka has no consumer groups).
//! A position moves only inside the transaction that stores what was read, and only from the
//! offset it was read at: exactly-once effects, and two consumers never both store a range.

use deadpool_postgres::{Pool, Transaction};

use super::DbError;

/// Where one consumer stands in one partition of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRef<'a> {
    pub consumer: &'a str,
    pub topic: &'a str,
    pub partition: i32,
}

/// A move of a position, stored with what the range `from_offset..next_offset` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance<'a> {
    pub at: PartitionRef<'a>,
    /// The position the range was read from; the move fails if it changed meanwhile.
    pub from_offset: i64,
    pub next_offset: i64,
    /// The partition's end when it was read: the consumer's lag is the distance to it.
    pub high_watermark: i64,
}

/// Reads the stored position, creating it at `initial` when the consumer is new.
pub async fn read(pool: &Pool, at: PartitionRef<'_>, initial: i64) -> Result<i64, DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&at.consumer, &at.topic, &at.partition, &initial],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT next_offset FROM consumer_positions WHERE consumer = $1 AND topic = $2 AND partition = $3",
            &[&at.consumer, &at.topic, &at.partition],
        )
        .await?;
    Ok(row.get(0))
}

/// Moves a position without storing anything (the log was reset under us).
pub async fn reset(pool: &Pool, at: PartitionRef<'_>, next: i64) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE consumer_positions SET next_offset = $4, updated_at = now()
              WHERE consumer = $1 AND topic = $2 AND partition = $3",
            &[&at.consumer, &at.topic, &at.partition, &next],
        )
        .await?;
    Ok(())
}

/// Moves the position inside the caller's transaction. False when another consumer moved it
/// first: the caller must roll back.
pub async fn advance(tx: &Transaction<'_>, advance: &Advance<'_>) -> Result<bool, DbError> {
    let at = advance.at;
    let moved = tx
        .execute(
            "UPDATE consumer_positions SET next_offset = $5, high_watermark = $6, updated_at = now()
              WHERE consumer = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
            &[
                &at.consumer,
                &at.topic,
                &at.partition,
                &advance.from_offset,
                &advance.next_offset,
                &advance.high_watermark,
            ],
        )
        .await?;
    Ok(moved == 1)
}

/// Sum over partitions of (high watermark - next offset) for a consumer: how far it trails.
pub async fn lag(pool: &Pool, consumer: &str) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT COALESCE(sum(GREATEST(high_watermark - next_offset, 0)), 0)::bigint
               FROM consumer_positions WHERE consumer = $1",
            &[&consumer],
        )
        .await?;
    Ok(row.get(0))
}

/// Raises the stored end of the log, so the lag read from here stays true while a partition
/// cannot be read.
pub async fn saw_end(pool: &Pool, at: PartitionRef<'_>, high_watermark: i64) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE consumer_positions SET high_watermark = GREATEST(high_watermark, $4)
              WHERE consumer = $1 AND topic = $2 AND partition = $3",
            &[&at.consumer, &at.topic, &at.partition, &high_watermark],
        )
        .await?;
    Ok(())
}

/// Moves the position over records no fetch could decode, and keeps the range and why in
/// `dead_letters`, in one transaction. False when the position had moved.
pub async fn step_over(pool: &Pool, over: Advance<'_>, reason: &str) -> Result<bool, DbError> {
    let (at, from) = (over.at, over.from_offset);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let moved = advance(&tx, &over).await?;
    if !moved {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO dead_letters (consumer, topic, partition, record_offset, reason)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &[&at.consumer, &at.topic, &at.partition, &from, &reason],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
