//! Delivering events to one webhook: its bounded queue, the task that empties it, and the HTTP
//! request (one HTTP/1.1 POST per connection, plain or TLS, under the webhook's `timeout`).
//!
//! The client is hyper's own connection API (`hyper::client::conn::http1`, hyper is already here
//! for the admin endpoint) over tokio-rustls with the guard's rustls provider: a webhook gets a
//! few requests a minute, so a pool buys nothing, and reqwest would add a second HTTP stack and
//! its own TLS setup for one POST.
//!
//! An attempt that fails (no connection, TLS, timeout, a status other than 2xx) is retried after
//! 1 s, 2 s, 4 s, 8 s (with jitter); after the fifth failure the event is dropped, counted
//! (`reason="gave_up"`) and logged. Events wait their turn in order behind a retried one, up
//! to `max_pending`; beyond that they are dropped on arrival (`reason="queue_full"`). Nothing
//! here ever waits on the data path.
//!
//! Knows nothing of the events' meaning; signs and sends bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{NotifyEvent, Webhook};

/// Attempts per event before it is dropped.
const ATTEMPTS: u32 = 5;
/// The wait before the first retry; doubled after each failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// One webhook's queue, as the event side sees it.
pub(super) struct Queue {
    /// The events it wants (one bit each).
    pub(super) events: u32,
    label: Arc<str>,
    tx: mpsc::Sender<Bytes>,
    /// Drops since the last line logged about them.
    dropped: AtomicU64,
}

impl Queue {
    /// Queues `body` without waiting; a full queue drops it (counted; logged now and then).
    pub(super) fn offer(&self, event: NotifyEvent, body: Bytes) {
        match self.tx.try_send(body) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::ops::metrics::webhook_outcome(&self.label, Some("queue_full"));
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                // The first drop, then one line per 100.
                if n.is_multiple_of(100) {
                    tracing::warn!(webhook = %self.label, event = event.as_str(), dropped = n + 1, "webhook event dropped: max_pending events are already waiting (the webhook is down or slow)");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The webhook's URL as shown in logs and metric labels: scheme, host, port and path (no user
/// info, no query, which may hold a token).
pub(super) fn label(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("http");
    let host = url.host().unwrap_or("");
    let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{}", url.path())
}

/// Starts the task that delivers `hook`'s events until `stop`.
pub(super) fn start(hook: &Webhook, stop: CancellationToken) -> Result<Queue, String> {
    let target = Arc::new(Target::new(hook)?);
    let (tx, rx) = mpsc::channel(hook.max_pending);
    crate::ops::metrics::webhook_configured(&target.label);
    tokio::spawn(deliver_all(target.clone(), rx, stop));
    Ok(Queue {
        events: hook.events.iter().fold(0, |bits, e| bits | e.bit()),
        label: target.label.clone(),
        tx,
        dropped: AtomicU64::new(0),
    })
}

/// Where and how one webhook is reached.
struct Target {
    label: Arc<str>,
    host: String,
    port: u16,
    /// `Host:` header value.
    authority: String,
    path: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    secret: Option<aws_lc_rs::hmac::Key>,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl Target {
    fn new(hook: &Webhook) -> Result<Target, String> {
        let url = &hook.url;
        let https = url.scheme_str() == Some("https");
        let host = url
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = match url.port_u16() {
            Some(port) => format!("{}:{port}", url.host().unwrap_or_default()),
            None => url.host().unwrap_or_default().to_string(),
        };
        let tls = if https {
            let config = match &hook.ca {
                Some(ca) => crate::tls::client_config(ca, None, None).map_err(|e| e.to_string())?,
                None => crate::tls::system_client_config()?,
            };
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        let mut headers = Vec::new();
        for (name, value) in &hook.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
            headers.push((name, value));
        }
        Ok(Target {
            label: Arc::from(label(url).as_str()),
            host,
            port,
            authority,
            path: url
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            tls,
            secret: hook
                .secret
                .as_ref()
                .map(|s| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &s.0)),
            headers,
            timeout: hook.timeout,
        })
    }

    fn request(&self, body: &Bytes) -> Result<Request<Full<Bytes>>, String> {
        let mut request = Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("mllp-guard/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::CONNECTION, "close");
        if let Some(key) = &self.secret {
            let tag = aws_lc_rs::hmac::sign(key, body);
            request = request.header(
                "X-Mllp-Guard-Signature",
                format!("sha256={}", hex(tag.as_ref())),
            );
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())
    }

    /// One attempt: the response status, or why there is none.
    async fn post(&self, body: &Bytes) -> Result<u16, String> {
        let attempt = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
            let _ = tcp.set_nodelay(true);
            let request = self.request(body)?;
            match &self.tls {
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake: {e}"))?;
                    exchange(tls, request).await
                }
                None => exchange(tcp, request).await,
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within timeout ({})",
                    humantime::format_duration(self.timeout)
                ))
            })
    }
}

/// Sends `request` on `io` and returns the response's status (its body is not read).
async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let mut connection = std::pin::pin!(connection);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        // The connection may end (the server closed it after answering) before the response
        // future is polled again: the response, if there was one, is ready then.
        ended = &mut connection => match ended {
            Ok(()) => response.await,
            Err(e) => return Err(e.to_string()),
        },
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Delivers queued events in order until `stop` (events still queued then are dropped,
/// counted).
async fn deliver_all(target: Arc<Target>, mut rx: mpsc::Receiver<Bytes>, stop: CancellationToken) {
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => break,
            body = rx.recv() => match body {
                Some(body) => body,
                None => return,
            },
        };
        if !deliver_one(&target, &body, &stop).await {
            break;
        }
    }
    rx.close();
    let mut left = 0u64;
    while rx.try_recv().is_ok() {
        crate::ops::metrics::webhook_outcome(&target.label, Some("gave_up"));
        left += 1;
    }
    if left > 0 {
        tracing::warn!(webhook = %target.label, dropped = left, "webhook replaced by a reload: its undelivered events were dropped");
    }
}

/// Tries one event up to [`ATTEMPTS`] times; `false` when `stop` came first.
async fn deliver_one(target: &Target, body: &Bytes, stop: &CancellationToken) -> bool {
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let why = match target.post(body).await {
            Ok(status) if (200..300).contains(&status) => {
                crate::ops::metrics::webhook_outcome(&target.label, None);
                return true;
            }
            Ok(status) => format!("answered HTTP {status}"),
            Err(err) => err,
        };
        if attempt == ATTEMPTS {
            crate::ops::metrics::webhook_outcome(&target.label, Some("gave_up"));
            tracing::warn!(webhook = %target.label, attempts = ATTEMPTS, error = %why, "webhook event dropped: every delivery attempt failed");
            return true;
        }
        tracing::debug!(webhook = %target.label, attempt, error = %why, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; retrying");
        let jittered = wait.mul_f64(0.75 + fastrand::f64() * 0.5);
        tokio::select! {
            _ = stop.cancelled() => {
                crate::ops::metrics::webhook_outcome(&target.label, Some("gave_up"));
                return false;
            }
            _ = tokio::time::sleep(jittered) => {}
        }
        wait *= 2;
    }
    true
}
