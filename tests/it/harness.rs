//! The loopback harness: a guard started in-process from YAML, fake upstreams with chosen
//! misbehaviours, and a small MLLP client. Every listener binds port 0 on loopback and every wait
//! is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mllp_guard::app::Guard;
use mllp_guard::config::Config;
use mllp_guard::net::Stream;
use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::hl7::{AckCode, AckView, Header};
use mllp_guard::wire::link::Link;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::pki::{Pki, Usage};

/// The synthetic corpus vendored from the shared one.
pub fn corpus(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(file)
}

pub fn corpus_bytes(file: &str) -> Vec<u8> {
    std::fs::read(corpus(file)).unwrap_or_else(|e| panic!("corpus file {file}: {e}"))
}

/// The control id (MSH-10) of a payload, as text.
pub fn id_of(payload: &[u8]) -> String {
    String::from_utf8_lossy(
        Header::parse(payload)
            .expect("a message with a header")
            .control_id(),
    )
    .into_owned()
}

/// The guard binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mllp-guard");

/// A child process that is killed (and reaped) when the test ends, however it ends.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `BINARY run --config CONFIG` with its output discarded, killed when dropped (`binary` is
/// [`BIN`] or another build of the guard, e.g. a release artefact).
pub fn spawn_quiet(binary: &Path, config: &Path) -> Proc {
    Proc(
        std::process::Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A small ADT^A01 with this control id, padded with an NTE so the payload is about `size` bytes.
pub fn message(control_id: &str, size: usize) -> Vec<u8> {
    let mut msg = format!(
        "MSH|^~\\&|SEND_APP|SEND_FAC|RECV_APP|RECV_FAC|20240102030405||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|A01|20240102030405\r\
         PID|1||MRN1^^^HOSP^MR||TEST^PATIENT||19800101|F\r"
    )
    .into_bytes();
    if msg.len() + 8 < size {
        msg.extend_from_slice(b"NTE|1||");
        msg.resize(size - 1, b'x');
        msg.push(b'\r');
    }
    msg
}

/// A directory holding a test's certificates and config.
pub struct TestDir {
    pub dir: tempfile::TempDir,
    pki: Pki,
}

impl TestDir {
    /// Makes a CA (`ca.pem`), a guard server cert (`guard.pem/key`), a guard client cert
    /// (`guard-client.pem/key`), an upstream server cert (`ehr.pem/key`, SAN ehr.example.org and
    /// localhost) and a sender client cert (`lab.pem/key`, SAN lab.example.org).
    pub fn new() -> TestDir {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("test CA");
        pki.write_ca(dir.path(), "ca.pem");
        pki.leaf("localhost", Usage::Server)
            .write(dir.path(), "guard");
        pki.leaf("ehr.example.org", Usage::Server)
            .write(dir.path(), "ehr");
        pki.leaf("guard.example.org", Usage::Client)
            .write(dir.path(), "guard-client");
        pki.leaf("lab.example.org", Usage::Client)
            .write(dir.path(), "lab");
        TestDir { dir, pki }
    }

    /// Another client certificate from the test CA, as `<stem>.pem/.key`.
    pub fn pki_leaf(&self, name: &str, stem: &str) {
        self.pki
            .leaf(name, Usage::Client)
            .write(self.dir.path(), stem);
    }

    /// A certificate from the test CA with a chosen serial and end date, as `<stem>.pem/.key`.
    pub fn leaf_with(&self, name: &str, usage: Usage, serial: u64, until_days: i64, stem: &str) {
        self.pki
            .leaf_with(name, usage, serial, until_days)
            .write(self.dir.path(), stem);
    }

    /// Writes `file`: a CRL of the test CA revoking `serials`, valid from `from_days` to
    /// `until_days` from now.
    pub fn crl(&self, file: &str, serials: &[u64], from_days: i64, until_days: i64) {
        std::fs::write(
            self.path(file),
            self.pki.crl_pem(serials, from_days, until_days),
        )
        .unwrap();
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `yaml` as the config and starts a guard from it.
    pub async fn guard(&self, yaml: &str) -> Guard {
        let file = self.path("guard.yaml");
        std::fs::write(&file, yaml).unwrap();
        let config = Config::load(&file).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        Guard::start(config).await.expect("guard starts")
    }

    pub fn server_tls(&self, stem: &str, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
        mllp_guard::tls::server_config(
            &self.path(&format!("{stem}.pem")),
            &self.path(&format!("{stem}.key")),
            client_ca.map(|ca| self.path(ca)).as_deref(),
        )
        .unwrap()
    }

    pub fn client_tls(&self, ca: &str, client: Option<&str>) -> Arc<rustls::ClientConfig> {
        let cert = client.map(|stem| self.path(&format!("{stem}.pem")));
        let key = client.map(|stem| self.path(&format!("{stem}.key")));
        mllp_guard::tls::client_config(&self.path(ca), cert.as_deref(), key.as_deref()).unwrap()
    }
}

/// How a fake upstream answers each message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Behaviour {
    /// A correct AA ack.
    Ack,
    /// An ack whose MSA-2 names another message.
    WrongControlId,
    /// A correct ack, sent only after this delay.
    LateAck(Duration),
    /// A correct ack, then the connection is closed (several HL7 libraries do this).
    AckThenClose,
    /// Reads the message and never answers.
    Silent,
    /// Answers with this code (MSA-2 correct) the first `n` messages, then AA.
    CodeFirst(AckCode, usize),
    /// Answers with this code every message whose MSH-10 starts with the prefix, AA the others.
    CodeFor(AckCode, &'static str),
}

/// A receiver that records what it got and misbehaves on request.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    pub connections: Arc<AtomicUsize>,
    pub max_concurrent: Arc<AtomicUsize>,
    /// The address each connection came from, in order.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
}

impl FakeUpstream {
    pub async fn start(behaviour: Behaviour) -> FakeUpstream {
        Self::start_with_tls(behaviour, None).await
    }

    pub async fn start_with_tls(
        behaviour: Behaviour,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, behaviour, tls, Arc::new(Mutex::new(Vec::new())))
    }

    /// Starts on a given address (to restart "the same" receiver), recording into `received`.
    pub async fn start_at(
        addr: SocketAddr,
        behaviour: Behaviour,
        received: Arc<Mutex<Vec<Vec<u8>>>>,
    ) -> FakeUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, behaviour, None, received)
    }

    fn serve(
        listener: TcpListener,
        behaviour: Behaviour,
        tls: Option<Arc<rustls::ServerConfig>>,
        received: Arc<Mutex<Vec<Vec<u8>>>>,
    ) -> FakeUpstream {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let peers2 = peers.clone();
        let (rx, conns, maxc, stop2) = (
            received.clone(),
            connections.clone(),
            max_concurrent.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                };
                peers2.lock().unwrap().push(peer);
                conns.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                maxc.fetch_max(now, Ordering::SeqCst);
                let (rx, open, stop, tls) = (rx.clone(), open.clone(), stop2.clone(), tls.clone());
                tokio::spawn(async move {
                    let stream = match tls {
                        None => Stream::Plain(tcp),
                        Some(cfg) => match tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            Ok(s) => Stream::ServerTls(Box::new(s)),
                            Err(_) => {
                                open.fetch_sub(1, Ordering::SeqCst);
                                return;
                            }
                        },
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = answer(stream, behaviour, &rx) => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        FakeUpstream {
            addr,
            received,
            connections,
            max_concurrent,
            peers,
            stop,
        }
    }

    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(stream: Stream, behaviour: Behaviour, received: &Mutex<Vec<Vec<u8>>>) {
    let mut link = Link::new(stream, 64 * 1024 * 1024);
    while let Ok(Some(Decoded::Frame(frame))) = link.next().await {
        received.lock().unwrap().push(frame.payload().to_vec());
        let header = Header::parse(frame.payload()).unwrap();
        let ack_with = |code: AckCode, id: &[u8]| {
            let mut a = b"MSH|^~\\&|RECV_APP|RECV_FAC|SEND_APP|SEND_FAC|20240102030405||ACK^A01^ACK|ACK1|P|2.5.1\rMSA|".to_vec();
            a.extend_from_slice(code.as_str().as_bytes());
            a.push(b'|');
            a.extend_from_slice(id);
            a.extend_from_slice(b"|answered by the test upstream\r");
            codec::encode(&a)
        };
        let ack = |id: &[u8]| ack_with(AckCode::AA, id);
        match behaviour {
            Behaviour::Ack => {
                if link.send(&ack(header.control_id())).await.is_err() {
                    return;
                }
            }
            Behaviour::WrongControlId => {
                if link.send(&ack(b"SOMETHING-ELSE")).await.is_err() {
                    return;
                }
            }
            Behaviour::LateAck(delay) => {
                tokio::time::sleep(delay).await;
                if link.send(&ack(header.control_id())).await.is_err() {
                    return;
                }
            }
            Behaviour::AckThenClose => {
                let _ = link.send(&ack(header.control_id())).await;
                link.shutdown().await;
                return;
            }
            Behaviour::Silent => {}
            Behaviour::CodeFor(code, prefix) => {
                let code = if header.control_id().starts_with(prefix.as_bytes()) {
                    code
                } else {
                    AckCode::AA
                };
                if link
                    .send(&ack_with(code, header.control_id()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Behaviour::CodeFirst(code, n) => {
                let seen = received.lock().unwrap().len();
                let code = if seen <= n { code } else { AckCode::AA };
                if link
                    .send(&ack_with(code, header.control_id()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// An MLLP sender for tests.
pub struct Client {
    pub link: Link<Stream>,
}

impl Client {
    pub async fn plain(addr: SocketAddr) -> Client {
        Client::plain_from(addr, "127.0.0.1".parse().unwrap())
            .await
            .unwrap()
    }

    /// Connects from a chosen loopback source address (127.0.0.2 and up are other "hosts").
    pub async fn plain_from(addr: SocketAddr, source: std::net::IpAddr) -> std::io::Result<Client> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Client {
            link: Link::new(Stream::Plain(tcp), 64 * 1024 * 1024),
        })
    }

    pub async fn tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        Ok(Client {
            link: Link::new(Stream::ClientTls(Box::new(tls)), 64 * 1024 * 1024),
        })
    }

    /// Sends one message and returns its ack payload (panics after 20 s without one).
    pub async fn send(&mut self, payload: &[u8]) -> Vec<u8> {
        self.link.send(&codec::encode(payload)).await.expect("send");
        self.read_ack()
            .await
            .expect("an ack, not a closed connection")
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.link.send(bytes).await.expect("send");
    }

    /// The next ack, or None if the guard closed the connection.
    pub async fn read_ack(&mut self) -> Option<Vec<u8>> {
        match tokio::time::timeout(Duration::from_secs(20), self.link.next()).await {
            Ok(Ok(Some(Decoded::Frame(f)))) => Some(f.payload().to_vec()),
            Ok(Ok(Some(Decoded::Oversize { .. }))) => panic!("oversize ack"),
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => panic!("no ack within 20 s"),
        }
    }

    /// Whether the guard closed the connection (bounded wait).
    pub async fn is_closed(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.link.next()).await,
            Ok(Ok(None)) | Ok(Err(_))
        )
    }
}

/// The ack's code and MSA-2, and the MSA-3 text.
pub fn ack_of(payload: &[u8]) -> (AckCode, String, String) {
    let ack = AckView::parse(payload).expect("a parseable ack");
    (
        ack.code(),
        String::from_utf8_lossy(ack.acked_control_id()).into_owned(),
        String::from_utf8_lossy(ack.text()).into_owned(),
    )
}

/// A one-route config; `extra` (route keys), `listener_tls` and `upstream_extra` (upstream keys) are YAML fragments indented to fit, or empty.
pub fn route_yaml(
    upstream: SocketAddr,
    extra: &str,
    listener_tls: &str,
    upstream_extra: &str,
) -> String {
    format!(
        "routes:\n  - name: test\n    listen: 127.0.0.1:0\n{listener_tls}    allow: [127.0.0.1/32]\n{extra}    upstream:\n      address: {upstream}\n      ack_timeout: 2s\n      connect_timeout: 2s\n{upstream_extra}"
    )
}

/// Waits (bounded) until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
