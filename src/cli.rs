//! The command line: `archway serve | review | audit | inspect | certs | ungate |
//! rollback`.
//! Each command's work lives in its own module; this one parses the flags
//! and lays them over the configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::report::Format;
use crate::telemetry::LogFormat;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "archway",
    version,
    about = "Steers Kubernetes pods to the CPU architectures their images publish"
)]
pub struct Cli {
    /// Configuration file (YAML). Without one, every setting has its default.
    #[arg(long, short = 'c', global = true, env = "ARCHWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "ARCHWAY_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `archway=debug`.
    #[arg(long, global = true, env = "ARCHWAY_LOG", default_value = "info", value_parser = log_filter)]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// The settings of the decision, for the commands that decide.
#[derive(Args, Debug, Clone, Default)]
pub struct DecisionFlags {
    /// Target architecture, over the configuration file's.
    #[arg(long, env = "ARCHWAY_TARGET_ARCHITECTURE")]
    pub target_architecture: Option<String>,
    /// Deny what cannot be decided instead of admitting it unchanged.
    #[arg(long, env = "ARCHWAY_FAIL_CLOSED")]
    pub fail_closed: Option<bool>,
    /// Time budget of one review, e.g. `2500ms`.
    #[arg(long, env = "ARCHWAY_TIME_BUDGET", value_parser = humantime::parse_duration)]
    pub time_budget: Option<Duration>,
}

/// Registry access, for the commands that look images up.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryFlags {
    /// A registry that speaks plain HTTP, e.g. a local one on
    /// 127.0.0.1:5000 (repeatable; added to registry.insecure, which also
    /// lets archway connect to its private address).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the webhook: HTTPS /mutate and the admin port.
    Serve {
        #[command(flatten)]
        decision: DecisionFlags,
        #[command(flatten)]
        registry: RegistryFlags,
        /// Webhook address, over the configuration's server.listen.
        #[arg(long, env = "ARCHWAY_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Admin address (healthz, readyz, metrics).
        #[arg(long, env = "ARCHWAY_ADMIN_LISTEN")]
        admin_listen: Option<std::net::SocketAddr>,
        /// Serving certificate (PEM chain); reloaded when it changes.
        #[arg(long, env = "ARCHWAY_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Private key of the serving certificate (PEM).
        #[arg(long, env = "ARCHWAY_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Without a certificate, where the self-signed CA is written so a
        /// client can trust it.
        #[arg(long, default_value = "certs/local")]
        self_signed_dir: PathBuf,
    },
    /// Show what archway would do to the pods and pod templates in a YAML file.
    Review {
        #[command(flatten)]
        decision: DecisionFlags,
        #[command(flatten)]
        registry: RegistryFlags,
        /// YAML file of pods, workloads or Lists (several documents allowed).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Namespace for objects that name none.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Rollout to assume, over the namespace's.
        #[arg(long)]
        rollout: Option<crate::decision::policy::Rollout>,
        /// Output format.
        #[arg(long, short = 'o', default_value = "table", value_parser = table_or_json())]
        output: Format,
    },
    /// Scan the cluster of the current kubeconfig context: what each
    /// workload's images support, where it runs, what archway would do, and
    /// what blocks a move to the target architecture.
    Audit {
        #[command(flatten)]
        decision: DecisionFlags,
        #[command(flatten)]
        registry: RegistryFlags,
        /// Only this namespace (default: all).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Output format.
        #[arg(long, short = 'o', default_value = "table")]
        output: Format,
    },
    /// Make a CA and a serving certificate for the webhook's Service.
    Certs {
        /// Name of the webhook's Service.
        #[arg(long, default_value = "archway")]
        service: String,
        /// Namespace of the webhook's Service.
        #[arg(long, default_value = "archway")]
        namespace: String,
        /// Where ca.crt, tls.crt and tls.key are written.
        #[arg(long, default_value = "certs/generated")]
        out: PathBuf,
        /// How long the certificates are valid, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite certificates and a key already in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Remove archway's scheduling gate (archway.dev/inspect) from every pod
    /// that carries it, without placing them: before uninstalling archway,
    /// or to let pods go at once. Uses the current kubeconfig context.
    Ungate {
        /// Only this namespace (default: all).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Roll one namespace back off the target architecture, without
    /// draining nodes. Uses the current kubeconfig context.
    ///
    /// Sets the namespace's archway.dev/rollout to 0 and pauses its ramp
    /// (archway.dev/ramp-status), in one patch, then lists the Deployments
    /// and StatefulSets with pods on nodes of the target architecture.
    /// DaemonSets are left out: their pods are pinned one per node, not
    /// steered by the rollout. With --restart, restarts the listed
    /// workloads one at a time as `kubectl rollout restart` does, each
    /// waited for until it is available again; their new pods follow
    /// rollout 0. Progress goes to stderr, the report to stdout.
    Rollback {
        /// The namespace to roll back.
        #[arg(long, short = 'n')]
        namespace: String,
        /// Restart the listed workloads, one at a time, so their pods leave
        /// the target architecture.
        #[arg(long)]
        restart: bool,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long each restarted workload may take to be available again.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Target architecture, over the configuration file's: the pods on
        /// nodes of this architecture are the ones rolled back.
        #[arg(long, env = "ARCHWAY_TARGET_ARCHITECTURE")]
        target_architecture: Option<String>,
        /// Output format.
        #[arg(long, short = 'o', default_value = "table", value_parser = table_or_json())]
        output: Format,
    },
    /// Show the platforms each image publishes.
    Inspect {
        #[command(flatten)]
        registry: RegistryFlags,
        /// Image references, e.g. `nginx:1.27` or `ghcr.io/org/app@sha256:...`.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Output format.
        #[arg(long, short = 'o', default_value = "table", value_parser = table_or_json())]
        output: Format,
        /// Docker config.json with credentials (as in a pull secret).
        #[arg(long, env = "ARCHWAY_CREDENTIALS")]
        credentials: Option<PathBuf>,
    },
}

/// `table` or `json`: HTML is the audit's alone.
fn table_or_json() -> impl clap::builder::TypedValueParser<Value = Format> {
    clap::builder::PossibleValuesParser::new(["table", "json"]).map(|s| match s.as_str() {
        "json" => Format::Json,
        _ => Format::Table,
    })
}

/// A log filter that tracing can read: a mistake is an error at start,
/// not a silent `info`.
fn log_filter(value: &str) -> Result<String, String> {
    crate::telemetry::check_filter(value).map(|()| value.to_string())
}

impl Command {
    /// Lays the command's flags over `config`.
    fn apply(&self, config: &mut Config) {
        let (decision, registry) = match self {
            Command::Serve {
                decision, registry, ..
            }
            | Command::Review {
                decision, registry, ..
            }
            | Command::Audit {
                decision, registry, ..
            } => (Some(decision), Some(registry)),
            Command::Inspect { registry, .. } => (None, Some(registry)),
            Command::Certs { .. } | Command::Ungate { .. } => (None, None),
            Command::Rollback {
                target_architecture,
                ..
            } => {
                if let Some(arch) = target_architecture {
                    config.target_architecture = arch.clone();
                }
                (None, None)
            }
        };
        if let Some(flags) = decision {
            if let Some(arch) = &flags.target_architecture {
                config.target_architecture = arch.clone();
            }
            if let Some(fail_closed) = flags.fail_closed {
                config.fail_closed = fail_closed;
            }
            if let Some(budget) = flags.time_budget {
                config.time_budget = budget;
            }
        }
        for host in registry.iter().flat_map(|r| &r.insecure_registries) {
            if !config.registry.insecure.contains(host) {
                config.registry.insecure.push(host.clone());
            }
        }
    }
}

/// The command-line reference (docs/cli.md), from the flags themselves:
/// each command's `--help`, so the document cannot drift from the code
/// (`tests/docs.rs` checks it).
pub fn reference() -> String {
    use clap::CommandFactory;
    let mut root = Cli::command().term_width(100);
    root.build();
    let mut out = String::from(
        "# Command-line reference\n\nGenerated from `archway --help` (`ARCHWAY_BLESS=1 cargo test --test docs` rewrites it).\n",
    );
    let mut section = |title: &str, command: &mut clap::Command| {
        let help = command.render_long_help().to_string();
        out.push_str(&format!(
            "\n## `{title}`\n\n```text\n{}\n```\n",
            help.trim_end()
        ));
    };
    section("archway", &mut root.clone());
    for sub in root.get_subcommands_mut() {
        let title = format!("archway {}", sub.get_name());
        section(&title, sub);
    }
    out
}

impl Cli {
    /// The configuration file with the flags and environment over it.
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.command.apply(&mut config);
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // `certs` and `ungate` read no configuration: a broken file must not
    // stop making a certificate or letting gated pods go.
    let config = match &cli.command {
        Command::Certs { .. } | Command::Ungate { .. } => Config::default(),
        _ => cli.load_config()?,
    };
    match cli.command.clone() {
        Command::Serve {
            listen,
            admin_listen,
            tls_cert,
            tls_key,
            self_signed_dir,
            ..
        } => {
            let apply_flags = move |mut config: Config| {
                config.server.listen = listen.unwrap_or(config.server.listen);
                config.server.admin_listen = admin_listen.unwrap_or(config.server.admin_listen);
                if let (Some(cert), Some(key)) = (&tls_cert, &tls_key) {
                    config.server.cert_file = Some(cert.clone());
                    config.server.key_file = Some(key.clone());
                }
                config
            };
            let config = apply_flags(config);
            // The file is watched and reloaded with the same flags over it.
            let reload = cli.config.clone().map(|path| {
                let cli = cli.clone();
                let loader: crate::serve::reload::Loader =
                    std::sync::Arc::new(move || cli.load_config().map(&apply_flags));
                (path, loader)
            });
            crate::serve::runtime::run(
                config,
                &self_signed_dir,
                reload,
                crate::serve::server::shutdown_signal(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Review {
            file,
            namespace,
            rollout,
            output,
            ..
        } => crate::commands::review::run(&config, &file, &namespace, rollout, output).await,
        Command::Audit {
            namespace, output, ..
        } => crate::commands::audit::run(&config, namespace.as_deref(), output).await,
        Command::Certs {
            service,
            namespace,
            out,
            days,
            force,
        } => crate::certs::run(&service, &namespace, &out, days, force),
        Command::Ungate { namespace } => {
            let client = kube::Client::try_default().await?;
            let ungated =
                crate::controllers::gate::ungate_all(client, namespace.as_deref()).await?;
            println!("removed archway's scheduling gate from {ungated} pod(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback {
            namespace,
            restart,
            dry_run,
            timeout,
            output,
            ..
        } => {
            let options = crate::commands::rollback::Options {
                namespace,
                restart,
                dry_run,
                timeout,
                format: output,
            };
            crate::commands::rollback::run(&config, &options).await
        }
        Command::Inspect {
            images,
            output,
            credentials,
            ..
        } => crate::commands::inspect::run(&config, &images, output, credentials.as_deref()).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn a_log_filter_tracing_cannot_read_is_an_error() {
        let parse =
            |filter: &str| Cli::try_parse_from(["archway", "--log", filter, "inspect", "nginx"]);
        assert!(parse("archway=debug,info").is_ok());
        let error = parse("archway=loud").unwrap_err().to_string();
        assert!(error.contains("not a log filter"), "{error}");
    }

    #[tokio::test]
    async fn certs_need_no_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("archway.yaml");
        std::fs::write(&broken, "notAField: 1\n").unwrap();
        let out = dir.path().join("certs");
        let cli = Cli::try_parse_from([
            "archway".as_ref(),
            "--config".as_ref(),
            broken.as_os_str(),
            "certs".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert_eq!(run(cli).await.unwrap(), ExitCode::SUCCESS);
        assert!(out.join("tls.crt").exists());
        // Others do read it.
        let cli = Cli::try_parse_from([
            "archway".as_ref(),
            "--config".as_ref(),
            broken.as_os_str(),
            "inspect".as_ref(),
            "nginx".as_ref(),
        ])
        .unwrap();
        assert!(run(cli).await.is_err());
    }
}
