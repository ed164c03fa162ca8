//! The [`Validator`]: walks the raw tree into the typed model and collects every problem as a
//! [`ConfigError`] with its YAML path, line and column, instead of stopping at the first.
//!
//! This file holds its core, which every other part uses: recording an error
//! ([`Validator::error`]), reading an optional scalar with its fallback ([`Validator::value`]),
//! checking a file the config names ([`Validator::file`]); and the walk from the top of the
//! document: the top-level keys, each route in turn, and the checks across routes (unique
//! names, listen addresses that clash, `state_dir`, the admin endpoint). The keys inside a
//! route are read by `impl Validator` blocks in their own files: `route.rs`, `upstream.rs`,
//! `delivery.rs`, `tls_block.rs`, `tls_policy.rs` and `firewall.rs`.
//!
//! Knows nothing of how the config file is read or how the errors are ordered for display
//! (`load.rs`), nor of serde (`raw.rs`) or how a single value is parsed (`scalars.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

use super::error::{on_line, position, ConfigError};
use super::model::{
    Admin, AdminToken, Config, Delivery, QueueBackend, Route, DEFAULT_SHUTDOWN_GRACE,
};
use super::raw::{RawConfig, Text};
use super::scalars::{parse_bool, parse_duration, parse_listen, parse_size};
use crate::wire::budget::DEFAULT_MAX_BUFFERED_BYTES;

/// One validation run over one config file: where the file is, the problems found so far, and
/// every file read along the way.
pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) base_dir: &'a Path,
    pub(super) errors: Vec<ConfigError>,
    /// Every file the config was built from (rules files, certificates, keys), for reloads.
    pub(super) inputs: Vec<PathBuf>,
}

/// A parsed `listen` address with what is needed to report a clash.
struct Listener {
    index: usize,
    name: String,
    addr: SocketAddr,
    line: Option<usize>,
}

impl Validator<'_> {
    /// Records a problem at `yaml_path`, positioned where `at` says.
    pub(super) fn error(
        &mut self,
        yaml_path: impl Into<String>,
        at: &Location,
        message: impl Into<String>,
    ) {
        let (line, column) = position(at);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            yaml_path: yaml_path.into(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Parses an optional scalar, recording the error and falling back to `default` on failure
    /// (the config is only returned when there are no errors, so the fallback never escapes).
    pub(super) fn value<T>(
        &mut self,
        path: String,
        raw: &Option<Text>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(raw) = raw else { return default };
        match parse(&raw.value) {
            Ok(v) => v,
            Err(message) => {
                self.error(path, &raw.referenced, message);
                default
            }
        }
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let shutdown_grace = self.value(
            "shutdown_grace".into(),
            &raw.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            parse_duration,
        );
        let state_dir = raw.state_dir.as_ref().and_then(|raw| {
            let written = raw.value.trim();
            if written.is_empty() {
                self.error(
                    "state_dir",
                    &raw.referenced,
                    "a directory path is required here, e.g. /var/lib/mllp-guard",
                );
                None
            } else {
                Some(self.base_dir.join(written))
            }
        });
        let (upstreams, upstream_names) = self.upstreams(raw.upstreams.as_ref());
        if raw.routes.value.is_empty() {
            self.error(
                "routes",
                &raw.routes.referenced,
                "no routes are defined; add at least one route under `routes:`",
            );
        }
        let mut routes = Vec::new();
        let mut names: HashMap<String, (usize, Option<usize>)> = HashMap::new();
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, raw_route) in raw.routes.value.iter().enumerate() {
            let route = self.route(i, raw_route, state_dir.as_deref(), &upstream_names);
            let name_at = &raw_route.value.name;
            if route.name.is_empty() {
                // Invalid name, already reported.
            } else if let Some(&(first, first_line)) = names.get(&route.name) {
                self.error(
                    format!("routes[{i}].name"),
                    &name_at.referenced,
                    format!(
                        "route name \"{}\" is already used by routes[{first}]{}; give each route a unique name",
                        route.name,
                        on_line(first_line)
                    ),
                );
            } else {
                names.insert(route.name.clone(), (i, position(&name_at.referenced).0));
            }
            // Every address this route binds: its listener and an upstream that accepts.
            let mut binds = Vec::new();
            if let Some(listen) = &raw_route.value.listen {
                binds.push((format!("routes[{i}].listen"), listen));
            }
            if let Some(accept) = &raw_route.value.upstream.value.accept {
                binds.push((format!("routes[{i}].upstream.accept"), accept));
            }
            for (yaml_path, raw_addr) in binds {
                let Ok(addr) = raw_addr.value.trim().parse::<SocketAddr>() else {
                    continue;
                };
                let listen_at = &raw_addr.referenced;
                if let Some(other) = listeners.iter().find(|l| listen_clash(l.addr, addr)) {
                    let message = if other.addr == addr {
                        format!(
                            "listen address {addr} is already used by routes[{}] \"{}\"{}; give each route its own port",
                            other.index, other.name, on_line(other.line)
                        )
                    } else {
                        format!(
                            "listen address {addr} overlaps {} of routes[{}] \"{}\"{} (an unspecified address listens on every local address); give each route its own port",
                            other.addr, other.index, other.name, on_line(other.line)
                        )
                    };
                    self.error(yaml_path, listen_at, message);
                }
                listeners.push(Listener {
                    index: i,
                    name: route.name.clone(),
                    addr,
                    line: position(listen_at).0,
                });
            }
            routes.push(route);
        }
        self.dead_letter_streams_apart(&raw.routes.value, &routes);
        if raw.state_dir.is_none() {
            // Reported once, at the first route that needs it.
            let first = routes
                .iter()
                .zip(&raw.routes.value)
                .enumerate()
                .find(|(_, (route, _))| {
                    matches!(&route.delivery, Delivery::StoreAndForward(c) if c.backend == QueueBackend::Embedded)
                });
            if let Some((i, (_, raw_route))) = first {
                if let Some(delivery) = &raw_route.value.delivery {
                    self.error(
                        format!("routes[{i}].delivery"),
                        &delivery.referenced,
                        "store-and-forward needs a top-level `state_dir` to keep its queues in; add e.g. `state_dir: /var/lib/mllp-guard` at the top of the file (one directory per route is created under it)",
                    );
                }
            }
        }
        let admin = raw.admin.as_ref().map(|admin| self.admin(&admin.value));
        if let Some(admin) = &admin {
            for (i, route) in routes.iter().enumerate() {
                let clash = route
                    .sender
                    .listen_addr()
                    .is_some_and(|addr| listen_clash(addr, admin.listen));
                if let (true, Some(raw_admin)) = (clash, &raw.admin) {
                    self.error(
                        "admin.listen",
                        &raw_admin.value.listen.referenced,
                        format!(
                            "{} is also the listen address of routes[{i}] \"{}\"; give the admin endpoint its own port",
                            admin.listen, route.name
                        ),
                    );
                }
            }
        }
        let log_payloads = self.value("log_payloads".into(), &raw.log_payloads, false, parse_bool);
        let max_buffered_bytes = self.max_buffered_bytes(&raw, &routes);
        let notify = self.notify(raw.notify.as_ref());
        let audit = self.audit(raw.audit.as_ref());
        Config {
            file: self.file.to_path_buf(),
            routes,
            shutdown_grace,
            state_dir,
            upstreams,
            admin,
            log_payloads,
            max_buffered_bytes,
            notify,
            audit,
            inputs: Vec::new(),
        }
    }

    /// `max_buffered_bytes`, which must hold the largest message any route takes (a frame that
    /// could never fit would wait for ever).
    fn max_buffered_bytes(&mut self, raw: &RawConfig, routes: &[Route]) -> usize {
        let budget = self.value(
            "max_buffered_bytes".into(),
            &raw.max_buffered_bytes,
            DEFAULT_MAX_BUFFERED_BYTES as u64,
            parse_size,
        );
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        let largest = routes
            .iter()
            .max_by_key(|r| r.max_message_bytes)
            .filter(|r| r.max_message_bytes > budget);
        if let (Some(route), Some(raw_budget)) = (largest, &raw.max_buffered_bytes) {
            self.error(
                "max_buffered_bytes",
                &raw_budget.referenced,
                format!(
                    "must be at least the largest max_message_bytes ({} bytes, route \"{}\") so that any message can be read; raise it, or lower that route's max_message_bytes, not \"{}\" ({budget} bytes)",
                    route.max_message_bytes, route.name, raw_budget.value
                ),
            );
        } else if let Some(route) = largest {
            let at = raw.routes.referenced;
            self.error(
                "max_buffered_bytes",
                &at,
                format!(
                    "the default budget ({budget} bytes) is smaller than route \"{}\"'s max_message_bytes ({} bytes); set max_buffered_bytes to at least that",
                    route.name, route.max_message_bytes
                ),
            );
        }
        budget
    }

    /// `admin:`: its address, token file, read protection, allowed hosts and TLS.
    fn admin(&mut self, raw: &super::raw::RawAdmin) -> Admin {
        let listen = self.value(
            "admin.listen".into(),
            &Some(raw.listen.clone()),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            parse_listen,
        );
        let mut token_file = None;
        let token = raw.token_file.as_ref().and_then(|written| {
            let path = self.file("admin.token_file".into(), written)?;
            token_file = Some(path.clone());
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    let message = self.io_message(written.value.trim(), &e);
                    self.error("admin.token_file", &written.referenced, message);
                    return None;
                }
            };
            let token = text.lines().next().unwrap_or("").trim();
            if token.is_empty() {
                self.error(
                    "admin.token_file",
                    &written.referenced,
                    format!("\"{}\" holds no token: put one line with the token in it (e.g. from `openssl rand -hex 32`)", written.value.trim()),
                );
                return None;
            }
            Some(AdminToken(token.to_string()))
        });
        let protect_reads = self.value(
            "admin.protect_reads".into(),
            &raw.protect_reads,
            false,
            parse_bool,
        );
        if protect_reads && token.is_none() {
            if let Some(at) = &raw.protect_reads {
                self.error(
                    "admin.protect_reads",
                    &at.referenced,
                    "protect_reads needs admin.token_file (the token the reads must carry)",
                );
            }
        }
        let mut allowed_hosts = Vec::new();
        for (i, host) in raw
            .allowed_hosts
            .iter()
            .flat_map(|hosts| hosts.value.iter())
            .enumerate()
        {
            let name = host.value.trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', ' ', '@']) {
                self.error(
                    format!("admin.allowed_hosts[{i}]"),
                    &host.referenced,
                    format!("\"{}\" is not a host name; give a name as clients write it in the Host header, e.g. guard.example.org", host.value),
                );
            } else {
                allowed_hosts.push(name);
            }
        }
        let tls = raw
            .tls
            .as_ref()
            .and_then(|tls| self.server_tls("admin.tls", tls));
        Admin {
            listen,
            token,
            token_file,
            protect_reads,
            allowed_hosts,
            tls,
        }
    }

    /// Resolves a file path from the config and checks the file can be opened, reporting it
    /// with the path as written. `None` when it cannot be used.
    pub(super) fn file(&mut self, path: String, raw: &Text) -> Option<PathBuf> {
        let written = raw.value.trim();
        if written.is_empty() {
            self.error(path, &raw.referenced, "a file path is required here");
            return None;
        }
        let resolved = self.base_dir.join(written);
        let problem = match std::fs::metadata(&resolved) {
            Ok(meta) if meta.is_dir() => Some(format!(
                "\"{written}\" is a directory; give the path of a PEM file"
            )),
            Ok(_) => match std::fs::File::open(&resolved) {
                Ok(_) => None,
                Err(e) => Some(self.io_message(written, &e)),
            },
            Err(e) => Some(self.io_message(written, &e)),
        };
        match problem {
            None => {
                self.inputs.push(resolved.clone());
                Some(resolved)
            }
            Some(message) => {
                self.error(path, &raw.referenced, message);
                None
            }
        }
    }

    pub(super) fn io_message(&self, written: &str, e: &io::Error) -> String {
        let relative_note = if Path::new(written).is_relative() {
            format!(
                " (relative paths are resolved from the config file's directory, here {})",
                self.base_dir.display()
            )
        } else {
            String::new()
        };
        match e.kind() {
            io::ErrorKind::NotFound => format!("file \"{written}\" not found{relative_note}"),
            io::ErrorKind::PermissionDenied => format!(
                "file \"{written}\" is not readable by this user (permission denied); fix its permissions or ownership"
            ),
            _ => format!("file \"{written}\" cannot be read: {e}"),
        }
    }
}

/// Whether two listen addresses cannot both be bound. Port 0 never clashes (each bind gets its
/// own port). An unspecified IPv4 address covers every IPv4 address of the port; an unspecified
/// IPv6 address covers every address of the port, since Linux binds `[::]` dual-stack by default.
pub(super) fn listen_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: IpAddr, other: IpAddr| match wild {
        IpAddr::V6(w) if w.is_unspecified() => true,
        IpAddr::V4(w) if w.is_unspecified() => other.is_ipv4(),
        _ => false,
    };
    ia == ib || covers(ia, ib) || covers(ib, ia)
}
