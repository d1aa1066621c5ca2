//! `archway inspect IMAGE...`: the platforms each image publishes.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::lookup::cache::Inspector;
use crate::lookup::image::ImageRef;
use crate::lookup::registry::{Credential, InspectError, RegistryClient};
use crate::report::Format;

pub async fn run(
    config: &Config,
    images: &[String],
    format: Format,
    credentials: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    // Counted into the settings' own metrics registry, which nothing serves.
    let mut settings = config.registry_settings()?;
    if let Some(path) = credentials {
        let mut keyring =
            crate::lookup::registry::Keyring::from_docker_config(&std::fs::read(path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        keyring.extend(&settings.keyring);
        settings.keyring = keyring;
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
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json_rows(&results))?),
        Format::Table | Format::Html => print!("{}", table(&results)),
    }
    if results
        .iter()
        .any(|(_, r)| matches!(r, Err(e) if private_refusal(e)))
    {
        eprintln!("{PLAIN_HTTP_HINT}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

type Lookup = (String, crate::lookup::cache::Lookup);

/// What works for a local registry, which is what most who meet the
/// refusal of a private address are trying.
const PLAIN_HTTP_HINT: &str = "hint: a registry on a private address that speaks plain HTTP \
(e.g. a local one on 127.0.0.1:5000) needs --insecure-registry HOST:PORT (or registry.insecure \
in the configuration); registry.allowPrivate is for HTTPS registries";

fn private_refusal(error: &InspectError) -> bool {
    matches!(error, InspectError::Refused { reason, .. } if reason.contains("allowPrivate"))
}

fn json_rows(results: &[Lookup]) -> Vec<serde_json::Value> {
    results
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
        .collect()
}

fn table(results: &[Lookup]) -> String {
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
    crate::report::table(&["IMAGE", "PLATFORMS", "DIGEST"], &rows)
}
