use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: a review allocates and frees many
/// small strings across tokio's worker threads, where glibc's per-thread
/// arenas keep freed memory. Version 2 without transparent huge pages
/// (Cargo.toml): with huge pages, or with version 3, a full cache costs
/// 7 to 17 MiB more. Measured with benches/load.sh, 10,000 cached images:
/// RSS 53.5 MiB with glibc, 64 MiB (v3), 54 MiB (v2), 47 MiB (v2, no THP).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
