//! The checks the fuzz targets run; `tests/fuzz_regressions.rs` includes
//! the same file to replay the corpus without a fuzzer.

pub mod checks;
