//! vap-api: the REST API. Talks to PostgreSQL only.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        let Some(settings) = vap::cli::prepare(std::env::args().skip(1)).await? else { return Ok(()) };
        vap::api::run(settings, vap::lifecycle::shutdown_on_signal()).await?;
        Ok(())
    };
    vap::cli::exit_with("vap-api", result.await)
}
