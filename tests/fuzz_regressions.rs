//! The fuzz corpus replayed as a plain test, no fuzzer needed: every file
//! of `tests/data/fuzz/<target>/` goes through the same check its cargo-fuzz
//! target runs (`fuzz/src/checks.rs`, included here), which panics when an
//! invariant fails. `fuzz/run.sh` adds what fuzzing finds: a minimized
//! corpus next to the hand-written seeds, and crashing inputs under
//! `crashes/<class>/`, one class per bug, each replayed by a test below
//! (ignored while the bug is open).

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
fn replay(target: &str, files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for file in files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| checks::run(target, &data));
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
    let failures = replay(target, &files);
    eprintln!(
        "{target}: {} corpus files, {} failed",
        files.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The inputs fuzzing found for one bug of `target` (`crashes/<class>/`).
/// The test that replays them is ignored while the bug is open, and stays
/// as a regression test once it is fixed.
fn crashes_pass(target: &str, class: &str) {
    let dir = data_dir(target).join("crashes").join(class);
    let files = files_in(&dir);
    assert!(!files.is_empty(), "no crash inputs in {}", dir.display());
    let failures = replay(target, &files);
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

/// Was a bug: `registry-1.docker.io/x` was read as registry `docker.io`, repository
/// `x` (oci-spec adds `library/` only for `docker.io` and
/// `index.docker.io`), and printed as `docker.io/x:latest`, which reads
/// back as `docker.io/library/x`: two different images.
#[test]
fn image_reference_crashes_registry_1_alias() {
    crashes_pass("image_reference", "registry-1-alias");
}

/// Was a bug: a Pod object without `metadata` (the API server always sends
/// it; any other client can leave it out) was patched with `add
/// /metadata/annotations`, which JSON Patch cannot apply: the parent is
/// missing.
#[test]
fn admission_review_crashes_metadata_absent() {
    crashes_pass("admission_review", "metadata-absent");
}

/// Was a bug in the check, not in archway: the object sent had
/// `hostNetwork: [..]`, so it was no Pod before archway's patch either, and
/// the check demanded a Pod after it. The API server decodes the object into
/// a Pod before admission, so archway never sees one; the check now asks the
/// patch to keep a Pod a Pod.
#[test]
fn admission_review_crashes_not_a_pod() {
    crashes_pass("admission_review", "not-a-pod");
}

#[test]
fn patch_crashes_metadata_absent() {
    crashes_pass("patch", "metadata-absent");
}

/// Was a bug: `HHH/app:v1` parsed (oci-spec's grammar allows uppercase in
/// what could be a domain, then `HHH`, without `.` or `:`, is part of the
/// Docker Hub repository `HHH/app`, whose case nobody checked). Docker and
/// containerd refuse it ("repository name must be lowercase"), and its
/// printed form `docker.io/HHH/app:v1` did not parse.
#[test]
fn image_reference_crashes_uppercase_repository() {
    crashes_pass("image_reference", "uppercase-repository");
}
