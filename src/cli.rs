//! The command line: `archway serve | inspect | review | certs`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::cache::Inspector;
use crate::config::Config;
use crate::image::ImageRef;
use crate::registry::{Credential, InspectError, RegistryClient};

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
    #[arg(long, global = true, env = "ARCHWAY_LOG", default_value = "info")]
    pub log: String,
    /// Target architecture, over the configuration file's.
    #[arg(long, global = true, env = "ARCHWAY_TARGET_ARCHITECTURE")]
    pub target_architecture: Option<String>,
    /// Deny what cannot be decided instead of admitting it unchanged.
    #[arg(long, global = true, env = "ARCHWAY_FAIL_CLOSED")]
    pub fail_closed: Option<bool>,
    /// Time budget of one review, e.g. `2500ms`.
    #[arg(long, global = true, env = "ARCHWAY_TIME_BUDGET", value_parser = humantime::parse_duration)]
    pub time_budget: Option<Duration>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the webhook: HTTPS /mutate and the admin port.
    Serve {
        /// Webhook address, over the configuration's server.listen.
        #[arg(long, env = "ARCHWAY_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Admin address (healthz, readyz, metrics).
        #[arg(long, env = "ARCHWAY_ADMIN_LISTEN")]
        admin_listen: Option<std::net::SocketAddr>,
        /// Serving certificate (PEM chain); reloaded when it changes.
        #[arg(long, env = "ARCHWAY_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, env = "ARCHWAY_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Without a certificate, where the self-signed CA is written so a
        /// client can trust it.
        #[arg(long, default_value = "certs/local")]
        self_signed_dir: PathBuf,
    },
    /// Show what archway would do to the pods and pod templates in a YAML file.
    Review {
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Namespace for objects that name none.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Rollout to assume, over the namespace's.
        #[arg(long)]
        rollout: Option<crate::policy::Rollout>,
        #[arg(long, short = 'o', default_value = "table")]
        output: Output,
    },
    /// Scan the cluster of the current kubeconfig context: what each
    /// workload's images support, where it runs, what archway would do, and
    /// what blocks a move to the target architecture.
    Audit {
        /// Only this namespace (default: all).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, short = 'o', default_value = "table")]
        output: crate::audit::AuditOutput,
    },
    /// Make a CA and a serving certificate for the webhook's Service.
    Certs {
        #[arg(long, default_value = "archway")]
        service: String,
        #[arg(long, default_value = "archway")]
        namespace: String,
        /// Where ca.crt, tls.crt and tls.key are written.
        #[arg(long, default_value = "certs/generated")]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Show the platforms each image publishes.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(long, short = 'o', default_value = "table")]
        output: Output,
        /// Docker config.json with credentials (as in a pull secret).
        #[arg(long, env = "ARCHWAY_CREDENTIALS")]
        credentials: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

impl Cli {
    /// The configuration file with the flags and environment over it.
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(arch) = &self.target_architecture {
            config.target_architecture = arch.clone();
        }
        if let Some(fail_closed) = self.fail_closed {
            config.fail_closed = fail_closed;
        }
        if let Some(budget) = self.time_budget {
            config.time_budget = budget;
        }
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    match cli.command.clone() {
        Command::Serve {
            listen,
            admin_listen,
            tls_cert,
            tls_key,
            self_signed_dir,
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
                let loader: crate::reload::Loader =
                    std::sync::Arc::new(move || cli.load_config().map(&apply_flags));
                (path, loader)
            });
            crate::run::serve(
                config,
                &self_signed_dir,
                reload,
                crate::server::shutdown_signal(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Review {
            file,
            namespace,
            rollout,
            output,
        } => crate::review::run(&config, &file, &namespace, rollout, output).await,
        Command::Audit { namespace, output } => {
            crate::audit::run(&config, namespace.as_deref(), output).await
        }
        Command::Certs {
            service,
            namespace,
            out,
            days,
        } => {
            let mut names = crate::certs::service_names(&service, &namespace);
            names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
            let certs = crate::certs::generate(&names, days)?;
            crate::certs::write(&out, &certs)?;
            eprintln!(
                "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}",
                out.display(),
                names.join(", ")
            );
            eprintln!("caBundle for the MutatingWebhookConfiguration:");
            use base64::Engine;
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(&certs.ca_pem)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            images,
            output,
            credentials,
        } => inspect(&config, &images, output, credentials).await,
    }
}

async fn inspect(
    config: &Config,
    images: &[String],
    output: Output,
    credentials: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut settings = config.registry_settings()?;
    if let Some(path) = credentials {
        let keyring = crate::registry::Keyring::from_docker_config(&std::fs::read(&path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut merged = keyring;
        merged.extend(&settings.keyring);
        settings.keyring = merged;
    }
    let inspector = Inspector::new(RegistryClient::new(settings)?, config.cache_settings());
    let lookups = images.iter().map(|input| {
        let inspector = inspector.clone();
        async move {
            let result = match input.parse::<ImageRef>() {
                Ok(image) => inspector.inspect(&image, &Credential::Anonymous).await.0,
                Err(e) => Err(InspectError::InvalidReference(e.reason)),
            };
            (input.clone(), result)
        }
    });
    let results = futures::future::join_all(lookups).await;
    let failed = results.iter().any(|(_, r)| r.is_err());
    match output {
        Output::Json => {
            let rows: Vec<_> = results
                .iter()
                .map(|(image, result)| match result {
                    Ok(found) => serde_json::json!({
                        "image": image,
                        "digest": found.digest,
                        "shape": found.shape,
                        "platforms": found.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }),
                    Err(error) => serde_json::json!({
                        "image": image,
                        "error": error.to_string(),
                        "reason": error.metric_label(),
                    }),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let rows: Vec<[String; 3]> = results
                .iter()
                .map(|(image, result)| match result {
                    Ok(found) => [
                        image.clone(),
                        found
                            .platforms
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        found.digest.clone(),
                    ],
                    Err(error) => [image.clone(), "-".into(), format!("error: {error}")],
                })
                .collect();
            print!(
                "{}",
                crate::report::table(&["IMAGE", "PLATFORMS", "DIGEST"], &rows)
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
