//! The operator's HTTP endpoint (`admin.listen`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (liveness) and `GET /readyz` (readiness), each readiness answer with a small
//! JSON body saying why.
//!
//! Owns the HTTP/1 server (hyper) and the mapping of paths to answers. Must not know routes,
//! messages or how the numbers are counted: it reads [`crate::ops::metrics`].

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics;

/// Binds the admin address (before serving, so a port in use fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::net::bind::bind(addr)
}

/// Serves the admin endpoint on `listener` until `stop`.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(answer(&req)) });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            // Bounded: a client that holds the connection open cannot keep the guard from
            // stopping.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn) => {}
            }
        });
    }
}

fn answer(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(),
        ),
        "/healthz" => {
            if metrics::live() {
                reply(
                    StatusCode::OK,
                    "application/json",
                    "{\"live\":true}\n".into(),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"live\":false,\"reason\":\"a task panicked; restart the guard\"}\n".into(),
                )
            }
        }
        "/readyz" => {
            let (ready, problems) = metrics::readiness();
            let body = format!(
                "{}\n",
                serde_json::json!({ "ready": ready, "problems": problems })
            );
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
