//! The status page (`GET /`): one self-contained HTML document (no external assets: hospital
//! networks are offline), complete without JavaScript (the tables are rendered here) and
//! refreshing itself with it (the same tables redrawn from `/api/v1/...` every 2 s). Its
//! disconnect buttons ask for the token and send it as an `Authorization` header, never a
//! cookie.
//!
//! Owns the markup, its escaping and the page's script. Must not know anything the API does
//! not show: it renders the same views.

use std::fmt::Write as _;

use serde_json::Value;

use crate::ops::console::RouteTable;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as table text (`-` for null).
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => esc(s),
        Value::Bool(b) => (if *b { "yes" } else { "no" }).into(),
        other => esc(&other.to_string()),
    }
}

fn counts(v: &Value) -> String {
    match v.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, n)| format!("{} {}", esc(k), cell(n)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

fn queue_cells(q: &Value) -> (String, String, String) {
    if q.is_null() {
        return ("-".into(), "-".into(), "-".into());
    }
    let oldest = match q["oldest_age_s"].as_f64() {
        Some(s) => format!("{s:.1} s"),
        None => "-".into(),
    };
    (cell(&q["pending"]), oldest, cell(&q["dead_letters"]))
}

fn route_rows(routes: &[Value]) -> String {
    let mut out = String::new();
    for r in routes {
        let (depth, oldest, dead) = queue_cells(&r["queue"]);
        let up = r["upstream_up"].as_bool().unwrap_or(false);
        let paused = r["paused"].as_bool().unwrap_or(false);
        let listen = if r["dial"].is_string() {
            format!("dials {}", cell(&r["dial"]))
        } else {
            cell(&r["listen"])
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(&r["name"]),
            listen,
            cell(&r["delivery"]),
            cell(&r["upstream"]),
            if up { "ok" } else { "bad" },
            if up { "up" } else { "down" },
            if paused { "warn" } else { "" },
            if paused { "paused" } else { "running" },
            cell(&r["connections"]),
            counts(&r["messages"]),
            depth,
            oldest,
            dead
        );
    }
    if routes.is_empty() {
        out.push_str("<tr><td colspan=\"11\">no routes</td></tr>");
    }
    out
}

fn connection_rows(conns: &[Value]) -> String {
    let mut out = String::new();
    for c in conns {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><button type=\"button\" class=\"disconnect\" data-id=\"{}\">Disconnect</button></td></tr>",
            cell(&c["id"]),
            cell(&c["route"]),
            cell(&c["peer"]),
            cell(&c["identity"]),
            cell(&c["since"]),
            cell(&c["messages"]),
            cell(&c["state"]),
            cell(&c["id"]),
        );
    }
    if conns.is_empty() {
        out.push_str("<tr><td colspan=\"8\">no open connections</td></tr>");
    }
    out
}

fn event_rows(events: &[Value]) -> String {
    let mut out = String::new();
    for e in events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(&e["time"]),
            cell(&e["route"]),
            cell(&e["peer"]),
            cell(&e["msh10"]),
            cell(&e["msh9"]),
            cell(&e["reason"]),
        );
    }
    if events.is_empty() {
        out.push_str("<tr><td colspan=\"6\">none</td></tr>");
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24;background:#f6f7f9}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}\
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #e3e6ea;white-space:nowrap}\
th{background:#eef1f4;font-weight:600}.ok{color:#11772d;font-weight:600}.bad{color:#b3261e;font-weight:600}\
.warn{color:#9a5b00;font-weight:600}.meta{color:#5b6470}button{cursor:pointer}";

const SCRIPT: &str = r#"
(function () {
  function esc(v) {
    if (v === null || v === undefined) return "-";
    if (v === true) return "yes";
    if (v === false) return "no";
    return String(v).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function counts(m) {
    var keys = m ? Object.keys(m) : [];
    return keys.length ? keys.map(function (k) { return esc(k) + " " + esc(m[k]); }).join(", ") : "-";
  }
  function routeRow(r) {
    var q = r.queue, paused = r.paused;
    var listen = r.dial ? "dials " + esc(r.dial) : esc(r.listen);
    return "<tr><td>" + esc(r.name) + "</td><td>" + listen + "</td><td>" + esc(r.delivery) +
      "</td><td>" + esc(r.upstream) + "</td><td class=\"" + (r.upstream_up ? "ok\">up" : "bad\">down") +
      "</td><td class=\"" + (paused ? "warn\">paused" : "\">running") + "</td><td>" + esc(r.connections) +
      "</td><td>" + counts(r.messages) + "</td><td>" + (q ? esc(q.pending) : "-") + "</td><td>" +
      (q && q.oldest_age_s !== null ? q.oldest_age_s.toFixed(1) + " s" : "-") + "</td><td>" +
      (q ? esc(q.dead_letters) : "-") + "</td></tr>";
  }
  function connRow(c) {
    return "<tr><td>" + esc(c.id) + "</td><td>" + esc(c.route) + "</td><td>" + esc(c.peer) + "</td><td>" +
      esc(c.identity) + "</td><td>" + esc(c.since) + "</td><td>" + esc(c.messages) + "</td><td>" + esc(c.state) +
      "</td><td><button type=\"button\" class=\"disconnect\" data-id=\"" + esc(c.id) + "\">Disconnect</button></td></tr>";
  }
  function eventRow(e) {
    return "<tr><td>" + esc(e.time) + "</td><td>" + esc(e.route) + "</td><td>" + esc(e.peer) + "</td><td>" +
      esc(e.msh10) + "</td><td>" + esc(e.msh9) + "</td><td>" + esc(e.reason) + "</td></tr>";
  }
  function fill(id, rows, row, empty, span) {
    document.getElementById(id).innerHTML = rows.length ? rows.map(row).join("") :
      "<tr><td colspan=\"" + span + "\">" + empty + "</td></tr>";
  }
  var token = null;
  function get(path) {
    var headers = token ? {"Authorization": "Bearer " + token} : {};
    return fetch(path, {headers: headers, cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error(path + ": " + r.status);
      return r.json();
    });
  }
  function refresh() {
    Promise.all([get("/api/v1/routes"), get("/api/v1/connections"), get("/api/v1/refusals")])
      .then(function (all) {
        fill("routes", all[0], routeRow, "no routes", 11);
        fill("connections", all[1], connRow, "no open connections", 8);
        fill("events", all[2], eventRow, "none", 6);
        document.getElementById("updated").textContent = "updated " + new Date().toISOString() + " (every 2 s)";
      })
      .catch(function (err) {
        document.getElementById("updated").textContent = "refresh failed: " + err.message;
      });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest ? ev.target.closest("button.disconnect") : null;
    if (!b) return;
    var id = b.getAttribute("data-id");
    var t = token || window.prompt("Admin token to close connection " + id + ":");
    if (!t) return;
    var now = window.confirm("Close at once? (Cancel: after the message in flight has its ack)");
    fetch("/api/v1/connections/" + encodeURIComponent(id) + (now ? "?now=true" : ""),
      {method: "DELETE", headers: {"Authorization": "Bearer " + t}})
      .then(function (r) {
        if (r.ok) { token = t; } else { window.alert("Not closed: HTTP " + r.status); }
        refresh();
      });
  });
  setInterval(refresh, 2000);
})();
"#;

/// The whole page, with the routes, connections and events of now.
pub fn render(routes: &dyn RouteTable) -> String {
    let route_views: Vec<Value> = routes.handles().iter().map(|h| h.view()).collect();
    let conns: Vec<Value> = crate::ops::connections::list(None)
        .into_iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    let events: Vec<Value> = crate::ops::recent::list()
        .into_iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    let (ready, problems) = crate::ops::metrics::readiness();
    let readiness = if ready {
        "<span class=\"ok\">ready</span>".to_string()
    } else {
        format!(
            "<span class=\"bad\">not ready</span>: {}",
            esc(&problems.join("; "))
        )
    };
    let now = crate::ops::connections::rfc3339(crate::ops::connections::now_ms());
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>mllp-guard status</title><style>{STYLE}</style></head><body>\
<h1>mllp-guard</h1><p class=\"meta\">version {version} · {readiness} · <span id=\"updated\">rendered {now}</span></p>\
<h2>Routes</h2><table><thead><tr><th>Route</th><th>Listen</th><th>Delivery</th><th>Upstream</th><th>State</th>\
<th>Paused</th><th>Connections</th><th>Messages by ack</th><th>Queue depth</th><th>Oldest</th><th>Dead letters</th></tr></thead>\
<tbody id=\"routes\">{routes}</tbody></table>\
<h2>Live connections</h2><table><thead><tr><th>Id</th><th>Route</th><th>Peer</th><th>Identity</th><th>Since</th>\
<th>Messages</th><th>State</th><th></th></tr></thead><tbody id=\"connections\">{conns}</tbody></table>\
<p class=\"meta\">Disconnect asks for the admin token and sends it as an Authorization header (needs JavaScript; \
or <code>mllp-guard disconnect ID</code>).</p>\
<h2>Last refusals and errors</h2><table><thead><tr><th>Time</th><th>Route</th><th>Peer</th><th>MSH-10</th>\
<th>MSH-9</th><th>Reason</th></tr></thead><tbody id=\"events\">{events}</tbody></table>\
<script>{SCRIPT}</script></body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        routes = route_rows(&route_views),
        conns = connection_rows(&conns),
        events = event_rows(&events),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            super::esc("<b a=\"1\">&'"),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;"
        );
    }
}
