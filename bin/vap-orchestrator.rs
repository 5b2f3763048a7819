//! vap-orchestrator: one runner per scenario, placed and kept in agreement with PostgreSQL.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        let Some(settings) = vap::cli::prepare(std::env::args().skip(1)).await? else { return Ok(()) };
        vap::orchestrator::run(settings, vap::lifecycle::shutdown_on_signal()).await?;
        Ok(())
    };
    vap::cli::exit_with("vap-orchestrator", result.await)
}
