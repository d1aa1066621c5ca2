#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| archway_fuzz::checks::manifest(data));
