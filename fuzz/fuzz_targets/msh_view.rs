#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mllp_guard::wire::hl7::fuzz_header(data));
