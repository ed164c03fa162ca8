use super::*;
use tokio::io::AsyncWriteExt;

fn frame_of(payload: &[u8]) -> Vec<u8> {
    codec::encode_with(Framing::MLLP, payload).to_vec()
}

fn payload_of(item: Option<Decoded>) -> Vec<u8> {
    match item {
        Some(Decoded::Frame(frame)) => frame.payload().to_vec(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idle_link_holds_no_buffer_before_or_after_a_frame() {
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let mut link = Link::new(ours, 1 << 20);
    assert_eq!(link.buf.capacity(), 0, "a new link allocates nothing");

    theirs.write_all(&frame_of(b"MSH|^~\\&|A")).await.unwrap();
    assert_eq!(payload_of(link.next().await.unwrap()), b"MSH|^~\\&|A");
    // Waiting for the next frame lets go of the last one's buffer.
    assert_eq!(link.read_ready(), Ready::Nothing);
    assert_eq!(
        link.buf.capacity(),
        0,
        "a link between frames holds no buffer"
    );
}

#[tokio::test]
async fn frames_arriving_together_or_in_pieces_come_out_whole_and_in_order() {
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let mut link = Link::new(ours, 1 << 20);
    // A frame larger than both the pipe and the scratch buffer, then two small ones in
    // one write: the first read lands in the scratch buffer, the rest straight in the link's.
    let big: Vec<u8> = (0..200_000u32).map(|i| b'A' + (i % 26) as u8).collect();
    let mut wire = frame_of(&big);
    wire.extend(frame_of(b"second"));
    wire.extend(frame_of(b"third"));
    let writer = tokio::spawn(async move {
        theirs.write_all(&wire).await.unwrap();
        theirs
    });
    assert_eq!(payload_of(link.next().await.unwrap()), big);
    assert_eq!(payload_of(link.next().await.unwrap()), b"second");
    assert_eq!(payload_of(link.next().await.unwrap()), b"third");
    drop(writer.await.unwrap());
    assert!(link.next().await.unwrap().is_none(), "end of stream");
}

#[tokio::test]
async fn a_frame_like_the_last_large_one_gets_its_room_at_once() {
    let (ours, mut theirs) = tokio::io::duplex(4096);
    let mut link = Link::new(ours, 1 << 20);
    let big = frame_of(&[b'x'; 300_000]);
    let first = {
        let big = big.clone();
        tokio::spawn(async move {
            theirs.write_all(&big).await.unwrap();
            theirs
        })
    };
    assert!(matches!(
        link.next().await.unwrap(),
        Some(Decoded::Frame(_))
    ));
    let mut theirs = first.await.unwrap();
    // The next large frame gets room for all of it once it is past READ_CHUNK and needs
    // more room: by 64 KiB read, doubling alone would have reached at most 128 KiB.
    let mut sent = 0;
    while link.buf.len() < 64 * 1024 {
        let piece = &big[sent..sent + 4096];
        theirs.write_all(piece).await.unwrap();
        sent += piece.len();
        while link.buf.len() < sent {
            link.read_more().await.unwrap();
        }
    }
    assert!(
        link.buf.capacity() >= big.len(),
        "room for the whole frame, not {}",
        link.buf.capacity()
    );
    let room = link.buf.as_ptr();
    let rest = big[sent..].to_vec();
    let writer = tokio::spawn(async move {
        theirs.write_all(&rest).await.unwrap();
        theirs
    });
    // Read 4 KiB at a time to its end, it stays where its room was made: its last few KiB do
    // not make the link grow (and copy) the buffer.
    match link.next().await.unwrap() {
        Some(Decoded::Frame(frame)) => {
            assert_eq!(frame.as_wire(), &big[..]);
            assert_eq!(
                frame.as_wire().as_ptr(),
                room,
                "the frame was copied at its end"
            );
        }
        other => panic!("not the frame: {other:?}"),
    }
    let mut theirs = writer.await.unwrap();
    // A small frame that needs two reads gets ordinary room, not the large one's size.
    let small = frame_of(b"MSH|^~\\&|small");
    theirs.write_all(&small[..5]).await.unwrap();
    assert_eq!(link.read_more().await.unwrap(), 5);
    theirs.write_all(&small[5..]).await.unwrap();
    assert!(link.read_more().await.unwrap() > 0);
    assert!(link.buf.capacity() < 100_000, "{}", link.buf.capacity());
    assert!(matches!(link.try_decode(), Some(Decoded::Frame(_))));
}

#[tokio::test]
async fn a_closed_peer_reads_as_closed_without_a_buffer() {
    let (ours, theirs) = tokio::io::duplex(1024);
    let mut link = Link::new(ours, 1024);
    drop(theirs);
    assert_eq!(link.read_ready(), Ready::Closed);
    assert_eq!(link.buf.capacity(), 0);
}

#[tokio::test]
async fn a_payload_goes_out_framed_in_one_write_whether_the_stream_takes_slices_or_not() {
    use tokio::io::AsyncReadExt;
    // TCP takes vectored writes; an in-memory pipe does not.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut accepted, _) = listener.accept().await.unwrap();
    assert!(tcp.is_write_vectored());
    let mut link = Link::new(tcp, 1024);
    link.send_payload(b"MSH|^~\\&|A").await.unwrap();
    drop(link);
    let mut wire = Vec::new();
    accepted.read_to_end(&mut wire).await.unwrap();
    assert_eq!(wire, b"\x0bMSH|^~\\&|A\x1c\x0d");

    /// A stream without vectored writes that counts its writes.
    struct PlainWrites(tokio::io::DuplexStream, usize);
    impl AsyncRead for PlainWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl AsyncWrite for PlainWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.1 += 1;
            Pin::new(&mut self.0).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let ours = PlainWrites(ours, 0);
    assert!(!ours.is_write_vectored());
    let mut link = Link::with_framing(ours, 1024, Framing::new(0x02, b"\x03").unwrap());
    link.send_payload(b"MSH|x").await.unwrap();
    assert_eq!(link.get_ref().1, 1, "one write for the whole frame");
    drop(link);
    let mut wire = Vec::new();
    theirs.read_to_end(&mut wire).await.unwrap();
    assert_eq!(wire, b"\x02MSH|x\x03");
}

/// Copies of a frame, set aside or still in the buffer, go; everything else stays, in order.
#[tokio::test]
async fn remove_copies_takes_only_the_copies_and_keeps_the_order() {
    let (ours, mut theirs) = tokio::io::duplex(4096);
    let mut link = Link::new(ours, 1 << 20);
    link.set_aside([Decoded::Frame(Frame::from_payload(b"MSH|copy").unwrap())]);
    let mut wire = frame_of(b"MSH|other");
    wire.extend(frame_of(b"MSH|copy"));
    wire.extend(frame_of(b"MSH|last"));
    wire.extend(b"\x0bMSH|unfinished");
    theirs.write_all(&wire).await.unwrap();
    assert!(matches!(link.read_ready(), Ready::Bytes(_)));
    assert_eq!(link.remove_copies(b"MSH|copy"), 2);
    assert_eq!(payload_of(link.take_set_aside()), b"MSH|other");
    assert_eq!(payload_of(link.take_set_aside()), b"MSH|last");
    assert!(link.take_set_aside().is_none());
    assert!(link.in_frame(), "an unfinished frame stays in the buffer");
}

/// A frame looked for past others is taken out; the others stay set aside in order, the search
/// stops at MAX_SET_ASIDE frames, and nothing is read from the stream.
#[tokio::test]
async fn take_ahead_takes_the_wanted_frame_and_leaves_the_rest_in_order() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let mut link = Link::new(ours, 1 << 20);
    link.set_aside([Decoded::Frame(Frame::from_payload(b"MSH|1").unwrap())]);
    let mut wire = frame_of(b"MSH|2");
    wire.extend(frame_of(b"ACK|x"));
    wire.extend(frame_of(b"MSH|3"));
    theirs.write_all(&wire).await.unwrap();
    assert!(matches!(link.read_ready(), Ready::Bytes(_)));
    let is_ack =
        |item: &Decoded| matches!(item, Decoded::Frame(f) if f.payload().starts_with(b"ACK"));
    assert_eq!(payload_of(link.take_ahead(is_ack)), b"ACK|x");
    assert!(link.take_ahead(is_ack).is_none());
    for expected in [&b"MSH|1"[..], b"MSH|2", b"MSH|3"] {
        assert_eq!(payload_of(link.take_set_aside()), expected);
    }

    let mut wire = Vec::new();
    for _ in 0..MAX_SET_ASIDE {
        wire.extend(frame_of(b"MSH|waits"));
    }
    wire.extend(frame_of(b"ACK|behind"));
    theirs.write_all(&wire).await.unwrap();
    assert!(matches!(link.read_ready(), Ready::Bytes(_)));
    assert!(
        link.take_ahead(is_ack).is_none(),
        "past MAX_SET_ASIDE frames"
    );
    assert_eq!(link.set_aside_len(), MAX_SET_ASIDE);
    assert_eq!(payload_of(link.take_set_aside()), b"MSH|waits");
    assert_eq!(payload_of(link.take_ahead(is_ack)), b"ACK|behind");
}

#[tokio::test]
async fn a_reused_large_buffer_never_writes_over_a_frame_still_held() {
    // Budgeted links keep large frames' buffers for reuse (warm_buffers): a frame handed out
    // keeps its bytes while later large frames are read, and each frame arrives whole.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let mut link = Link::new(ours, 4 << 20).with_budget(Budget::new(64 << 20));
    let payloads: Vec<Vec<u8>> = (0..4u8)
        .map(|n| {
            (0..700_000u32)
                .map(|i| b'A' + ((i + u32::from(n)) % 26) as u8)
                .collect()
        })
        .collect();
    let wire: Vec<u8> = payloads.iter().flat_map(|p| frame_of(p)).collect();
    let writer = tokio::spawn(async move {
        for piece in wire.chunks(50_000) {
            theirs.write_all(piece).await.unwrap();
        }
        theirs
    });
    let mut held = Vec::new();
    for (n, payload) in payloads.iter().enumerate() {
        let Some(Decoded::Frame(frame)) = link.next().await.unwrap() else {
            panic!("frame {n}");
        };
        assert_eq!(frame.payload(), &payload[..], "frame {n}");
        // The first frame is held throughout; the others are let go after the next arrives.
        if n > 1 {
            held.pop();
        }
        held.push(frame);
        assert_eq!(held[0].payload(), &payloads[0][..], "after frame {n}");
    }
    drop(writer.await.unwrap());
    assert!(link.next().await.unwrap().is_none());
}

#[tokio::test]
async fn a_kept_buffer_larger_than_the_budget_allows_is_never_taken() {
    // A budget just above the largest message: a kept buffer a quarter larger than the frame
    // could never be covered, and a link that took it would wait for the budget forever.
    let max = 1_000_000;
    let (frame, spare) = {
        let mut buf = BytesMut::with_capacity(1_200_000);
        buf.extend_from_slice(b"held once");
        let frame = buf.split_to(buf.len()).freeze();
        (frame, buf)
    };
    drop(frame);
    warm_buffers::give(spare, 1_200_000);
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let mut link = Link::new(ours, max).with_budget(Budget::new(max + 100_000));
    let payload = vec![b'x'; 990_000];
    let wire: Vec<u8> = [frame_of(&payload), frame_of(&payload)].concat();
    let writer = tokio::spawn(async move {
        theirs.write_all(&wire).await.unwrap();
        theirs
    });
    for n in 0..2 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), link.next());
        let item = next
            .await
            .expect("the link never waits for the budget here");
        assert_eq!(payload_of(item.unwrap()), payload, "frame {n}");
    }
    drop(writer.await.unwrap());
}
