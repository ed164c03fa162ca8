//! `mllp-guard send`: sends files as MLLP messages, one at a time, and checks each ack (positive
//! code, MSA-2 equal to the message's control id). Payload bytes go out exactly as in the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::net::Stream;
use crate::wire::ack;
use crate::wire::codec::{self, Decoded};
use crate::wire::hl7::printable;
use crate::wire::hl7::AckCode;
use crate::wire::link::Link;

/// Where and how to send.
#[derive(Clone)]
pub struct SendOptions {
    /// `host:port`.
    pub to: String,
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Limit for connecting and for each ack.
    pub timeout: Duration,
}

/// The result for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub file: PathBuf,
    pub control_id: String,
    /// The ack code, or None when no valid ack came back.
    pub ack: Option<AckCode>,
    /// Why it failed, when it did.
    pub problem: Option<String>,
    pub latency: Duration,
}

impl Sent {
    /// A positive ack that answers this message.
    pub fn ok(&self) -> bool {
        self.problem.is_none() && self.ack.is_some_and(|code| code.is_positive())
    }

    /// The report as one JSON object: file, control_id, ack (null when none), ok, latency_ms,
    /// problem (null when none).
    pub fn json(&self) -> String {
        serde_json::json!({
            "file": self.file.display().to_string(),
            "control_id": self.control_id,
            "ack": self.ack.map(|code| code.as_str()),
            "ok": self.ok(),
            "latency_ms": (self.latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
            "problem": self.problem,
        })
        .to_string()
    }

    /// The report line: file, MSH-10, ack code, latency (and the problem, if any).
    pub fn line(&self) -> String {
        let ack = self.ack.map_or("-", |code| code.as_str());
        let id = if self.control_id.is_empty() {
            "-"
        } else {
            &self.control_id
        };
        let mut line = format!(
            "{}\t{}\t{}\t{:.1}ms",
            self.file.display(),
            id,
            ack,
            self.latency.as_secs_f64() * 1000.0
        );
        if let Some(problem) = &self.problem {
            line.push('\t');
            line.push_str(problem);
        }
        line
    }
}

/// Expands paths: a directory stands for its files in name order.
pub fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("cannot read directory {}", path.display()))?;
            entries.retain(|p| p.is_file());
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Sends every file over one connection (reconnecting if it drops), calling `report` after each.
pub async fn send_files(
    opts: &SendOptions,
    files: &[PathBuf],
    mut report: impl FnMut(&Sent),
) -> anyhow::Result<Vec<Sent>> {
    let mut link: Option<Link<Stream>> = None;
    let mut results = Vec::with_capacity(files.len());
    for file in files {
        let payload =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let result = send_one(opts, &mut link, file, &payload).await;
        report(&result);
        results.push(result);
    }
    if let Some(mut link) = link {
        link.shutdown().await;
    }
    Ok(results)
}

async fn send_one(
    opts: &SendOptions,
    link: &mut Option<Link<Stream>>,
    file: &Path,
    payload: &[u8],
) -> Sent {
    let control_id = crate::wire::hl7::find_header(payload)
        .map(|h| h.control_id().to_vec())
        .unwrap_or_default();
    let mut sent = Sent {
        file: file.to_path_buf(),
        control_id: printable(&control_id),
        ack: None,
        problem: None,
        latency: Duration::ZERO,
    };
    let started = Instant::now();
    let outcome = exchange(opts, link, payload).await;
    sent.latency = started.elapsed();
    match outcome {
        Ok(ack_payload) => match ack::verify(&ack_payload, &control_id) {
            Ok(code) => sent.ack = Some(code),
            Err(err) => {
                sent.ack = crate::wire::hl7::AckView::parse(&ack_payload)
                    .ok()
                    .map(|a| a.code());
                sent.problem = Some(err.to_string());
            }
        },
        Err(problem) => {
            *link = None;
            sent.problem = Some(problem);
        }
    }
    sent
}

async fn exchange(
    opts: &SendOptions,
    link: &mut Option<Link<Stream>>,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    if link.as_mut().is_some_and(|l| l.get_mut().is_stale()) {
        *link = None;
    }
    if link.is_none() {
        let stream = tokio::time::timeout(opts.timeout, connect(opts))
            .await
            .map_err(|_| {
                format!(
                    "no connection to {} within {}",
                    opts.to,
                    humantime::format_duration(opts.timeout)
                )
            })??;
        *link = Some(Link::new(stream, 64 * 1024 * 1024));
    }
    let Some(conn) = link.as_mut() else {
        return Err("not connected".into());
    };
    let wire = codec::encode(payload);
    let round_trip = async {
        conn.send(&wire)
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        match conn.next().await {
            Ok(Some(Decoded::Frame(ack))) => Ok(ack.payload().to_vec()),
            Ok(Some(Decoded::Oversize { len, .. })) => {
                Err(format!("reply of {len} bytes is too large"))
            }
            Ok(None) => Err("connection closed without an ack".to_string()),
            Err(e) => Err(format!("receive failed: {e}")),
        }
    };
    tokio::time::timeout(opts.timeout, round_trip)
        .await
        .map_err(|_| format!("no ack within {:?}", opts.timeout))?
}

async fn connect(opts: &SendOptions) -> Result<Stream, String> {
    let tcp = TcpStream::connect(&opts.to)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", opts.to))?;
    let _ = tcp.set_nodelay(true);
    match &opts.tls {
        None => Ok(Stream::Plain(tcp)),
        Some((cfg, name)) => tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name.clone(), tcp)
            .await
            .map(|tls| Stream::ClientTls(Box::new(tls)))
            .map_err(|e| format!("TLS handshake with {} failed: {e}", opts.to)),
    }
}
