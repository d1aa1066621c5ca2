//! The fuzz corpus replayed as a plain test, no fuzzer needed: every file
//! of `tests/data/fuzz/<target>/` goes through the same check its cargo-fuzz
//! target runs (`fuzz/src/checks.rs`, included here), which panics when an
//! invariant fails. `fuzz/run.sh` adds what fuzzing finds: a minimized
//! corpus next to the hand-written seeds, and crashing inputs under
//! `crashes/`, replayed by the ignored tests below until they are fixed.

#[path = "../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

fn data_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target)
}

/// The regular files directly in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs `target`'s check on every file; returns the failures, each with
/// its file name and panic message.
fn replay(target: &str, files: &[PathBuf], known: checks::Known) -> Vec<String> {
    let mut failures = Vec::new();
    for file in files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| checks::run_with(target, &data, known));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let message: String = message.chars().take(600).collect();
            failures.push(format!("{}: {message}", file.display()));
        }
    }
    failures
}

fn corpus_passes(target: &str) {
    let files = files_in(&data_dir(target));
    assert!(
        files.len() >= 3,
        "{target}: the corpus in {} is missing",
        data_dir(target).display()
    );
    let failures = replay(target, &files, checks::Known::Tolerated);
    eprintln!(
        "{target}: {} corpus files, {} failed",
        files.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The crashes fuzzing found for `target` (under `crashes/<class>/`),
/// replayed strictly (the fuzz targets step around known bugs): they pass
/// once the bug is fixed; then move them into the corpus.
fn crashes_pass(target: &str, class: &str) {
    let dir = data_dir(target).join("crashes").join(class);
    let files = files_in(&dir);
    assert!(!files.is_empty(), "no crash inputs in {}", dir.display());
    let failures = replay(target, &files, checks::Known::Fail);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn admission_review_corpus() {
    corpus_passes("admission_review");
}

#[test]
fn image_reference_corpus() {
    corpus_passes("image_reference");
}

#[test]
fn manifest_corpus() {
    corpus_passes("manifest");
}

#[test]
fn patch_corpus() {
    corpus_passes("patch");
}

/// Every target directory exists and every crash class directory is
/// replayed by a test here, so nothing fuzzing found is forgotten.
#[test]
fn every_crash_class_has_a_test() {
    let this =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file!())).unwrap();
    for target in checks::TARGETS {
        assert!(data_dir(target).is_dir(), "{target}");
        for class in std::fs::read_dir(data_dir(target).join("crashes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let class = class.file_name().to_string_lossy().into_owned();
            assert!(
                this.contains(&format!("crashes_pass(\"{target}\", \"{class}\")")),
                "tests/data/fuzz/{target}/crashes/{class} is replayed by no test"
            );
        }
    }
}

/// `registry-1.docker.io/x` is read as registry `docker.io`, repository
/// `x` (oci-spec adds `library/` only for `docker.io` and
/// `index.docker.io`), and printed as `docker.io/x:latest`, which reads back
/// as `docker.io/library/x`: two different images, and the message and cache
/// key name the wrong one.
#[test]
fn image_reference_crashes_registry_1_alias() {
    crashes_pass("image_reference", "registry-1-alias");
}

/// A Pod object without `metadata` (the API server always sends it; any
/// other client can leave it out) is patched with `add
/// /metadata/annotations`, which JSON Patch cannot apply: the parent is
/// missing. The pod was decided from `Pod::default()` metadata.
#[test]
fn admission_review_crashes_metadata_absent() {
    crashes_pass("admission_review", "metadata-absent");
}

#[test]
fn patch_crashes_metadata_absent() {
    crashes_pass("patch", "metadata-absent");
}

/// `HHH/app:v1` parses: oci-spec's grammar allows uppercase in what could
/// be a domain, then `HHH` (no `.` or `:`) turns out to be part of the
/// Docker Hub repository `HHH/app`, whose case nobody checks. Docker and
/// containerd refuse it ("repository name must be lowercase"), so the
/// kubelet never pulls it, while archway asks Docker Hub for it; and its
/// printed form `docker.io/HHH/app:v1` does not parse.
#[test]
fn image_reference_crashes_uppercase_repository() {
    crashes_pass("image_reference", "uppercase-repository");
}
