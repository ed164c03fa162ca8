//! The `mllp-guard` command line: `run`, `check`, `send`, `sink`, `status`, `disconnect`,
//! `health`, `queue`, `demo`, `man`. Sets up logging and maps outcomes to exit codes (0 ok, 1
//! failure at run time, 2 invalid configuration or usage).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mllp_guard::config::Config;
use mllp_guard::inbound::workers::Workers;
use mllp_guard::ops::log_format;
use mllp_guard::tools::demo;
use mllp_guard::tools::peer::send::{self, SendOptions};
use mllp_guard::tools::peer::sink::{Sink, SinkOptions};
use mllp_guard::wire::hl7::AckCode;
use mllp_guard::{app, tls};

/// The static musl build's allocator: musl's own malloc is several times slower per message
/// under the relay's threads (benches/allocator_load.py; README, "Releases and verification").
/// Builds against glibc keep glibc's malloc.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mllp-guard",
    version = env!("MLLP_GUARD_BUILD"),
    about = "A transparent MLLP proxy and HL7-aware firewall"
)]
struct Cli {
    /// Format of the log lines on stderr: text (`LEVEL target: message key=value`) or json (one
    /// object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the guard in the foreground until SIGTERM/SIGINT.
    Run {
        /// The configuration file (YAML); relative paths inside it resolve from its directory.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration: a summary line per route, or every error (exit 2).
    Check {
        /// The configuration file (YAML) to validate, with every file it names.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Also print the effective configuration, every default filled in.
        #[arg(long)]
        print: bool,
    },
    /// Send files as MLLP messages and check every ack (exit 0 only if all are positive and match).
    Send {
        /// Receiver address, HOST:PORT (a name, an IPv4 address, or [IPv6]:PORT).
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
        /// Connect with TLS, trusting only this CA (PEM file). Without it: plaintext.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// The TLS server name to verify. Default: the host part of --to.
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
        /// Client certificate chain (PEM file, leaf first) for mutual TLS; needs --key. Default:
        /// no client certificate.
        #[arg(long, requires = "key", value_name = "FILE")]
        cert: Option<PathBuf>,
        /// The private key (PEM file) of --cert.
        #[arg(long, requires = "cert", value_name = "FILE")]
        key: Option<PathBuf>,
        /// Limit for connecting and for each ack, a duration (500ms, 30s, 2m).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        timeout: Duration,
        /// One JSON object per message on stdout instead of a tab-separated line.
        #[arg(long)]
        json: bool,
        /// Files to send, one message each; a directory means its files in name order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// A test receiver: acks every message (MSA-2 = its MSH-10) and can save payloads.
    Sink {
        /// Address to listen on, IP:PORT (127.0.0.1:2576, [::1]:2576; port 0 picks a free one).
        #[arg(long, value_name = "IP:PORT")]
        listen: SocketAddr,
        /// Serve TLS with this certificate chain (PEM file, leaf first); needs --tls-key.
        /// Without it: plaintext.
        #[arg(long, requires = "tls_key", value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM file) of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this CA (PEM file); needs --tls-cert. Default:
        /// no client certificate asked for.
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        client_ca: Option<PathBuf>,
        /// The ack code every message is answered with: AA, AE, AR (or CA, CE, CR).
        #[arg(long, default_value = "AA", value_parser = parse_ack_code, value_name = "CODE")]
        ack: AckCode,
        /// Save each payload byte-exact into this directory as NNNNNN_<MSH-10>.hl7, numbered on
        /// from the files already there. Default: nothing saved.
        #[arg(long, value_name = "DIR")]
        save_dir: Option<PathBuf>,
        /// Largest message taken, in bytes or with a unit (512KiB, 64MiB, 1GB); a larger one is
        /// discarded unanswered.
        #[arg(long, default_value = "64MiB", value_parser = parse_message_size, value_name = "SIZE")]
        max_message_bytes: usize,
    },
    /// A running guard's routes and live connections, from its admin endpoint.
    Status {
        /// The admin endpoint, http://HOST:PORT (its `admin.listen`).
        #[arg(long, env = ADMIN_ENV, default_value = DEFAULT_ADMIN, value_name = "URL")]
        admin: String,
        /// A file whose first line is the admin token (needed with `admin.protect_reads`).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// One JSON object {routes, connections}, as the API gives them.
        #[arg(long)]
        json: bool,
    },
    /// Closes live connections by id (see `status`), after the message in flight has its ack.
    Disconnect {
        /// The admin endpoint, http://HOST:PORT (its `admin.listen`).
        #[arg(long, env = ADMIN_ENV, default_value = DEFAULT_ADMIN, value_name = "URL")]
        admin: String,
        /// A file whose first line is the admin token (`admin.token_file`).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Close at once instead of after the message in flight.
        #[arg(long)]
        now: bool,
        /// Connection ids, as `status` shows them.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Liveness probe (a container's HEALTHCHECK): GET /healthz from a running guard's admin
    /// endpoint; exit 0 only on HTTP 200, 1 with the reason otherwise.
    Health {
        /// The admin endpoint, http://HOST:PORT (its `admin.listen`). Sent with `Host:
        /// localhost`, which the guard accepts whatever its `admin.allowed_hosts`.
        #[arg(long, env = ADMIN_ENV, default_value = DEFAULT_ADMIN, value_name = "URL")]
        admin: String,
        /// A file whose first line is the admin token (needed with `admin.protect_reads`).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Custody queues: list, show, replay dead letters, move, salvage, purge.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Quick start: run the shipped config with a sink behind it and send the sample messages
    /// through it over TLS, printing each ack.
    Demo {
        /// The configuration to run (its first route listens; its upstream is where the sink
        /// starts); a relative path is taken from the current directory, the repository's root
        /// under `cargo run`.
        #[arg(long, default_value = demo::DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
        /// A message file, or a directory whose files are sent in name order.
        #[arg(long, default_value = demo::DEFAULT_MESSAGES, value_name = "PATH")]
        messages: PathBuf,
    },
    /// The manual page mllp-guard(1), generated from these commands and options (roff), on
    /// stdout: `mllp-guard man | man -l -`.
    Man {
        /// Write mllp-guard.1 and a page per command (mllp-guard-run.1, ...) into this
        /// directory instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `--admin`'s default, and the variable that overrides it (a container sets it when its admin
/// endpoint is not on port 9102: its HEALTHCHECK runs `mllp-guard health`).
const DEFAULT_ADMIN: &str = "http://127.0.0.1:9102";
const ADMIN_ENV: &str = "MLLP_GUARD_ADMIN";

#[derive(Subcommand)]
enum QueueAction {
    /// Depth, bytes, oldest age and dead letters per store-and-forward route; every record of
    /// an embedded queue is checked, and damage is named (exit status 1 when a queue is damaged).
    List {
        #[command(flatten)]
        args: QueueArgs,
        /// One JSON array, an object per route: route, backend, pending, bytes, oldest_age_s,
        /// dead_letters.
        #[arg(long)]
        json: bool,
    },
    /// Pending messages and dead letters by MSH-10, type, size, age and reason, and damaged
    /// records by sequence range (exit status 1 when a queue is damaged).
    Show {
        #[command(flatten)]
        args: QueueArgs,
        /// Also print each message's payload (patient data!).
        #[arg(long)]
        payload: bool,
        /// At most this many records per list (pending, dead letters).
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
    },
    /// Move dead letters back into the queue for delivery (the guard must be stopped).
    Replay(QueueArgs),
    /// Hand a stranded queue (of a route renamed or removed) to a configured store-and-forward
    /// route whose own queue is empty (the guard must be stopped).
    Move {
        /// The guard's configuration file (YAML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The stranded queue: its directory's name under state_dir (the old route name).
        #[arg(long, value_name = "OLD")]
        from: String,
        /// The configured route that takes it over.
        #[arg(long, value_name = "NEW")]
        to: String,
    },
    /// Rescue a damaged embedded queue (the guard must be stopped): write every intact record
    /// (pending, then dead letters) to payload files named by sequence number and MSH-10, then
    /// rebuild the queue from them, setting the damaged bytes aside in `<queue>/damaged/`.
    Salvage {
        /// The guard's configuration file (YAML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The store-and-forward route whose queue to salvage.
        #[arg(long, value_name = "NAME")]
        route: String,
        /// Where the payload files go (`pending/` and `dead-letters/` below it). Default: the
        /// route's queue directory (`<state_dir>/<route>`), under `salvaged/<unix time in ms>`.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Drop pending messages (or dead letters) for good, after confirmation (guard stopped).
    Purge {
        #[command(flatten)]
        args: QueueArgs,
        /// Purge the dead letters instead of the pending messages.
        #[arg(long)]
        dead_letters: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct QueueArgs {
    /// The guard's configuration file (YAML): its store-and-forward routes name the queues.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Only this route. Default: every store-and-forward route.
    #[arg(long, value_name = "NAME")]
    route: Option<String>,
}

/// `sink --max-message-bytes`: a size as the config writes it, at least 1 KiB.
fn parse_message_size(s: &str) -> Result<usize, String> {
    let bytes = mllp_guard::config::parse_size(s)?;
    match usize::try_from(bytes) {
        Ok(n) if n >= 1024 => Ok(n),
        _ => Err(format!("must be at least 1KiB, not \"{s}\"")),
    }
}

fn parse_ack_code(s: &str) -> Result<AckCode, String> {
    AckCode::parse(s.as_bytes())
        .ok_or_else(|| format!("\"{s}\" is not an ack code (AA, AE, AR, CA, CE, CR)"))
}

/// The async runtime's shape, from `MLLP_GUARD_RUNTIME`:
/// - `per-core` (the default): a guard's sender connections are served on one single-threaded
///   runtime per CPU the process may use ([`mllp_guard::inbound::workers`]), each connection and
///   its upstream leg on one thread; the rest runs on a multi-thread runtime. Other commands
///   run as with `multi-thread`.
/// - `multi-thread`: everything on tokio's work-stealing runtime, a worker per CPU (the
///   default until issue 22's per-core workers; kept to compare and as a way back).
/// - `current-thread`: everything on one thread.
///
/// `None` (reported) for anything else. See BENCHMARKS.md for what each costs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RuntimeShape {
    PerCore,
    MultiThread,
    CurrentThread,
}

fn runtime_shape() -> Option<RuntimeShape> {
    match std::env::var("MLLP_GUARD_RUNTIME").as_deref() {
        Err(_) | Ok("") | Ok("per-core") => Some(RuntimeShape::PerCore),
        Ok("multi-thread") => Some(RuntimeShape::MultiThread),
        Ok("current-thread") => Some(RuntimeShape::CurrentThread),
        Ok(other) => {
            eprintln!(
                "error: MLLP_GUARD_RUNTIME={other:?}: expected per-core (the default), multi-thread or current-thread"
            );
            None
        }
    }
}

/// The connection workers for a command that runs a guard (`run`, `demo`) in the per-core
/// shape; `None` otherwise.
fn start_workers(shape: RuntimeShape, command: &Command) -> std::io::Result<Option<Workers>> {
    if shape != RuntimeShape::PerCore
        || !matches!(command, Command::Run { .. } | Command::Demo { .. })
    {
        return Ok(None);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    mllp_guard::inbound::workers::start(cpus).map(Some)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own table; its guard logs only warnings unless MLLP_GUARD_LOG says
    // otherwise. The queue commands print their answer; the NATS client's connection notes
    // would only be noise around it.
    let default_level = if matches!(cli.command, Command::Demo { .. } | Command::Queue { .. }) {
        "warn"
    } else {
        "info"
    };
    // A running guard's lines (the audit trail above all) are written in batches; the other
    // commands write theirs at once, in order with what they print.
    let batched = matches!(cli.command, Command::Run { .. });
    init_logging(cli.log_format, default_level, batched);
    let Some(shape) = runtime_shape() else {
        return ExitCode::from(2);
    };
    let workers = match start_workers(shape, &cli.command) {
        Ok(workers) => workers,
        Err(err) => {
            eprintln!("error: cannot start the connection workers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = match shape {
        RuntimeShape::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeShape::PerCore | RuntimeShape::MultiThread => {
            tokio::runtime::Builder::new_multi_thread()
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => match load(&config) {
                Ok(config) => report(app::run(config).await),
                Err(code) => code,
            },
            Command::Check { config, print } => match load(&config) {
                Ok(config) => {
                    // With --print stdout is one YAML document: the report becomes comments.
                    let prefix = if print { "# " } else { "" };
                    for route in &config.routes {
                        println!("{prefix}{}", summary(route));
                    }
                    for line in expiry_report(&config, std::time::SystemTime::now()) {
                        println!("{prefix}{line}");
                    }
                    for q in mllp_guard::custody::stranded::stranded_queues(&config) {
                        eprintln!("warning: {}", mllp_guard::custody::stranded::warning(&q));
                    }
                    for s in mllp_guard::custody::stranded::stranded_streams(&config).await {
                        eprintln!(
                            "warning: {}",
                            mllp_guard::custody::stranded::stream_warning(&s)
                        );
                    }
                    if print {
                        print!("{}", mllp_guard::tools::effective::render(&config));
                    }
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            },
            Command::Send {
                to,
                tls_ca,
                server_name,
                cert,
                key,
                timeout,
                json,
                paths,
            } => {
                let output = if json { Output::Json } else { Output::Lines };
                send_command(to, tls_ca, server_name, cert, key, timeout, output, paths).await
            }
            Command::Sink {
                listen,
                tls_cert,
                tls_key,
                client_ca,
                ack,
                save_dir,
                max_message_bytes,
            } => {
                sink_command(
                    listen,
                    tls_cert,
                    tls_key,
                    client_ca,
                    ack,
                    save_dir,
                    max_message_bytes,
                )
                .await
            }
            Command::Queue { action } => queue_command(action).await,
            Command::Status {
                admin,
                token_file,
                json,
            } => {
                use mllp_guard::tools::console;
                let mut out = String::new();
                let done = match console::Admin::new(&admin, token_file.as_deref()) {
                    Ok(admin) => console::status(&admin, json, &mut out).await,
                    Err(err) => Err(err),
                };
                print!("{out}");
                report(done)
            }
            Command::Disconnect {
                admin,
                token_file,
                now,
                ids,
            } => {
                use mllp_guard::tools::console;
                let mut out = String::new();
                let done = match console::Admin::new(&admin, token_file.as_deref()) {
                    Ok(admin) => console::disconnect(&admin, &ids, now, &mut out).await,
                    Err(err) => Err(err),
                };
                print!("{out}");
                match done {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::FAILURE,
                    Err(err) => report(Err(err)),
                }
            }
            Command::Health { admin, token_file } => {
                use mllp_guard::tools::console;
                let done = match console::Admin::new(&admin, token_file.as_deref()) {
                    Ok(admin) => console::health(&admin.as_localhost()).await,
                    Err(err) => Err(err),
                };
                match done {
                    Ok(body) => {
                        println!("healthy: {body}");
                        ExitCode::SUCCESS
                    }
                    Err(err) => report(Err(err)),
                }
            }
            Command::Man { out } => report(man_pages(out.as_deref())),
            Command::Demo { config, messages } => match demo::run(&config, &messages).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => report(Err(err)),
            },
        }
    });
    // Every line of a clean exit is written before it: the connections a drain left (their
    // last lines), then the main runtime's tasks.
    drop(workers);
    drop(runtime);
    mllp_guard::ops::log_writer::flush();
    code
}

async fn queue_command(action: QueueAction) -> ExitCode {
    use mllp_guard::tools::operator;
    if let QueueAction::Move { config, from, to } = &action {
        let config = match load(config) {
            Ok(config) => config,
            Err(code) => return code,
        };
        let mut out = std::io::stdout().lock();
        return report(operator::move_queue(&config, from, to, &mut out));
    }
    if let QueueAction::Salvage { config, route, out } = &action {
        let config = match load(config) {
            Ok(config) => config,
            Err(code) => return code,
        };
        let mut stdout = std::io::stdout().lock();
        return report(mllp_guard::tools::salvage::salvage(
            &config,
            route,
            out.as_deref(),
            &mut stdout,
        ));
    }
    let (QueueAction::List { args, .. }
    | QueueAction::Show { args, .. }
    | QueueAction::Replay(args)
    | QueueAction::Purge { args, .. }) = &action
    else {
        return ExitCode::FAILURE;
    };
    let config = match load(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let route = args.route.as_deref();
    let mut out = std::io::stdout().lock();
    let result = match &action {
        QueueAction::List { json, .. } => operator::list(&config, route, *json, &mut out).await,
        QueueAction::Show { payload, limit, .. } => {
            operator::show(&config, route, *payload, *limit, &mut out).await
        }
        QueueAction::Replay(_) => operator::replay(&config, route, &mut out).await,
        QueueAction::Move { .. } | QueueAction::Salvage { .. } => return ExitCode::FAILURE,
        QueueAction::Purge {
            dead_letters, yes, ..
        } => {
            operator::purge(
                &config,
                route,
                *dead_letters,
                *yes,
                &mut std::io::stdin().lock(),
                &mut out,
            )
            .await
        }
    };
    report(result)
}

/// `man`: the pages clap_mangen renders from [`Cli`]: mllp-guard.1 on stdout, or every page
/// (one per command, as `git` has) into `out`. They carry the package version, not the commit,
/// so the shipped pages (`deploy/man/`) change only when the commands do.
fn man_pages(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    let cmd = Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    match out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            use std::io::Write as _;
            std::io::stdout().lock().write_all(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("--out {}", dir.display()))?;
        }
    }
    Ok(())
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(2)
    })
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// How `send` reports each message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Lines,
    Json,
}

/// More files than this get a progress bar (on stderr, only when it is a terminal).
const PROGRESS_FROM: usize = 5;

#[allow(clippy::too_many_arguments)]
async fn send_command(
    to: String,
    tls_ca: Option<PathBuf>,
    server_name: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    timeout: Duration,
    output: Output,
    paths: Vec<PathBuf>,
) -> ExitCode {
    let tls = match tls_ca {
        None => None,
        Some(ca) => {
            let host = server_name.unwrap_or_else(|| host_part(&to).to_string());
            let name = match rustls_pki_types::ServerName::try_from(host.clone()) {
                Ok(name) => name,
                Err(_) => {
                    eprintln!(
                        "error: \"{host}\" is not a valid TLS server name (use --server-name)"
                    );
                    return ExitCode::from(2);
                }
            };
            match tls::client_config(&ca, cert.as_deref(), key.as_deref()) {
                Ok(cfg) => Some((cfg, name)),
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let files = match send::expand(&paths) {
        Ok(files) => files,
        Err(err) => return report(Err(err)),
    };
    let opts = SendOptions { to, tls, timeout };
    let progress = (files.len() > PROGRESS_FROM).then(|| {
        let bar = indicatif::ProgressBar::new(files.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let print = |sent: &send::Sent| {
        use std::io::Write as _;
        let line = match output {
            Output::Lines => sent.line(),
            Output::Json => sent.json(),
        };
        let write = || {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        };
        match &progress {
            // The bar steps aside while the line is written, then redraws below it.
            Some(bar) => {
                bar.suspend(write);
                bar.inc(1);
            }
            None => write(),
        }
    };
    let result = send::send_files(&opts, &files, print).await;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    match result {
        Ok(results) if results.iter().all(|r| r.ok()) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => report(Err(err)),
    }
}

async fn sink_command(
    listen: SocketAddr,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    ack: AckCode,
    save_dir: Option<PathBuf>,
    max_message_bytes: usize,
) -> ExitCode {
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => match tls::server_config(&cert, &key, client_ca.as_deref()) {
            Ok(cfg) => Some(cfg),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let opts = SinkOptions {
        listen,
        tls,
        ack,
        save_dir,
        max_message_bytes,
        verbose: true,
    };
    let sink = match Sink::start(opts).await {
        Ok(sink) => sink,
        Err(err) => {
            eprintln!("error: cannot listen on {listen}: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", sink.local_addr());
    let _ = tokio::signal::ctrl_c().await;
    sink.stop().await;
    ExitCode::SUCCESS
}

/// One line describing a validated route, for `check`.
fn summary(route: &mllp_guard::config::Route) -> String {
    let listener = match &route.tls {
        None => "plain".to_string(),
        Some(tls) if tls.client_ca.is_some() => "TLS, client certificate required".to_string(),
        Some(_) => "TLS".to_string(),
    };
    let upstream = &route.upstream;
    // Store-and-forward delivers from the queue over the drainer's own connection: the route's
    // `connections` setting does not apply there, so it is not shown.
    let connections = match (&route.delivery, upstream.connections) {
        (mllp_guard::config::Delivery::StoreAndForward(_), _) => String::new(),
        (_, mllp_guard::config::Connections::Paired) => ", connections paired".to_string(),
        (_, mllp_guard::config::Connections::Pool(n)) => format!(", connections pool of {n}"),
    };
    let delivery = match &route.delivery {
        mllp_guard::config::Delivery::Forward => "forward".to_string(),
        mllp_guard::config::Delivery::StoreAndForward(custody) => format!(
            "store-and-forward (queue {}, ack_mode {})",
            match &custody.backend {
                mllp_guard::config::QueueBackend::Embedded =>
                    custody.queue_dir.display().to_string(),
                mllp_guard::config::QueueBackend::JetStream(js) => format!(
                    "JetStream stream {} x{} on {}",
                    js.stream,
                    js.replicas,
                    js.servers.join(",")
                ),
            },
            custody.ack_mode.as_str()
        ),
    };
    format!(
        "route {}: {} ({}) allow [{}] -> {} ({}{}); delivery {delivery}; max {} connections, max message {} bytes, on upstream failure: {}",
        route.name,
        match &route.sender {
            mllp_guard::config::SenderRole::Listen(addr) => addr.to_string(),
            dial => dial.to_string(),
        },
        listener,
        route.allow,
        upstream.role,
        match (&upstream.tls, &upstream.via) {
            (None, None) => "plain".to_string(),
            (Some(_), None) => "TLS".to_string(),
            (None, Some(via)) => format!("plain via {via}"),
            (Some(_), Some(via)) => format!("TLS via {via}"),
        },
        connections,
        route.max_connections,
        route.max_message_bytes,
        match route.on_upstream_failure {
            mllp_guard::config::OnUpstreamFailure::Nack => "nack",
            mllp_guard::config::OnUpstreamFailure::Close => "close",
        }
    )
}

/// Certificates closer than this to their end date are warned about by `check`.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// For `check`: every configured certificate (listener and upstream chains, CAs) with its end
/// date, and every CRL with its next update; a `warning:` line for each certificate that
/// expires within 30 days (or has expired) and each CRL past its next update.
fn expiry_report(config: &Config, now: std::time::SystemTime) -> Vec<String> {
    use mllp_guard::tls::{Material, PemRole};
    let mut blocks: Vec<(String, &Material)> = Vec::new();
    for route in &config.routes {
        if let Some(tls) = &route.tls {
            blocks.push((format!("route {} listener", route.name), &tls.material));
        }
        if let Some(tls) = &route.upstream.tls {
            blocks.push((format!("route {} upstream", route.name), &tls.material));
        }
    }
    for (name, upstream) in &config.upstreams {
        if let Some(tls) = &upstream.tls {
            blocks.push((format!("upstream {name}"), &tls.material));
        }
    }
    let days = |d: Duration| d.as_secs() / 86_400;
    let mut lines = Vec::new();
    for (owner, material) in blocks {
        for cert in &material.certificates {
            let what = match cert.role {
                PemRole::TrustedCa => "trusted CA",
                _ => "certificate",
            };
            let until = tls::pki::show_time(cert.dates.not_after);
            let head = format!(
                "{owner} {what} \"{}\" ({})",
                cert.path.display(),
                cert.dates.subject
            );
            match cert.dates.not_after.duration_since(now) {
                Err(_) => lines.push(format!("warning: {head} EXPIRED at {until}")),
                Ok(left) if left < EXPIRY_WARNING => lines.push(format!(
                    "warning: {head} expires within 30 days, at {until} (in {} days)",
                    days(left)
                )),
                Ok(left) => lines.push(format!(
                    "{head} expires at {until} (in {} days)",
                    days(left)
                )),
            }
        }
        for (path, crl) in &material.crls {
            let head = format!("{owner} CRL \"{}\" ({})", path.display(), crl.issuer);
            match crl.next_update {
                Some(next) if next < now => lines.push(format!(
                    "warning: {head} is stale: its next update was due at {}",
                    tls::pki::show_time(next)
                )),
                Some(next) => lines.push(format!(
                    "{head} next update at {}",
                    tls::pki::show_time(next)
                )),
                None => lines.push(format!("{head} gives no next update")),
            }
        }
    }
    lines
}

/// The host part of `host:port` or `[v6]:port`.
fn host_part(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Logs to stderr; `batched`: through the [`log_writer`](mllp_guard::ops::log_writer) (a write
/// per many lines, flushed within 100 ms, at exit and on a panic).
fn init_logging(format: LogFormat, default_level: &str, batched: bool) {
    use mllp_guard::ops::audit_sink;
    use mllp_guard::ops::log_writer::{self, LogWriter};
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::{reload, EnvFilter};
    let initial = std::env::var("MLLP_GUARD_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| default_level.to_string());
    // Reloadable, so that `PUT /api/v1/log-level` changes it without a restart. It filters
    // stderr only: an audit file (`audit.file`, a running guard's) takes every audit line.
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&initial));
    let stderr_filter = filter.and(audit_sink::NotDiverted);
    let writer = if batched {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            log_writer::flush();
            previous(info);
        }));
        LogWriter::batched()
    } else {
        LogWriter::direct()
    };
    let audit_file = batched.then(audit_sink::file_layer);
    // Colours only on a terminal: escape codes in journald, files or `docker logs` are noise,
    // and writing them was a fifth of an audit line's cost (callgrind, issue 7).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !ansi {
        // Audit lines skip tracing's dispatch; the same filter and formats decide their bytes.
        audit_sink::write_directly(writer, matches!(format, LogFormat::Json), &initial);
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_timer(log_format::UtcMicros)
        .with_writer(writer);
    let registry = tracing_subscriber::registry().with(audit_file);
    match format {
        LogFormat::Text => registry
            .with(
                fmt.fmt_fields(log_format::PlainFields)
                    .event_format(log_format::PlainLine::new(log_format::UtcMicros))
                    .with_filter(stderr_filter),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                fmt.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(log_format::JsonLine::new(log_format::UtcMicros))
                    .with_filter(stderr_filter),
            )
            .init(),
    }
    let current = std::sync::Mutex::new(initial);
    mllp_guard::ops::admin::set_log_control(Box::new(move |next| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(next) = next else {
            return Ok(current.clone());
        };
        let filter = EnvFilter::try_new(next).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())?;
        audit_sink::stderr_filter_changed(next);
        Ok(std::mem::replace(&mut *current, next.to_string()))
    }));
}
