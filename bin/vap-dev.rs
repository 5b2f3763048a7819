//! vap-dev: runs vap on the embedded default (own PostgreSQL, broker, and the vap services).
//! Usage: vap-dev [--port N]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        let mut args = std::env::args().skip(1);
        let mut api_port = None;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--port" => api_port = Some(args.next().ok_or_else(|| anyhow::anyhow!("--port needs a number"))?.parse()?),
                other => anyhow::bail!("unknown argument '{other}'; usage: vap-dev [--port N]"),
            }
        }
        vap::lifecycle::init_logging(&vap::config::LogSettings::default());
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let opts = vap::embedded::EmbeddedOptions { api_port, bin_dir };
        vap::embedded::run(opts, vap::lifecycle::shutdown_on_signal()).await?;
        Ok(())
    };
    vap::cli::exit_with("vap-dev", result.await)
}
