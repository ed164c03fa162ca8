//! The first bytes of a connection, read for what the client meant to speak: a TLS client on a
//! plaintext route, or a plaintext MLLP client on a TLS route, so that either is told the fix in
//! the log rather than failing obscurely. Owns only these two judgements on bytes; must not know
//! sockets, sessions or routes.

/// Whether the first byte a client sent on a TLS listener starts plain MLLP rather than a TLS
/// record (0x16): the route's start byte (0x0B by default), or an ASCII letter (an unframed
/// `MSH|...`, or a text protocol).
pub fn looks_like_plaintext_mllp(first: u8, start: u8) -> bool {
    first != 0x16 && (first == start || first == 0x0B || first.is_ascii_alphabetic())
}

/// A TLS record header (handshake, SSL 3.0 to TLS 1.3 record versions) at the start of what a
/// plaintext sender sent: a client configured for TLS against a plaintext port.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, 0x00..=0x04, ..])
}

/// Fuzz entry (the `first_bytes` target): for any bytes and any start byte, the two readings
/// never both hold, a TLS record is never read as MLLP, a frame that starts with the route's
/// start byte (other than 0x16) is never read as TLS, and a TLS verdict rests on the record
/// header alone.
pub fn fuzz_first_bytes(data: &[u8]) {
    let Some((&start, bytes)) = data.split_first() else {
        return;
    };
    let tls = looks_like_tls(bytes);
    if let Some(&first) = bytes.first() {
        let mllp = looks_like_plaintext_mllp(first, start);
        assert!(!(tls && mllp), "read as TLS and as MLLP at once");
        if first == start && start != 0x16 {
            assert!(mllp && !tls, "a frame's start byte was not read as MLLP");
        }
    }
    if tls {
        assert!(bytes.len() >= 3 && bytes[..2] == [0x16, 0x03] && bytes[2] <= 0x04);
        assert!(
            looks_like_tls(&bytes[..3]),
            "the verdict needs only the header"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_is_tls_and_an_mllp_frame_is_not() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_tls(b"\x0bMSH|^~\\&|"));
        assert!(!looks_like_tls(&[0x16, 0x03]));
        assert!(looks_like_plaintext_mllp(0x0b, 0x0b));
        assert!(looks_like_plaintext_mllp(b'M', 0x0b));
        assert!(!looks_like_plaintext_mllp(0x16, 0x16));
        fuzz_first_bytes(&[0x0b, 0x0b, b'M']);
        fuzz_first_bytes(&[0x16, 0x16, 0x03, 0x03]);
    }
}
