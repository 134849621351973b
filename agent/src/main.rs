//! The `mesh-agent` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agent_app::config::{Config, LogFormat};
use agent_app::{policy_test, telemetry};
use agent_identity::certs;
use clap::{Args, Parser, Subcommand};

mod bundle;
mod daemon;
mod reload;
mod status;
mod systemd;

#[derive(Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Policy agent for the nodes of an edge mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (embedded defaults: data in ./mesh-data, HTTP on 127.0.0.1:8004).
    Run(RunArgs),
    /// Run the central collector: keeps the agents' audit summaries and actions from MQTT, serves
    /// GET /collector/summaries, /collector/nodes and /collector/actions.
    Collector(CollectorArgs),
    /// Check a config file (with the MESH_AGENT_* environment applied) and print the result.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Work with policy directories.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create the mesh CA and node certificates for mutual TLS between nodes.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Inspect a stopped agent's audit ring.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show the local agent (node, revision, members, outbox, breaker, recent decisions and mesh
    /// actions), redrawn in place; printed once when not on a terminal.
    Status {
        /// The agent's API.
        #[arg(long, default_value = "http://127.0.0.1:8004")]
        url: String,
        /// A file holding a read token (the agent's [auth] read_token_file will do).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// CA certificate (PEM) of the API's HTTPS certificate.
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// Seconds between redraws.
        #[arg(long, default_value_t = 2)]
        interval_sec: u64,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Work with OPA bundles on a running agent.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Push an OPA bundle (.tar.gz, signed when the agents have [bundle.keys]) to an agent:
    /// it is verified and activated there, then rolled out to the whole mesh.
    Push {
        /// The bundle archive.
        file: PathBuf,
        /// The bundle's name (its modules' ids start with it).
        #[arg(long)]
        name: String,
        /// The agent's API.
        #[arg(long, default_value = "http://127.0.0.1:8004")]
        url: String,
        /// A file holding an admin token (the agent's [auth] admin_token_file will do).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// CA certificate (PEM) of the API's HTTPS certificate.
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that the audit ring is a whole hash chain: sequence numbers without gaps, every
    /// entry readable and chained to the one before it. Exits 1 if it is not.
    Verify {
        /// The agent's data directory (the agent must be stopped).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the mesh CA: DIR/ca.pem and DIR/ca.key.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/<ID>.pem and DIR/<ID>.key for a node, signed by the CA in DIR.
    Issue {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_name = "ID")]
        node_id: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the test cases beside the policies in DIR (incident *.cases.toml, Rego NAME.cases/).
    Test {
        /// The policy directory (as given to `run --policies`).
        dir: PathBuf,
        /// Print every case, not only failures.
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Args)]
struct CollectorArgs {
    /// The broker the agents publish to.
    #[arg(long, value_name = "URL")]
    mqtt_url: String,
    /// Directory of the collector's data file.
    #[arg(long, value_name = "DIR", default_value = "./collector-data")]
    data_dir: PathBuf,
    /// Address of the collector's HTTP API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8005")]
    http_listen: SocketAddr,
    /// MQTT client id.
    #[arg(long, default_value = "mesh-collector")]
    client_id: String,
    /// Topic of the audit summaries.
    #[arg(long, default_value = "collector/summaries")]
    summaries_topic: String,
    /// Topic of the actions.
    #[arg(long, default_value = "p03/actions")]
    actions_topic: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Requests a second each client may make on average (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate_per_second: u32,
    /// Requests a client may make at once (0: as many as --rate-per-second).
    #[arg(long, default_value_t = 0)]
    rate_burst: u32,
    /// File of bearer tokens (one a line) a caller must present; without it, anyone may read.
    #[arg(long, value_name = "FILE")]
    read_token_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// TOML config file; MESH_AGENT_<KEY> variables and the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Directory of the data file.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the HTTP API.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Import the policy files (*.rules.toml) in DIR at start, idempotently.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Join a mesh with the certificates in DIR (ca.pem, <node-id>.pem, <node-id>.key).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// UDP address gossip (QUIC) listens on [default: 0.0.0.0:7946].
    #[arg(long, value_name = "ADDR")]
    gossip_listen: Option<SocketAddr>,
    /// Address peers reach this node at.
    #[arg(long, value_name = "ADDR")]
    gossip_advertise: Option<SocketAddr>,
    /// Gossip address of a node to join through (repeatable); replaces the configured seeds.
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<String>,
    /// Cluster id; nodes of another cluster are ignored.
    #[arg(long, value_name = "ID")]
    cluster_id: Option<String>,
    /// MQTT broker for intake and upstream (mqtt://host:port or mqtts://host:port).
    #[arg(long, value_name = "URL")]
    mqtt_url: Option<String>,
    /// Simulations only: loss and delay injected under the gossip socket, as FILE says
    /// (`loss=0.1 delay_ms=50`, re-read when it changes). Set by `mesh-sim`'s real engine.
    #[arg(long, value_name = "FILE", hide = true)]
    sim_net_faults: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::CheckConfig { file } => check_config(file),
        Command::Collector(args) => collector(args),
        Command::Policy(PolicyCommand::Test { dir, verbose }) => policy_test(&dir, verbose),
        Command::Audit(AuditCommand::Verify { data_dir }) => audit_verify(&data_dir),
        Command::Status {
            url,
            token_file,
            cacert,
            interval_sec,
            once,
        } => {
            let target = status::Target {
                url,
                token_file,
                cacert,
            };
            let interval = std::time::Duration::from_secs(interval_sec.max(1));
            match status::run(&target, interval, once) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&format!("{err:#}")),
            }
        }
        Command::Bundle(BundleCommand::Push {
            file,
            name,
            url,
            token_file,
            cacert,
        }) => {
            let target = status::Target {
                url,
                token_file,
                cacert,
            };
            match bundle::push(&target, &file, &name) {
                Ok(revision) => {
                    println!("bundle {name} activated at revision {revision:?}");
                    ExitCode::SUCCESS
                }
                Err(err) => fail(&format!("{err:#}")),
            }
        }
        Command::Certs(CertsCommand::Init { dir, force }) => match certs::init(&dir, force) {
            Ok((cert, key)) => {
                println!("created {} and {}", cert.display(), key.display());
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err),
        },
        Command::Certs(CertsCommand::Issue { dir, node_id, days }) => {
            match certs::issue(&dir, &node_id, days) {
                Ok((cert, key)) => {
                    println!("issued {} and {}", cert.display(), key.display());
                    ExitCode::SUCCESS
                }
                Err(err) => fail(&err),
            }
        }
    }
}

fn audit_verify(data_dir: &std::path::Path) -> ExitCode {
    let path = data_dir.join(daemon::DATA_FILE);
    if !path.exists() {
        eprintln!("error: no data file at {}", path.display());
        return ExitCode::FAILURE;
    }
    // Read-only: verifying must not migrate or change the file. A file left by a crash needs
    // redb's recovery first, which only a writable open does: the same recovery the agent runs
    // when it starts, changing no committed data.
    let verified = match redb::ReadOnlyDatabase::open(&path) {
        Ok(db) => agent_store::audit_ring::verify(&db),
        Err(redb::DatabaseError::RepairAborted) => match redb::Database::open(&path) {
            Ok(db) => agent_store::audit_ring::verify(&db),
            Err(err) => return cannot_open(&path, &err),
        },
        Err(err) => return cannot_open(&path, &err),
    };
    match verified {
        Ok(verified) => match verified.broken {
            None => {
                println!(
                    "audit ring whole: {} entries, {} to {}",
                    verified.entries, verified.first, verified.last
                );
                ExitCode::SUCCESS
            }
            Some((seq, problem)) => {
                println!(
                    "audit ring broken at entry {seq}: {problem} ({} entries, {} to {})",
                    verified.entries, verified.first, verified.last
                );
                ExitCode::FAILURE
            }
        },
        Err(err) => fail(&err),
    }
}

fn cannot_open(path: &std::path::Path, err: &redb::DatabaseError) -> ExitCode {
    eprintln!(
        "error: cannot open {} (is the agent still running?): {err}",
        path.display()
    );
    ExitCode::FAILURE
}

/// The config as `run` sees it: the file, then the environment, then the flags. SIGHUP reads it
/// again the same way.
fn load_config(args: &RunArgs) -> Result<Config, agent_app::config::ConfigError> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    let args = args.clone();
    if let Some(node_id) = args.node_id {
        config.node_id = Some(node_id);
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = args.http_listen {
        config.http_listen = addr;
    }
    if let Some(dir) = args.policies {
        config.policies_dir = Some(dir);
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(dir) = args.tls_dir {
        config.mesh.tls_dir = Some(dir);
    }
    if let Some(addr) = args.gossip_listen {
        config.mesh.gossip_listen = addr;
    }
    if let Some(addr) = args.gossip_advertise {
        config.mesh.gossip_advertise = Some(addr);
    }
    if !args.seeds.is_empty() {
        config.mesh.seeds = args.seeds;
    }
    if let Some(id) = args.cluster_id {
        config.mesh.cluster_id = id;
    }
    if let Some(file) = args.sim_net_faults {
        config.mesh.sim_net_faults = Some(file);
    }
    if let Some(url) = args.mqtt_url {
        config.mqtt.url = Some(url);
    }
    config.validate()?;
    Ok(config)
}

fn run(args: RunArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(err) => return fail(&err),
    };
    let log_level = telemetry::init(config.log_format, &config.log_level);
    let reload = reload::Sources {
        load: Box::new(move || load_config(&args)),
        log_level,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return fail(&err),
    };
    let result = runtime.block_on(daemon::run(config, reload));
    // A blocking task still running (a store read, a compile) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = chain_text(&err);
            tracing::error!(error = %message, "mesh-agent failed");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn collector(args: CollectorArgs) -> ExitCode {
    telemetry::init(args.log_format, "info");
    let settings = agent_mqtt::collector::CollectorSettings {
        mqtt_url: args.mqtt_url,
        client_id: args.client_id,
        data_dir: args.data_dir,
        http_listen: args.http_listen,
        summaries_topic: args.summaries_topic,
        actions_topic: args.actions_topic,
        limits: agent_app::config::LimitsConfig {
            evaluate_per_second: args.rate_per_second,
            evaluate_burst: args.rate_burst,
        },
        auth: agent_app::config::AuthConfig {
            read_token_file: args.read_token_file,
            admin_token_file: None,
        },
    };
    if let Err(err) = settings.limits.validate() {
        return fail(&err);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return fail(&err),
    };
    match runtime.block_on(agent_mqtt::collector::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: PathBuf) -> ExitCode {
    match Config::load(Some(&file), std::env::vars()) {
        Ok(mut config) => {
            // The files the config names are read as the agent would read them.
            if let Err(err) = agent_http::Auth::new(&config.auth, Default::default()) {
                return fail(&err);
            }
            if let Some(files) = config.http.tls_files()
                && let Err(err) = agent_http::Tls::new(&files)
            {
                return fail(&err);
            }
            println!("{}: ok", file.display());
            println!("node_id (resolved) = {:?}", config.resolved_node_id());
            // The unit runs this before every start, into the journal: no secret goes there.
            if config.mqtt.password.is_some() {
                config.mqtt.password = Some("(set, not shown)".into());
            }
            match toml::to_string_pretty(&config) {
                Ok(text) => print!("{text}"),
                Err(err) => return fail(&err),
            }
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
    }
}

fn policy_test(dir: &std::path::Path, verbose: bool) -> ExitCode {
    let report = match policy_test::run(dir) {
        Ok(report) => report,
        Err(err) => return fail(&err),
    };
    for result in &report.results {
        let label = format!("{}: {}", result.file.display(), result.name);
        match &result.outcome {
            Ok(()) if verbose => println!("PASS: {label}"),
            Ok(()) => {}
            Err(why) => println!("FAIL: {label}\n  {}", why.replace('\n', "\n  ")),
        }
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    if report.failed() == 0 && !report.results.is_empty() {
        ExitCode::SUCCESS
    } else {
        if report.results.is_empty() {
            eprintln!("error: no test cases found under {}", dir.display());
        }
        ExitCode::FAILURE
    }
}

/// The error and its causes, as `{:#}` gives them, leaving out a cause whose text its error's own
/// message already ends with (a typed error that names its cause and also returns it as its
/// source would otherwise say it twice).
fn chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::chain_text;

    /// Names its cause in its message, and returns it as its source.
    #[derive(Debug)]
    struct Read(std::io::Error);

    impl std::fmt::Display for Read {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read x: {}", self.0)
        }
    }

    impl std::error::Error for Read {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_the_message_already_names_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::from(Read(io)).context("starting");
        assert_eq!(chain_text(&err), "starting: cannot read x: no such file");
    }
}
