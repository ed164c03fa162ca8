//! What the operator's console shows of the routes and what it does to them: the views behind
//! `GET /api/v1/routes`, the pause and resume of a route, the reconnect of its upstream and its
//! dead letters. The HTTP side (auth, paths, status codes) is [`crate::ops::admin`].
//!
//! Owns the JSON shape of a route and the log line of every action. Must not know HTTP. It is
//! handed the running routes through [`RouteTable`] (the supervisor implements it), acts only
//! through the handles a route already has (its pause flag, its upstream, its custody), and
//! never touches a message.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::SenderRole;
use crate::custody::{Custody, DeadLetter};
use crate::dispatch::Dispatch;
use crate::route::RouteContext;
use crate::upstream::Upstream;

/// One running route, as the supervisor hands it to the console.
pub struct RouteHandle {
    /// Its context now (the one new connections get).
    pub ctx: Arc<RouteContext>,
    /// Its bound listen address (`None` for a route that dials its sender).
    pub bound: Option<SocketAddr>,
    pub custody: Option<Arc<Custody>>,
}

/// The running routes (the supervisor implements it).
pub trait RouteTable: Send + Sync {
    /// Every running route, by name.
    fn handles(&self) -> Vec<RouteHandle>;
}

impl RouteHandle {
    fn upstream(&self) -> &Arc<Upstream> {
        match &self.ctx.dispatch {
            Dispatch::Forward { upstream, .. } => upstream,
            Dispatch::Custody(custody) => &custody.upstream,
        }
    }

    /// The route's JSON object (`GET /api/v1/routes`).
    pub fn view(&self) -> Value {
        let ctx = &self.ctx;
        let route = &ctx.route;
        let (listen, dial) = match (&route.sender, self.bound) {
            (SenderRole::Dial(target), _) => (None, Some(target.to_string())),
            (SenderRole::Listen(_), Some(bound)) => (Some(bound.to_string()), None),
            (SenderRole::Listen(addr), None) => (Some(addr.to_string()), None),
        };
        let queue = self.custody.as_ref().map(|custody| {
            let (stats, _) = crate::ops::metrics::QueueProbe::probe(&**custody);
            let oldest_age_s = stats
                .oldest_enqueued_ms
                .map(|at| crate::ops::connections::now_ms().saturating_sub(at) as f64 / 1000.0);
            json!({
                "pending": stats.messages,
                "bytes": stats.bytes,
                "oldest_age_s": oldest_age_s,
                "dead_letters": custody.dead_letter_count(),
            })
        });
        let mut view = json!({
            "name": &*ctx.name,
            "delivery": if self.custody.is_some() { "store-and-forward" } else { "forward" },
            "upstream": self.upstream().address(),
            // Not tried yet counts as up, as for /readyz.
            "upstream_up": crate::ops::metrics::upstream_is_up(&ctx.name).unwrap_or(true),
            "paused": ctx.is_paused(),
            "connections": crate::ops::connections::count(&ctx.name),
            "messages": crate::ops::metrics::messages_by_ack(&ctx.name),
            "queue": queue,
        });
        if let Some(object) = view.as_object_mut() {
            match (listen, dial) {
                (_, Some(dial)) => object.insert("dial".into(), dial.into()),
                (listen, None) => object.insert("listen".into(), listen.into()),
            };
        }
        view
    }
}

/// Why a console action on a route did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("no route named {0}")]
    UnknownRoute(String),
    #[error("route {0} is a forward route: it has no queue and no dead letters")]
    NoQueue(String),
    #[error("{0}")]
    Failed(String),
}

fn find(table: &dyn RouteTable, name: &str) -> Result<RouteHandle, ActionError> {
    table
        .handles()
        .into_iter()
        .find(|h| &*h.ctx.name == name)
        .ok_or_else(|| ActionError::UnknownRoute(name.to_string()))
}

fn custody_of(handle: &RouteHandle) -> Result<Arc<Custody>, ActionError> {
    handle
        .custody
        .clone()
        .ok_or_else(|| ActionError::NoQueue(handle.ctx.name.to_string()))
}

/// Pauses (`true`) or resumes a route; returns its view.
pub fn pause(table: &dyn RouteTable, name: &str, paused: bool) -> Result<Value, ActionError> {
    let handle = find(table, name)?;
    let was = handle.ctx.paused.swap(paused, Ordering::Relaxed);
    let refuses = handle.custody.is_none();
    crate::ops::metrics::set_paused(name, paused.then_some(refuses));
    match (paused, refuses) {
        (true, true) => tracing::warn!(route = name, action = "pause", was_paused = was, "route paused by the operator: new connections are refused, messages on open ones get AE \"route paused\""),
        (true, false) => tracing::warn!(route = name, action = "pause", was_paused = was, "route paused by the operator: messages are still accepted and queued, none is delivered until resumed"),
        (false, _) => tracing::info!(route = name, action = "resume", was_paused = was, "route resumed by the operator"),
    }
    Ok(handle.view())
}

/// Closes and reopens the route's upstream connections.
pub async fn reconnect(table: &dyn RouteTable, name: &str) -> Result<Value, ActionError> {
    let handle = find(table, name)?;
    let upstream = handle.upstream().clone();
    let (closed, opened) = upstream.reconnect().await;
    tracing::info!(route = name, action = "reconnect", upstream = %upstream.address(), closed, opened, "upstream reconnect requested by the operator (paired connections reopen at their next message)");
    Ok(json!({ "route": name, "closed": closed, "opened": opened }))
}

/// The route's dead letters (metadata only).
pub async fn dead_letters(
    table: &dyn RouteTable,
    name: &str,
) -> Result<Vec<DeadLetter>, ActionError> {
    let custody = custody_of(&find(table, name)?)?;
    custody
        .dead_letters(10_000)
        .await
        .map_err(ActionError::Failed)
}

/// Replays the route's dead letters into its queue.
pub async fn replay(table: &dyn RouteTable, name: &str) -> Result<Value, ActionError> {
    let custody = custody_of(&find(table, name)?)?;
    match custody.replay_dead_letters().await {
        Ok(replayed) => {
            tracing::info!(
                route = name,
                action = "replay",
                replayed,
                "dead letters replayed into the queue by the operator"
            );
            Ok(json!({ "route": name, "replayed": replayed }))
        }
        Err(err) => {
            tracing::error!(route = name, action = "replay", error = %err, "replaying the dead letters failed");
            Err(ActionError::Failed(err))
        }
    }
}
