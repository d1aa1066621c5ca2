//! The command-line tools the install tests run for real: helm and promtool
//! (built from their Go modules by tests/tools/build.sh, once per machine),
//! kubectl (its kustomize) and kubernetes-validate (tests/run.sh installs
//! both).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml::Value;

use crate::repo_root;

/// The Kubernetes version objects are validated against (as tests/deploy.rs).
pub const KUBERNETES_VERSION: &str = "1.33.0";

/// The folder tests/tools/build.sh built helm and promtool into. The first
/// call on a machine builds them (minutes); later ones find them cached.
fn tools_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo_root().join("tests/tools/build.sh");
        // stderr passes through: the build says what it does and how long
        // it took.
        let output = Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed (it needs Go and the Go module proxy)",
            script.display()
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let bin = PathBuf::from(stdout.lines().last().expect("build.sh prints its folder"));
        assert!(bin.is_dir(), "build.sh printed {}", bin.display());
        bin
    })
}

pub fn helm() -> PathBuf {
    tools_bin().join("helm")
}

pub fn promtool() -> PathBuf {
    tools_bin().join("promtool")
}

/// Runs a command, failing with how to get the program when it is missing.
pub fn run(program: impl AsRef<Path>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}. kubectl and kubernetes-validate come from \
                 tests/run.sh; helm and promtool from tests/tools/build.sh",
                program.display()
            )
        })
}

/// Runs a command that must succeed, and returns its stdout.
pub fn run_ok(program: impl AsRef<Path>, args: &[&str]) -> String {
    let output = run(program.as_ref(), args);
    assert!(
        output.status.success(),
        "{} {} failed:\n{}{}",
        program.as_ref().display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The objects of a multi-document YAML stream, empty documents left out.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|object| !object.is_null())
        .collect()
}

/// The kubectl binaries to render kustomizations with: those listed in
/// `ARCHWAY_TEST_KUBECTL` (separated by `:`, as tests/deploy.rs reads it,
/// e.g. one with kustomize v2 and one with v5), else `kubectl` from PATH.
pub fn kubectls() -> Vec<String> {
    let list = std::env::var("ARCHWAY_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let kubectls: Vec<String> = list
        .split(':')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    assert!(
        !kubectls.is_empty(),
        "ARCHWAY_TEST_KUBECTL names no kubectl"
    );
    kubectls
}

/// `KUBECTL kustomize DIR`, split into its objects.
pub fn kustomize_with(kubectl: &str, dir: &Path) -> Vec<Value> {
    let objects = documents(&run_ok(kubectl, &["kustomize", dir.to_str().unwrap()]));
    assert!(!objects.is_empty(), "{kubectl} kustomize rendered nothing");
    objects
}

/// `kubectl kustomize DIR` with the first of `kubectls()`.
pub fn kustomize(dir: &Path) -> Vec<Value> {
    kustomize_with(&kubectls()[0], dir)
}

pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Objects of API groups kubernetes-validate has no schema for (custom
/// resources: cert-manager, the Prometheus Operator).
fn is_custom_resource(object: &Value) -> bool {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    ["cert-manager.io/", "monitoring.coreos.com/"]
        .iter()
        .any(|group| api_version.starts_with(group))
}

/// Every built-in object through `kubernetes-validate --strict` for
/// KUBERNETES_VERSION; Err with its report when one fails, or was not
/// checked at all.
pub fn kubernetes_validate(objects: &[Value]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, object) in objects
        .iter()
        .filter(|o| !is_custom_resource(o))
        .enumerate()
    {
        let path = dir
            .path()
            .join(format!("{i:02}-{}-{}.yaml", kind(object), name(object)));
        std::fs::write(&path, serde_yaml::to_string(object).unwrap()).unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec!["--strict", "-k", KUBERNETES_VERSION];
    args.extend(files.iter().map(String::as_str));
    let output = run("kubernetes-validate", &args);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(format!("kubernetes-validate failed:\n{report}"));
    }
    // An unknown kind only warns: here every object must have been checked.
    if report.contains("Couldn't find schema") {
        return Err(format!(
            "objects kubernetes-validate cannot check:\n{report}"
        ));
    }
    if report.matches(" passed ").count() != files.len() {
        return Err(format!("not every object passed:\n{report}"));
    }
    Ok(())
}

pub fn validate(objects: &[Value]) {
    if let Err(report) = kubernetes_validate(objects) {
        panic!("{report}");
    }
}
