#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mllp_guard::inbound::sniff::fuzz_first_bytes(data));
