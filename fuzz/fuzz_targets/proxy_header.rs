#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mllp_guard::net::proxy_protocol::fuzz_header(data));
