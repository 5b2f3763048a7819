//! vap-api: the REST API. Talks to PostgreSQL only.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        let Some(settings) = vap_core::cli::prepare(std::env::args().skip(1)).await? else { return Ok(()) };
        vap_api::run(settings, vap_core::lifecycle::shutdown_on_signal()).await?;
        Ok(())
    };
    vap_core::cli::exit_with("vap-api", result.await)
}
