//! vap-runner: one scenario's camera -> detector -> Kafka `results`.

fn main() -> std::process::ExitCode {
    vap_runner::cli::main(std::env::args().skip(1))
}
