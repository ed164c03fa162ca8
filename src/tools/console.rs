//! The console in the terminal: `mllp-guard status --admin URL [--token-file F] [--json]`,
//! `mllp-guard disconnect ID ...` and `mllp-guard health --admin URL`, clients of a running
//! guard's admin API (`/api/v1/...`, `/healthz`).
//!
//! Owns a small HTTP/1.1 client (plain `http://`, one request per connection, bounded in time
//! and size) and the text tables. Must not know the guard's internals: it reads the same JSON
//! any client reads.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;
/// Limit for connecting and for the whole answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An admin endpoint: `http://host:port`.
pub struct Admin {
    host: String,
    port: u16,
    token: Option<String>,
    /// The `Host` header sent: the URL's authority unless [`Admin::as_localhost`] set it.
    host_header: String,
}

impl Admin {
    /// From `--admin URL` and `--token-file FILE` (its first line is the token).
    pub fn new(url: &str, token_file: Option<&Path>) -> anyhow::Result<Admin> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            bail!("--admin {url}: this client speaks plain http only; with admin.tls use curl --cacert (see the README)")
        } else {
            url
        };
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => (
                host.to_string(),
                port.parse()
                    .map_err(|_| anyhow!("--admin {url}: {port:?} is not a port"))?,
            ),
            _ => (authority.to_string(), 80),
        };
        if host.is_empty() {
            bail!("--admin {url}: give the admin address, e.g. http://127.0.0.1:9102");
        }
        let token = match token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}", path.display()))?;
                let token = text.lines().next().unwrap_or("").trim().to_string();
                if token.is_empty() {
                    bail!("--token-file {}: the file holds no token", path.display());
                }
                Some(token)
            }
            None => None,
        };
        let host_header = format!("{host}:{port}");
        Ok(Admin {
            host,
            port,
            token,
            host_header,
        })
    }

    /// Sends `Host: localhost`, which the guard's DNS-rebinding check always accepts (a probe
    /// run beside the guard may reach it by a name that is not in `admin.allowed_hosts`).
    pub fn as_localhost(mut self) -> Admin {
        self.host_header = format!("localhost:{}", self.port);
        self
    }

    /// One request; the status code and the body.
    pub async fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = format!("{}:{}", self.host, self.port);
        let exchange = async {
            let mut tcp =
                tokio::net::TcpStream::connect((self.host.trim_matches(['[', ']']), self.port))
                    .await
                    .with_context(|| format!("cannot connect to the admin endpoint at {addr}"))?;
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n",
                self.host_header
            );
            if let Some(token) = &self.token {
                let _ = write!(head, "Authorization: Bearer {token}\r\n");
            }
            head.push_str("\r\n");
            tcp.write_all(head.as_bytes()).await?;
            let mut answer = Vec::new();
            (&mut tcp).take(MAX_ANSWER).read_to_end(&mut answer).await?;
            anyhow::Ok(answer)
        };
        let answer = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer from {addr} within {}s", TIMEOUT.as_secs()))??;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("{addr} did not answer with HTTP"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{addr} did not answer with HTTP"))?;
        Ok((status, body.to_string()))
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.request("GET", path).await?;
        if status != 200 {
            bail!("GET {path}: HTTP {status}: {}", body.trim());
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    }
}

/// `status`: the routes and the live connections, as tables or (`json`) one JSON object
/// `{routes, connections}`.
pub async fn status(admin: &Admin, json: bool, out: &mut String) -> anyhow::Result<()> {
    let routes = admin.get_json("/api/v1/routes").await?;
    let conns = admin.get_json("/api/v1/connections").await?;
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({ "routes": routes, "connections": conns })
        );
        return Ok(());
    }
    let _ = writeln!(
        out,
        "ROUTE\tLISTEN\tDELIVERY\tUPSTREAM\tUP\tPAUSED\tCONNS\tMESSAGES\tQUEUE\tOLDEST_S\tDEAD"
    );
    for r in routes.as_array().into_iter().flatten() {
        let messages = r["messages"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into());
        let q = &r["queue"];
        let listen = if r["dial"].is_string() {
            format!("dial {}", show(&r["dial"]))
        } else {
            show(&r["listen"])
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            show(&r["name"]),
            listen,
            show(&r["delivery"]),
            show(&r["upstream"]),
            show(&r["upstream_up"]),
            show(&r["paused"]),
            show(&r["connections"]),
            messages,
            show(&q["pending"]),
            q["oldest_age_s"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.1}")),
            show(&q["dead_letters"]),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "ID\tROUTE\tPEER\tIDENTITY\tTLS\tSINCE\tMESSAGES\tIN\tOUT\tSTATE"
    );
    for c in conns.as_array().into_iter().flatten() {
        let tls = match &c["tls"] {
            Value::Null => "-".to_string(),
            t => format!("{} {}", show(&t["version"]), show(&t["cipher"])),
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            show(&c["id"]),
            show(&c["route"]),
            show(&c["peer"]),
            show(&c["identity"]),
            tls,
            show(&c["since"]),
            show(&c["messages"]),
            show(&c["bytes_in"]),
            show(&c["bytes_out"]),
            show(&c["state"]),
        );
    }
    Ok(())
}

/// `health`: `GET /healthz`; `Ok` with the body only on HTTP 200 (the guard is live), an error
/// saying what answered otherwise (no connection, another status, no HTTP).
pub async fn health(admin: &Admin) -> anyhow::Result<String> {
    let (status, body) = admin.request("GET", "/healthz").await?;
    if status != 200 {
        bail!(
            "{}:{}: GET /healthz answered HTTP {status}: {}",
            admin.host,
            admin.port,
            body.trim()
        );
    }
    Ok(body.trim().to_string())
}

/// `disconnect`: closes each connection (after its message in flight, or `now`); `Ok(false)`
/// when any of them could not be closed (each one's answer is printed).
pub async fn disconnect(
    admin: &Admin,
    ids: &[String],
    now: bool,
    out: &mut String,
) -> anyhow::Result<bool> {
    let mut all = true;
    for id in ids {
        let path = format!(
            "/api/v1/connections/{}{}",
            id.replace('%', "%25").replace('/', "%2F"),
            if now { "?now=true" } else { "" }
        );
        let (status, body) = admin.request("DELETE", &path).await?;
        match status {
            200..=299 => {
                let peer = serde_json::from_str::<Value>(&body)
                    .map(|v| show(&v["peer"]))
                    .unwrap_or_default();
                let _ = writeln!(out, "{id}: closing ({peer})");
            }
            _ => {
                all = false;
                let _ = writeln!(out, "{id}: not closed: HTTP {status}: {}", body.trim());
            }
        }
    }
    Ok(all)
}
