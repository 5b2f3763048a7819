//! vap-relay: outbox -> Kafka, and Kafka `results` -> inbox.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        let Some(settings) = vap::cli::prepare(std::env::args().skip(1)).await? else { return Ok(()) };
        vap::relay::run(settings, vap::lifecycle::shutdown_on_signal()).await?;
        Ok(())
    };
    vap::cli::exit_with("vap-relay", result.await)
}
