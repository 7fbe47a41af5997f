#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tinylens_tests::fuzz_targets::tl_safetensors(data));
