//! `mllp-guard demo`: the quick start. Runs the shipped config (`rules/quickstart.yaml`: a TLS
//! listener relaying to a plaintext receiver), starts a sink where its upstream points, sends the
//! sample messages through the guard over TLS, prints each ack, and stops everything.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::app::Guard;
use crate::config::{Config, ReceiverRole, SenderRole};
use crate::tools::peer::send::{self, SendOptions};
use crate::tools::peer::sink::{Sink, SinkOptions};
use crate::wire::hl7::AckCode;

/// The shipped quick-start config, from the repository's root (where `cargo run` starts). No
/// path of the build machine is compiled in: the binary runs from any checkout.
pub const DEFAULT_CONFIG: &str = "rules/quickstart.yaml";
/// The sample messages, from the repository's root.
pub const DEFAULT_MESSAGES: &str = "rules/messages";
/// The file beside the listener's certificate holding the CA that signed it: the demo's sender
/// trusts it (`rules/certs/ca.pem`, demo only, never for production).
const DEMO_CA: &str = "ca.pem";

/// What to say when a default path is missing: where the demo expects to run.
fn from_the_root(path: &Path, option: &str) -> String {
    format!(
        "{} not found: run the demo from the repository's root (`cargo run --release -- demo`), or name it with {option}",
        path.display()
    )
}

/// Runs the demo; returns whether every message got a matching positive ack.
pub async fn run(config_path: &Path, messages: &Path) -> anyhow::Result<bool> {
    if !config_path.exists() {
        anyhow::bail!(from_the_root(config_path, "--config"));
    }
    if !messages.exists() {
        anyhow::bail!(from_the_root(messages, "--messages"));
    }
    let config = Config::load(config_path).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let route = config
        .routes
        .first()
        .context("the demo config has no route")?;
    let SenderRole::Listen(target) = route.sender else {
        anyhow::bail!(
            "the demo needs a route that listens for senders (`listen:`), not one that dials"
        );
    };
    let route_name = route.name.clone();
    let tls_listener = route.tls.is_some();
    let demo_ca = route
        .tls
        .as_ref()
        .map(|tls| tls.cert.parent().unwrap_or(Path::new(".")).join(DEMO_CA));
    let ReceiverRole::Connect(upstream) = route.upstream.role.clone() else {
        anyhow::bail!("the demo needs an upstream that it connects to (`address:`), not `accept:`");
    };
    let upstream_addr = tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
        .await?
        .next()
        .context("the demo upstream address resolves to nothing")?;

    let sink = Sink::start(SinkOptions {
        listen: upstream_addr,
        tls: None,
        ack: AckCode::AA,
        save_dir: None,
        max_message_bytes: 64 * 1024 * 1024,
        verbose: false,
    })
    .await
    .with_context(|| format!("cannot start the demo receiver on {upstream_addr}"))?;
    let guard = Guard::start(config).await?;
    let listen = guard.local_addr(&route_name).unwrap_or(target);
    println!(
        "demo: guard route \"{route_name}\" on {listen} ({}) -> receiver on {}",
        if tls_listener { "TLS" } else { "plain" },
        sink.local_addr()
    );

    let tls = if let Some(ca) = &demo_ca {
        let cfg = crate::tls::client_config(ca, None, None).with_context(|| {
            format!(
                "the demo's sender trusts {}, beside the listener's certificate",
                ca.display()
            )
        })?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        Some((cfg, name))
    } else {
        None
    };
    let opts = SendOptions {
        to: listen.to_string(),
        tls,
        timeout: Duration::from_secs(10),
    };
    let files = send::expand(&[messages.to_path_buf()])?;
    println!("file\tMSH-10\tack\tlatency");
    let results = send::send_files(&opts, &files, |sent| {
        let name = sent
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut shown = sent.clone();
        shown.file = name.into();
        println!("{}", shown.line());
    })
    .await?;
    let ok = results.iter().all(|r| r.ok());
    println!(
        "demo: {} of {} messages relayed and acked; the receiver got {}",
        results.iter().filter(|r| r.ok()).count(),
        results.len(),
        sink.received()
    );
    guard.stop().await;
    sink.stop().await;
    Ok(ok)
}
