//! `mllp-guard sink`: a receiver that answers every message with a proper ack (MSA-2 = its
//! control id) and can save each payload byte-exact, numbered in arrival order; numbering goes on
//! after the files a previous run left in the directory, so two runs never read as one sequence.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::Stream;
use crate::wire::ack;
use crate::wire::codec::{self, Decoded};
use crate::wire::hl7::printable;
use crate::wire::hl7::AckCode;
use crate::wire::link::Link;

/// How a sink behaves.
#[derive(Clone)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The code every ack carries (AA by default).
    pub ack: AckCode,
    /// Where to save payloads (`000001_<control id>.hl7`, ...), if anywhere; numbering starts
    /// after the highest number already there.
    pub save_dir: Option<PathBuf>,
    pub max_message_bytes: usize,
    /// Print one line per message on stdout.
    pub verbose: bool,
}

#[derive(Default)]
struct Counters {
    taken: AtomicU64,
    handled: AtomicU64,
}

/// A running sink.
pub struct Sink {
    addr: SocketAddr,
    /// Messages taken in so far (numbers them), and messages fully handled (saved and acked).
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Sink {
    pub async fn start(opts: SinkOptions) -> io::Result<Sink> {
        let listener = crate::net::bind::bind(opts.listen)?;
        let addr = listener.local_addr()?;
        let mut saved_before = 0;
        if let Some(dir) = &opts.save_dir {
            tokio::fs::create_dir_all(dir).await?;
            saved_before = highest_number(dir).await?;
        }
        let received = Arc::new(Counters {
            taken: AtomicU64::new(saved_before),
            handled: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let opts = Arc::new(opts);
        let (count, stop, tasks) = (received.clone(), shutdown.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let (tcp, _peer) = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (opts, count, stop) = (opts.clone(), count.clone(), stop.clone());
                tasks.spawn(async move {
                    let stream = match &opts.tls {
                        None => Stream::Plain(tcp),
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                            match acceptor.accept(tcp).await {
                                Ok(tls) => Stream::ServerTls(Box::new(tls)),
                                Err(err) => {
                                    eprintln!("sink: TLS handshake failed: {err}");
                                    return;
                                }
                            }
                        }
                    };
                    serve(stream, &opts, &count, &stop).await;
                });
            }
        });
        Ok(Sink {
            addr,
            counters: received,
            shutdown,
            tracker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages received so far, each counted once it is saved (if saving), before its ack is sent.
    pub fn received(&self) -> u64 {
        self.counters.handled.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The highest `NNNNNN` of the `NNNNNN_*.hl7` files in `dir` (0 when there are none).
async fn highest_number(dir: &std::path::Path) -> io::Result<u64> {
    let mut highest = 0;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_suffix(".hl7")
            .and_then(|stem| stem.split_once('_'))
            .and_then(|(digits, _)| digits.parse::<u64>().ok());
        highest = highest.max(number.unwrap_or(0));
    }
    Ok(highest)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    opts: &SinkOptions,
    count: &Counters,
    stop: &CancellationToken,
) {
    let mut link = Link::new(stream, opts.max_message_bytes);
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = link.next() => item,
        };
        let frame = match item {
            Ok(Some(Decoded::Frame(frame))) => frame,
            Ok(Some(Decoded::Oversize { len, .. })) => {
                eprintln!("sink: discarded a {len}-byte message over the size limit");
                continue;
            }
            Ok(None) | Err(_) => return,
        };
        let seq = count.taken.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("SINK{seq}");
        let now = ack::timestamp(std::time::SystemTime::now());
        let (reply, control_id) = match crate::wire::hl7::find_header(frame.payload()) {
            Ok(header) => {
                let text = if opts.ack.is_positive() {
                    ""
                } else {
                    "rejected by sink --ack"
                };
                (
                    ack::build(&header, opts.ack, text, &id, &now),
                    printable(header.control_id()),
                )
            }
            Err(err) => (
                ack::build_without_header(
                    &ack::Says::refused(
                        ack::ErrorCode::SegmentSequence,
                        &format!("no readable header: {err}"),
                    ),
                    &id,
                    &now,
                ),
                String::new(),
            ),
        };
        if let Some(dir) = &opts.save_dir {
            let safe: String = control_id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let path = dir.join(format!("{seq:06}_{safe}.hl7"));
            if let Err(err) = tokio::fs::write(&path, frame.payload()).await {
                eprintln!("sink: cannot save {}: {err}", path.display());
            }
        }
        if opts.verbose {
            // A closed stdout must not stop the sink: write errors are ignored, never a panic.
            use std::io::Write as _;
            let _ = writeln!(
                io::stdout().lock(),
                "received {} ({} bytes) -> {}",
                control_id,
                frame.len(),
                opts.ack
            );
        }
        // Counted once saved and before its ack leaves: whoever got the ack sees it counted.
        count.handled.fetch_add(1, Ordering::Relaxed);
        if link.send(&codec::encode(&reply)).await.is_err() {
            return;
        }
    }
}
