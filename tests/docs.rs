//! The reference documents that are generated from the code, or checked
//! against it: docs/cli.md from the flags, docs/metrics.md against the
//! metrics archway registers. `ARCHWAY_BLESS=1 cargo test --test docs`
//! rewrites the generated ones.

use std::path::PathBuf;

fn doc(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name)
}

#[test]
fn the_cli_reference_is_the_flags_help() {
    let generated = archway::cli::reference();
    let path = doc("cli.md");
    if std::env::var("ARCHWAY_BLESS").is_ok() {
        std::fs::write(&path, &generated).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/cli.md is not what the flags say: run ARCHWAY_BLESS=1 cargo test --test docs"
    );
}

/// Every metric archway registers is in docs/metrics.md, and every metric
/// the document names exists. What is registered is read from the
/// registrations in src/metrics.rs (a family with no sample yet is not in
/// `/metrics` at all); what is served is checked against it too.
#[test]
fn the_metrics_reference_names_every_metric_and_no_other() {
    let source =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
            .unwrap();
    let mut registered: Vec<String> = Vec::new();
    for call in source.split("registry.register(").skip(1) {
        let name = call.split('"').nth(1).unwrap();
        // The family's type: counters are exposed with `_total`.
        let before_clone = call.split(".clone()").next().unwrap_or_default();
        let variable = before_clone.rsplit(',').next().unwrap_or_default().trim();
        let counter = kind_is_counter(&source, variable)
            || source.contains(&format!("let {variable} = Counter::default()"));
        registered.push(match counter {
            true => format!("archway_{name}_total"),
            false => format!("archway_{name}"),
        });
    }
    registered.sort();
    let written = std::fs::read_to_string(doc("metrics.md")).unwrap();
    let mut documented: Vec<String> = written
        .lines()
        .filter_map(|l| l.strip_prefix("| `archway_"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| format!("archway_{name}"))
        .collect();
    documented.sort();
    assert_eq!(
        documented, registered,
        "docs/metrics.md against src/metrics.rs"
    );
    // And what a registry with samples serves is among them.
    let served = archway::metrics::Metrics::default();
    served.cache_lookup(true);
    served.review_warnings.inc();
    for line in served
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
    {
        let (name, kind) = line.split_once(' ').unwrap();
        let exposed = match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_string(),
        };
        assert!(
            registered.contains(&exposed),
            "{exposed} is served but not registered"
        );
    }
}

/// Whether the variable `name` holds a family of counters.
fn kind_is_counter(source: &str, name: &str) -> bool {
    let declaration = format!("let {name} = Family::<");
    source
        .split(&declaration)
        .nth(1)
        .and_then(|rest| rest.split(">::").next())
        .is_some_and(|types| types.trim_end().ends_with("Counter"))
}
