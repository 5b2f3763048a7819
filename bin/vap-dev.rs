//! vap-dev: runs vap on the embedded default (own PostgreSQL, broker, and the vap services).
//! Usage: vap-dev [--port N] [--max-workers N] [--sample VIDEO | --no-sample]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        let mut args = std::env::args().skip(1);
        let mut api_port = None;
        let mut max_workers = 4;
        let mut sample_video = Some(std::path::PathBuf::from(vap_dev::embedded::SAMPLE_VIDEO)).filter(|p| p.exists());
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
            match arg.as_str() {
                "--port" => api_port = Some(value()?.parse()?),
                "--max-workers" => max_workers = value()?.parse()?,
                "--sample" => sample_video = Some(value()?.into()),
                "--no-sample" => sample_video = None,
                other => anyhow::bail!("unknown argument '{other}'; usage: vap-dev [--port N] [--max-workers N] [--sample VIDEO | --no-sample]"),
            }
        }
        vap_core::lifecycle::init_logging(&vap_core::config::LogSettings::default());
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        // scripts/run starts it from the repository, where the shipped models are.
        let models_dir = std::env::current_dir()?.join("models");
        let opts = vap_dev::embedded::EmbeddedOptions { api_port, bin_dir, models_dir, sample_video, max_workers };
        vap_dev::embedded::run(opts, vap_core::lifecycle::shutdown_on_signal()).await?;
        Ok(())
    };
    vap_core::cli::exit_with("vap-dev", result.await)
}
