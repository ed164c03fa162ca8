#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mllp_guard::firewall::rules::fuzz_rules(data));
