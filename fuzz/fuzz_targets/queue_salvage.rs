#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mllp_guard::queue::fuzz_survey(data));
