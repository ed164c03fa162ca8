//! The operator's HTTP endpoint (`admin.listen`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (liveness), `GET /readyz` (readiness, with a small JSON body saying why), the
//! status page at `GET /`, and the console API under `/api/v1/` (routes, connections, pause,
//! resume, reconnect, dead letters, log level).
//!
//! Owns the HTTP/1 server (hyper, optionally TLS), who may ask what (the bearer token, compared
//! in constant time with `subtle` and never logged; `protect_reads`), the `Host` check against
//! DNS rebinding, the limits (header read timeout, connection cap, body size), and the mapping
//! of paths and methods to answers (404 naming the valid paths, 405, 413). Must not know routes,
//! messages or how the numbers are counted: it reads [`crate::ops::metrics`] and
//! [`crate::ops::connections`], and acts through [`crate::ops::console`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ops::console::{self, ActionError, RouteTable};
use crate::ops::{connections, metrics};

/// Largest request body taken (a log filter is the only body): larger gets 413.
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request head within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The paths served, for the 404 answer.
const PATHS: &str = "GET /, GET /metrics, GET /healthz, GET /readyz, GET /api/v1/routes, \
GET /api/v1/connections[?route=NAME], DELETE /api/v1/connections/{id}[?now=true], \
POST /api/v1/routes/{name}/pause, POST /api/v1/routes/{name}/resume, \
POST /api/v1/routes/{name}/reconnect, GET /api/v1/dead-letters?route=NAME, \
POST /api/v1/routes/{name}/dead-letters/replay, GET /api/v1/refusals, \
GET /api/v1/log-level, PUT /api/v1/log-level";

/// Who may do what, from the `admin:` block; swapped by a reload.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub listen: Option<SocketAddr>,
    /// The bearer token (`admin.token_file`); `None`: state-changing requests get 403.
    pub token: Option<String>,
    pub protect_reads: bool,
    pub allowed_hosts: Vec<String>,
}

fn access() -> &'static RwLock<Arc<Access>> {
    static ACCESS: OnceLock<RwLock<Arc<Access>>> = OnceLock::new();
    ACCESS.get_or_init(RwLock::default)
}

/// Applies the `admin:` block of a (re)loaded config.
pub fn configure(admin: &crate::config::Admin) {
    let next = Access {
        listen: Some(admin.listen),
        token: admin.token.as_ref().map(|t| t.0.clone()),
        protect_reads: admin.protect_reads,
        allowed_hosts: admin.allowed_hosts.clone(),
    };
    *access().write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
}

/// Reads (`None`) or sets the log filter; installed by `main` (which owns the subscriber).
pub type LogControl = Box<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

static LOG_CONTROL: OnceLock<LogControl> = OnceLock::new();

/// Lets `GET/PUT /api/v1/log-level` read and change the log filter.
pub fn set_log_control(control: LogControl) {
    let _ = LOG_CONTROL.set(control);
}

/// Binds the admin address (before serving, so a port in use fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::net::bind::bind(addr)
}

/// Serves the admin endpoint on `listener` (with TLS when `tls`) until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    routes: Arc<dyn RouteTable>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin: too many connections; closing a new one");
            continue;
        };
        let (stop, routes, acceptor) = (stop.clone(), routes.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let work = async {
                match acceptor {
                    None => serve_one(tcp, routes).await,
                    Some(acceptor) => {
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await
                        {
                            serve_one(stream, routes).await
                        }
                    }
                }
            };
            // Bounded: a client that holds the connection open cannot keep the guard from
            // stopping.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::timeout(Duration::from_secs(30), work) => {}
            }
        });
    }
}

async fn serve_one<S>(stream: S, routes: Arc<dyn RouteTable>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let routes = routes.clone();
        async move { Ok::<_, Infallible>(answer(req, &*routes).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// What a request asks for, once its path and method are known.
enum Ask {
    Metrics,
    Healthz,
    Readyz,
    Page,
    Routes,
    Connections(Option<String>),
    Refusals,
    DeadLetters(Option<String>),
    LogLevel,
    SetLogLevel,
    Disconnect { id: String, now: bool },
    Pause(String, bool),
    Reconnect(String),
    Replay(String),
}

impl Ask {
    fn changes_state(&self) -> bool {
        matches!(
            self,
            Ask::SetLogLevel
                | Ask::Disconnect { .. }
                | Ask::Pause(..)
                | Ask::Reconnect(_)
                | Ask::Replay(_)
        )
    }
}

/// The query parameter `key`, percent-decoded.
fn query(uri: &hyper::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request no handler takes.
enum Unserved {
    NotFound,
    /// The methods the path takes.
    NotAllowed(&'static str),
}

/// Maps path and method to what is asked.
fn route_request(method: &Method, uri: &hyper::Uri) -> Result<Ask, Unserved> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let read = |ask: Ask| -> Result<Ask, Unserved> {
        if method == Method::GET || method == Method::HEAD {
            Ok(ask)
        } else {
            Err(Unserved::NotAllowed("GET, HEAD"))
        }
    };
    let post = |ask: Ask| -> Result<Ask, Unserved> {
        if method == Method::POST {
            Ok(ask)
        } else {
            Err(Unserved::NotAllowed("POST"))
        }
    };
    match segments.as_slice() {
        [""] => read(Ask::Page),
        ["metrics"] => read(Ask::Metrics),
        ["healthz"] => read(Ask::Healthz),
        ["readyz"] => read(Ask::Readyz),
        ["api", "v1", "routes"] => read(Ask::Routes),
        ["api", "v1", "connections"] => read(Ask::Connections(query(uri, "route"))),
        ["api", "v1", "refusals"] => read(Ask::Refusals),
        ["api", "v1", "dead-letters"] => read(Ask::DeadLetters(query(uri, "route"))),
        ["api", "v1", "log-level"] => match *method {
            Method::GET | Method::HEAD => Ok(Ask::LogLevel),
            Method::PUT => Ok(Ask::SetLogLevel),
            _ => Err(Unserved::NotAllowed("GET, HEAD, PUT")),
        },
        ["api", "v1", "connections", id] if !id.is_empty() => {
            if method == Method::DELETE {
                let now = query(uri, "now").is_some_and(|v| v == "true" || v == "1");
                Ok(Ask::Disconnect {
                    id: percent_decode(id),
                    now,
                })
            } else {
                Err(Unserved::NotAllowed("DELETE"))
            }
        }
        ["api", "v1", "routes", name, "pause"] => post(Ask::Pause(percent_decode(name), true)),
        ["api", "v1", "routes", name, "resume"] => post(Ask::Pause(percent_decode(name), false)),
        ["api", "v1", "routes", name, "reconnect"] => post(Ask::Reconnect(percent_decode(name))),
        ["api", "v1", "routes", name, "dead-letters", "replay"] => {
            post(Ask::Replay(percent_decode(name)))
        }
        _ => Err(Unserved::NotFound),
    }
}

/// Whether the `Host` header names this endpoint: the listen address, `localhost`, or a name in
/// `allowed_hosts` (a browser tricked by DNS rebinding sends the attacker's name). IP literals
/// are accepted when the endpoint listens on every address.
fn host_allowed(host: Option<&str>, access: &Access) -> bool {
    let Some(host) = host else {
        return true; // HTTP/1.0 without Host: no browser sends that.
    };
    let host = host.trim().to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
    };
    if name == "localhost" || access.allowed_hosts.iter().any(|h| h == name) {
        return true;
    }
    match (name.parse::<IpAddr>(), access.listen) {
        (Ok(ip), Some(listen)) => listen.ip().is_unspecified() || ip == listen.ip(),
        _ => false,
    }
}

/// The bearer token of the request matches `expected` (constant time in the token's bytes).
fn token_ok(req: &Request<Incoming>, expected: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    given.ct_eq(expected.as_bytes()).into()
}

async fn answer(req: Request<Incoming>, routes: &dyn RouteTable) -> Response<Full<Bytes>> {
    let access = access().read().unwrap_or_else(|e| e.into_inner()).clone();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host_allowed(host, &access) {
        return text(
            StatusCode::FORBIDDEN,
            "Host not allowed: use the listen address or localhost, or add the name to admin.allowed_hosts\n".into(),
        );
    }
    let ask = match route_request(req.method(), req.uri()) {
        Ok(ask) => ask,
        Err(Unserved::NotAllowed(allow)) => return not_allowed(allow),
        Err(Unserved::NotFound) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("not found: {}; valid paths: {PATHS}\n", req.uri().path()),
            )
        }
    };
    let writes = ask.changes_state();
    if writes || access.protect_reads {
        match &access.token {
            None => {
                return text(
                    StatusCode::FORBIDDEN,
                    "read-only admin: set admin.token_file to allow changes\n".into(),
                )
            }
            Some(token) if !token_ok(&req, token) => {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token: send Authorization: Bearer <token>\n".into(),
                );
                if let Ok(v) = "Bearer".parse() {
                    r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
                }
                return r;
            }
            Some(_) => {}
        }
    }
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    respond(ask, body, routes).await
}

/// The request body, at most [`MAX_BODY_BYTES`] (413 beyond).
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY_BYTES} bytes\n"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "unreadable body\n".into())),
    }
}

async fn respond(ask: Ask, body: Bytes, routes: &dyn RouteTable) -> Response<Full<Bytes>> {
    match ask {
        Ask::Metrics => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(),
        ),
        Ask::Healthz => {
            if metrics::live() {
                json_reply(StatusCode::OK, &json!({"live": true}))
            } else {
                json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"live": false, "reason": "a task panicked; restart the guard"}),
                )
            }
        }
        Ask::Readyz => {
            let (ready, problems) = metrics::readiness();
            let paused: Vec<String> = metrics::paused_routes().into_keys().collect();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_reply(
                status,
                &json!({ "ready": ready, "problems": problems, "paused": paused }),
            )
        }
        Ask::Page => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::ops::status_page::render(routes),
        ),
        Ask::Routes => {
            let views: Vec<_> = routes.handles().iter().map(|h| h.view()).collect();
            json_reply(StatusCode::OK, &json!(views))
        }
        Ask::Connections(route) => {
            if let Some(name) = &route {
                if !routes.handles().iter().any(|h| &*h.ctx.name == name) {
                    return unknown_route(name);
                }
            }
            json_reply(StatusCode::OK, &json!(connections::list(route.as_deref())))
        }
        Ask::Refusals => json_reply(StatusCode::OK, &json!(crate::ops::recent::list())),
        Ask::DeadLetters(None) => text(
            StatusCode::BAD_REQUEST,
            "name the route: /api/v1/dead-letters?route=NAME\n".into(),
        ),
        Ask::DeadLetters(Some(name)) => match console::dead_letters(routes, &name).await {
            Ok(letters) => json_reply(StatusCode::OK, &json!(letters)),
            Err(err) => action_error(err),
        },
        Ask::LogLevel => match LOG_CONTROL.get().map(|c| c(None)) {
            Some(Ok(filter)) => json_reply(StatusCode::OK, &json!({ "filter": filter })),
            _ => text(
                StatusCode::NOT_IMPLEMENTED,
                "the log filter cannot be read in this process\n".into(),
            ),
        },
        Ask::SetLogLevel => {
            let filter = String::from_utf8_lossy(&body).trim().to_string();
            let Some(control) = LOG_CONTROL.get() else {
                return text(
                    StatusCode::NOT_IMPLEMENTED,
                    "the log filter cannot be changed in this process\n".into(),
                );
            };
            if filter.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "send the filter as the body, e.g. `debug` or `warn,mllp_guard::audit=info`\n"
                        .into(),
                );
            }
            match control(Some(&filter)) {
                Ok(old) => {
                    tracing::warn!(action = "log_level", from = %old, to = %filter, "log filter changed by the operator");
                    json_reply(StatusCode::OK, &json!({ "filter": filter, "was": old }))
                }
                Err(problem) => text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid log filter {filter:?}: {problem}\n"),
                ),
            }
        }
        Ask::Disconnect { id, now } => match connections::close(&id, now) {
            Some((route, peer)) => {
                let how = if now {
                    "now"
                } else {
                    "after the message in flight"
                };
                tracing::warn!(action = "disconnect", route = %route, %peer, id, how, "connection closed by the operator");
                json_reply(
                    StatusCode::OK,
                    &json!({ "id": id, "route": &*route, "peer": peer.to_string(), "now": now }),
                )
            }
            None => text(
                StatusCode::NOT_FOUND,
                format!("no open connection with id {id:?}; see GET /api/v1/connections\n"),
            ),
        },
        Ask::Pause(name, paused) => match console::pause(routes, &name, paused) {
            Ok(view) => json_reply(StatusCode::OK, &view),
            Err(err) => action_error(err),
        },
        Ask::Reconnect(name) => match console::reconnect(routes, &name).await {
            Ok(view) => json_reply(StatusCode::OK, &view),
            Err(err) => action_error(err),
        },
        Ask::Replay(name) => match console::replay(routes, &name).await {
            Ok(view) => json_reply(StatusCode::OK, &view),
            Err(err) => action_error(err),
        },
    }
}

fn unknown_route(name: &str) -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, format!("no route named {name:?}\n"))
}

fn action_error(err: ActionError) -> Response<Full<Bytes>> {
    match err {
        ActionError::UnknownRoute(name) => unknown_route(&name),
        err @ ActionError::NoQueue(_) => text(StatusCode::CONFLICT, format!("{err}\n")),
        ActionError::Failed(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; allowed: {allow}\n"),
    );
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn json_reply(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{value}\n"))
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_the_listen_address_localhost_or_allowed_names() {
        let access = Access {
            listen: Some("127.0.0.1:9102".parse().unwrap()),
            allowed_hosts: vec!["guard.example.org".into()],
            ..Access::default()
        };
        for ok in [
            "127.0.0.1:9102",
            "localhost:9102",
            "LOCALHOST",
            "guard.example.org:9102",
        ] {
            assert!(host_allowed(Some(ok), &access), "{ok}");
        }
        for refused in ["evil.example:9102", "10.0.0.1:9102", "[::1]:9102", ""] {
            assert!(!host_allowed(Some(refused), &access), "{refused}");
        }
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
