#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mllp_guard::wire::ack::fuzz_ack(data));
