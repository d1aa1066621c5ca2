use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (server, kube,
    // registries); rustls panics at first use when none is chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = archway::cli::Cli::parse();
    archway::telemetry::init(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("archway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(archway::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("archway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
