//! vap-relay: outbox -> Kafka, and Kafka `results` -> inbox.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(settings) = vap::cli::prepare(std::env::args().skip(1)).await? else { return Ok(()) };
    let shutdown = vap::lifecycle::shutdown_on_signal();
    vap::relay::run(settings, shutdown).await?;
    Ok(())
}
