//! Frame decode throughput: 1 KiB, 64 KiB and 1 MiB frames, fed either whole (one buffer) or
//! trickled in 1460-byte reads (TCP segments; each read is copied into the buffer, as a
//! socket read would be, and the decoder is called after each one).
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 2`
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mllp_guard::wire::codec::{encode, Decoded, Decoder};

/// TCP segment payload size for the trickled case.
const SEGMENT: usize = 1460;

/// A synthetic ORU^R01-looking payload of exactly `len` bytes (no 0x0B/0x1C inside).
fn hl7_payload(len: usize) -> Vec<u8> {
    let mut p = b"MSH|^~\\&|SYNTH_SEND|SYNTH_FAC|SYNTH_RECV|SYNTH_DEST|20240102030405||ORU^R01^ORU_R01|BENCH0001|P|2.5.1\rPID|1||MRN0001^^^SYNTH^MR||DOE^JANE||19800101|F\r".to_vec();
    let mut i = 0u32;
    while p.len() < len {
        i += 1;
        let seg = format!(
            "OBX|{i}|NM|2345-7^GLUCOSE^LN||{}|mg/dL|70-99|N|||F\r",
            80 + i % 40
        );
        p.extend_from_slice(seg.as_bytes());
    }
    p.truncate(len);
    p
}

fn decode_one(decoder: &mut Decoder, buf: &mut BytesMut) -> usize {
    match decoder.decode(buf) {
        Some(Decoded::Frame(frame)) => frame.len(),
        other => panic!("expected one frame, got {other:?}"),
    }
}

fn frame_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_decode");
    for (label, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let wire = encode(&hl7_payload(size));
        group.throughput(Throughput::Bytes(wire.len() as u64));

        group.bench_with_input(BenchmarkId::new("whole", label), &wire, |b, wire| {
            let mut decoder = Decoder::new(2 << 20);
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| black_box(decode_one(&mut decoder, buf)),
                BatchSize::LargeInput,
            );
        });

        group.bench_with_input(BenchmarkId::new("trickled", label), &wire, |b, wire| {
            let mut decoder = Decoder::new(2 << 20);
            b.iter(|| {
                let mut buf = BytesMut::with_capacity(16 * 1024);
                let mut got = 0;
                for read in wire.chunks(SEGMENT) {
                    buf.extend_from_slice(read);
                    if let Some(Decoded::Frame(frame)) = decoder.decode(&mut buf) {
                        got += frame.len();
                    }
                }
                assert_eq!(got, wire.len() - 3);
                black_box(got)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, frame_decode);
criterion_main!(benches);
