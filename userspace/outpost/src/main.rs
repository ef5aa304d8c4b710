//! `outpost`: serve (the TLS proxy), attach the TLS version floor to a NIC, set its policy,
//! read its counters.

use std::{
    io::IsTerminal as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{bail, Result};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use dataplane::{AttachMode, Dataplane, LinkState, Mode, Policy, Version, PIN_DIR};
use outpost_common::maps::{PROG_FLOOR, PROG_PASS};
use userspace::UserStats;

mod audit;
mod check;
mod clients;
mod edge;
mod fleet;
mod fleet_stats;
mod operator;
mod userspace;

#[derive(Parser)]
#[command(name = "outpost", version, about = "Edge data plane: an XDP TLS version floor")]
struct Cli {
    /// bpffs directory where outpost pins its maps and links.
    #[arg(long, global = true, default_value = PIN_DIR, env = "OUTPOST_PIN_DIR")]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: the TLS proxy (HTTPS on 127.0.0.1:8443 and admin on 127.0.0.1:9901 by default),
    /// and with --iface the XDP floor in front of it. Logs go to stderr (RUST_LOG, default
    /// info). SIGTERM/SIGINT drain and exit; SIGHUP reloads the config file.
    Run {
        /// Config file (see the `outpost_proxy::config` docs for every key). Default:
        /// ./outpost.toml when it exists, else built-in defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// I/O backend; overrides the config's `io`. io_uring falls back to epoll with a
        /// warning when it cannot start.
        #[arg(long, value_enum)]
        io: Option<CliIo>,
        /// Leave BPF alone: no attach, and no kernel counters in /metrics.
        #[arg(long, conflicts_with = "iface")]
        no_xdp: bool,
        /// Attach the XDP floor (native mode) to this interface while serving, with the
        /// config's floor policy and the listen ports as protected ports.
        #[arg(long, value_name = "IF")]
        iface: Option<String>,
        /// Leave the XDP program attached on exit.
        #[arg(long, requires = "iface")]
        keep_attached: bool,
        /// Take over from the edge running with the same data_dir: serve from its listening
        /// sockets (and its XDP floor), then it drains and exits; no connection is refused.
        /// A running edge starts its successor this way itself on SIGUSR2.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config without serving: it parses, certificates and keys load and match,
    /// secret files are readable by this user and not by every user, the data directory is
    /// writable, the store is usable and the routes build. One line per problem on stderr and
    /// exit status 1; `ok` and 0 when `outpost run` would start with it. Run it as the service
    /// user.
    Check {
        /// Config file (default ./outpost.toml when it exists, else built-in defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With a PostgreSQL store: also connect once (at most 3 s) and run `SELECT 1`.
        #[arg(long)]
        connect: bool,
    },
    /// Load the XDP program, attach it to an interface and pin it; it stays attached after exit.
    Attach {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = CliAttachMode::Native)]
        mode: CliAttachMode,
        /// Which program: `floor` (the TLS version floor) or `pass` (passes everything; for the
        /// client end of a veth pair in test topologies, where XDP_TX frames are only delivered
        /// to an end that has an XDP program).
        #[arg(long, value_enum, default_value_t = Program::Floor)]
        program: Program,
    },
    /// Detach outpost from an interface (or from all with --all).
    Detach {
        #[arg(long, required_unless_present = "all")]
        iface: Option<String>,
        #[arg(long)]
        all: bool,
        /// Also remove the pinned maps: counters and policy start afresh.
        #[arg(long, requires = "all")]
        purge: bool,
    },
    /// Show or change the policy; takes effect at once, without detaching.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Access: the edge's signing keys, revocation of users and sessions. Goes through the
    /// running edge at --admin when one answers; otherwise straight to the store of --config.
    Access {
        #[command(subcommand)]
        cmd: outpost_access::cli::Command,
        /// Admin listener of the running edge.
        #[arg(
            long,
            global = true,
            value_name = "ADDR",
            default_value = "127.0.0.1:9901",
            env = "OUTPOST_ADMIN"
        )]
        admin: SocketAddr,
        /// Config file whose store to use, and whose data directory holds the admin token
        /// (default ./outpost.toml).
        #[arg(long, global = true, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin token to send, instead of `admin-token` in the data directory of --config.
        #[arg(long, global = true, value_name = "FILE", env = "OUTPOST_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Reservations: list, show, release, export, straight on the store of --config (with
    /// PostgreSQL, any node's config will do).
    Reservations {
        #[command(subcommand)]
        cmd: outpost_reserve::cli::Command,
        /// Config file whose store to use (default ./outpost.toml).
        #[arg(long, global = true, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The audit log: who used what, when, and how it ended, from every node sharing the store.
    /// Asks the running edge at --admin; with none answering, reads the store of --config.
    Audit {
        /// Events of the last DURATION only (e.g. 30m, 1h, 2d).
        #[arg(long, value_name = "DURATION", value_parser = edge::parse_age)]
        since: Option<Duration>,
        /// Events of this user only (email).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Events of this kind only (e.g. access.login).
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// At most this many, the newest.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Admin listener of the running edge.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", env = "OUTPOST_ADMIN")]
        admin: SocketAddr,
        /// Config file whose store to read when no edge answers, and whose data directory holds
        /// the admin token (default ./outpost.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin token to send, instead of `admin-token` in the data directory of --config.
        #[arg(long, value_name = "FILE", env = "OUTPOST_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// The nodes sharing this store: `outpost fleet status`.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Hellos by offered version × verdict and parse outcomes from the XDP program, beside the
    /// userspace floor's counters of a running `outpost run` (read from its admin listener).
    Stats {
        /// One JSON object instead of tables: the kernel's `versions` and `parse`, and
        /// `userspace` (null when no `outpost run` answers at --admin).
        #[arg(long)]
        json: bool,
        /// Print again every SECS seconds, with the growth over the interval.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// Admin listener of the `outpost run` whose counters to show (not used with --fleet).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", env = "OUTPOST_ADMIN")]
        admin: SocketAddr,
        /// The whole fleet: every live node of the registry (the store of --config), read
        /// through its admin listener, kernel counters included, and summed. The kernel's
        /// parse outcomes are not summed (they are not in /metrics).
        #[arg(long)]
        fleet: bool,
        /// With --fleet: a column per node beside the fleet's sum (rows zero everywhere left
        /// out).
        #[arg(long, requires = "fleet")]
        by_node: bool,
        /// With --fleet: the config whose store the fleet shares (default ./outpost.toml).
        #[arg(long, value_name = "FILE", requires = "fleet")]
        config: Option<PathBuf>,
    },
    /// Who connects: hellos by client fingerprint (JA4), server name (SNI), first ALPN, offered
    /// version and verdict, most first, from the running edge's table (see [clients] in the
    /// config). With --watch and no edge answering, reads the XDP program's records itself.
    Clients {
        /// Only hellos offering this version (1.0, 1.1, 1.2, 1.3, ssl3, ssl2).
        #[arg(long, value_parser = clients::parse_version)]
        version: Option<Version>,
        /// Only hellos given this verdict (pass, drop, reject, redirect).
        #[arg(long, value_parser = clients::parse_verdict)]
        verdict: Option<outpost_common::Verdict>,
        /// Only hellos naming this server (`*.example.com`: names under it; `-`: no name).
        #[arg(long, value_name = "HOST")]
        sni: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// JSON instead of a table (rows, the `other` row, totals).
        #[arg(long)]
        json: bool,
        /// Print again every SECS seconds. With no edge answering at --admin, read the XDP
        /// program's records here (recording turned on while it runs).
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// With --watch and no edge: record one hello in this many.
        #[arg(long, default_value_t = 1, requires = "watch")]
        sample: u32,
        /// Admin listener of the running edge.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", env = "OUTPOST_ADMIN")]
        admin: SocketAddr,
        /// Config file whose data directory holds the admin token (default ./outpost.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin token to send, instead of `admin-token` in the data directory of --config.
        #[arg(long, value_name = "FILE", env = "OUTPOST_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Write the man pages (outpost.1, outpost-run.1, ...) into DIR (for packaging).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateCompletions { dir: PathBuf },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Change the floor, the mode, the redirect budget or the protected ports; what is not
    /// given stays.
    Set {
        /// Lowest version let through: 1.0, 1.1, 1.2, 1.3 (or ssl3).
        #[arg(long, value_parser = parse_version)]
        min_version: Option<Version>,
        /// What hellos below the floor get. `redirect`: within the redirect budget, the legacy
        /// responder of `outpost run` completes the old handshake and answers a 403 page saying
        /// why (so scanners see TLS 1.0/1.1 as offered on such ports); over it, reject.
        #[arg(long, value_enum)]
        mode: Option<CliMode>,
        /// Redirect budget of the whole data plane, e.g. `200/s`.
        #[arg(long, value_name = "N/s", value_parser = parse_rate)]
        redirect_rate: Option<u32>,
        /// Redirect budget per source network (IPv4 /24, IPv6 /48), e.g. `5/s`.
        #[arg(long, value_name = "N/s", value_parser = parse_rate)]
        redirect_per_source: Option<u32>,
        /// Protected TCP ports, comma separated.
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        ports: Option<Vec<u16>>,
        /// A mode for one port instead of --mode, e.g. `8443=redirect` (comma separated;
        /// `8443=default` goes back to --mode).
        #[arg(long, value_name = "PORT=MODE", value_delimiter = ',', value_parser = parse_port_mode)]
        port_mode: Vec<(u16, Option<Mode>)>,
        /// Set the fleet's policy instead: a new generation in the store of --config, which
        /// every node sharing that store applies within a second (see `outpost fleet status`).
        /// What is not given stays as the fleet's policy has it, or, for the first, as this
        /// config's [floor] has it.
        #[arg(long)]
        fleet: bool,
        /// With --fleet: the config whose store the fleet shares (default ./outpost.toml).
        #[arg(long, value_name = "FILE", requires = "fleet")]
        config: Option<PathBuf>,
    },
    /// Show the policy: the pinned maps', or with --fleet the fleet's (its generation, who set
    /// it and when, and which nodes applied it).
    Show {
        #[arg(long)]
        json: bool,
        /// The fleet's policy, from the store of --config.
        #[arg(long)]
        fleet: bool,
        /// With --fleet: the config whose store the fleet shares (default ./outpost.toml).
        #[arg(long, value_name = "FILE", requires = "fleet")]
        config: Option<PathBuf>,
    },
    /// What a floor would refuse, before it is set: from the running edge's table of clients,
    /// the share of hellos below it, and which clients (JA4, name) and server names those are.
    Simulate {
        /// The floor to try: 1.0, 1.1, 1.2, 1.3 (or ssl3).
        #[arg(long, value_parser = parse_version)]
        min_version: Version,
        #[arg(long)]
        json: bool,
        /// Admin listener of the running edge.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", env = "OUTPOST_ADMIN")]
        admin: SocketAddr,
        /// Config file whose data directory holds the admin token (default ./outpost.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin token to send, instead of `admin-token` in the data directory of --config.
        #[arg(long, value_name = "FILE", env = "OUTPOST_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Clear the fleet's policy (a new generation without one): every node goes back to its
    /// own [floor].
    Clear {
        /// Required: only the fleet's policy can be cleared.
        #[arg(long, required = true)]
        fleet: bool,
        /// The config whose store the fleet shares (default ./outpost.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FleetAction {
    /// Every node in the store's registry: state (live; missing after three heartbeats
    /// without a word; stopped cleanly), version, addresses, XDP interfaces, the policy
    /// generation it applied and any policy it could not apply.
    Status {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Config file whose store the fleet shares (default ./outpost.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CliIo {
    Uring,
    Epoll,
    Compio,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliAttachMode {
    Native,
    Skb,
}

#[derive(Clone, Copy, ValueEnum)]
enum Program {
    Floor,
    Pass,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliMode {
    Observe,
    Drop,
    Reject,
    Redirect,
}

impl CliMode {
    fn mode(self) -> Mode {
        match self {
            CliMode::Observe => Mode::Observe,
            CliMode::Drop => Mode::Drop,
            CliMode::Reject => Mode::Reject,
            CliMode::Redirect => Mode::Redirect,
        }
    }
}

fn parse_rate(s: &str) -> Result<u32, String> {
    outpost_proxy::config::Rate::parse(s).map(|r| r.0)
}

fn parse_port_mode(s: &str) -> Result<(u16, Option<Mode>), String> {
    let (port, mode) = s.split_once('=').ok_or_else(|| format!("{s:?}: use PORT=MODE"))?;
    let port: u16 = port.trim().parse().map_err(|_| format!("{port:?} is not a port"))?;
    let mode = match mode.trim() {
        "default" => None,
        m => Some(Mode::from_name(m).ok_or_else(|| {
            format!("unknown mode {m:?}: use observe, drop, reject, redirect or default")
        })?),
    };
    Ok((port, mode))
}

fn parse_version(s: &str) -> Result<Version, String> {
    Ok(match s.to_ascii_lowercase().trim_start_matches("tls").trim_start_matches('v') {
        "ssl3" | "sslv3" | "3.0" => Version::Sslv3,
        "1.0" | "1" => Version::Tls10,
        "1.1" => Version::Tls11,
        "1.2" => Version::Tls12,
        "1.3" => Version::Tls13,
        _ => return Err(format!("unknown version {s:?}: use 1.0, 1.1, 1.2, 1.3 or ssl3")),
    })
}

/// The CLI's definition, for the man pages and completions: without the hidden generators.
fn cli_command() -> clap::Command {
    Cli::command()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // What outpost writes (the store with its signing keys, certificates, keys, the audit file)
    // is readable by the outpost user only.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    if matches!(cli.command, Command::Run { .. }) {
        // The proxy logs through tracing; `log` records (the loader's) are bridged into it.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init();
    } else {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let pin_dir = cli.pin_dir;
    match cli.command {
        Command::Run { config, io, no_xdp, iface, keep_attached, upgrade } => {
            serve(&pin_dir, config, io, no_xdp, iface, keep_attached, upgrade)?;
        }
        Command::Access { cmd, admin, config, admin_token_file } => {
            let cred = operator::Credential::find(admin_token_file.as_deref(), config.as_deref())?;
            let through_edge = outpost_access::cli::try_admin(&cmd, admin, cred.token())
                .map_err(|e| cred.explain(e))?;
            if !through_edge {
                let (_, cfg) = outpost_proxy::load_config(config.as_deref())?;
                let store = edge::open_tool_store(&cfg)?;
                let tool =
                    outpost_access::cli::Tool::from_config(cfg.node_name(), cfg.section("access"));
                let result = outpost_access::cli::run(cmd, &store, &tool);
                store.shutdown();
                result?;
            }
        }
        Command::Reservations { cmd, config } => {
            let (_, cfg) = outpost_proxy::load_config(config.as_deref())?;
            let store = edge::open_tool_store(&cfg)?;
            let result = outpost_reserve::cli::run(cmd, &store);
            store.shutdown();
            result?;
        }
        Command::Audit { since, user, kind, limit, json, admin, config, admin_token_file } => {
            let params = edge::AuditParams { since, user, kind, limit: Some(limit) };
            let cred = operator::Credential::find(admin_token_file.as_deref(), config.as_deref())?;
            audit::show(&params, admin, config.as_deref(), json, cred.token())
                .map_err(|e| cred.explain(e))?;
        }
        Command::Check { config, connect } => {
            let problems = check::check(config.as_deref(), connect);
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                bail!("{} problem(s) in the config", problems.len());
            }
            println!("ok");
        }
        Command::GenerateMan { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cli_command(), &dir)?;
        }
        Command::GenerateCompletions { dir } => {
            std::fs::create_dir_all(&dir)?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cli_command(), "outpost", &dir)?;
            }
        }
        Command::Attach { iface, mode, program } => {
            // Before loading: a typo must not leave maps pinned behind.
            dataplane::interface_index(&iface)?;
            let mut dp = Dataplane::load(&pin_dir)?;
            let mode = match mode {
                CliAttachMode::Native => AttachMode::Native,
                CliAttachMode::Skb => AttachMode::Skb,
            };
            let name = match program {
                Program::Floor => PROG_FLOOR,
                Program::Pass => PROG_PASS,
            };
            let attached = dp.attach(name, &iface, mode)?;
            if attached.replaced_stale {
                println!(
                    "replaced a stale link for {iface}: its interface had gone (deleted, or its \
                     namespace removed) and nothing was attached"
                );
            }
            let maps = dp.maps()?;
            println!(
                "attached {name} to {iface}; {}; maps pinned under {}",
                describe(&maps)?,
                pin_dir.display()
            );
        }
        Command::Detach { iface, all, purge } => {
            let ifaces = match iface {
                Some(i) if !all => vec![i],
                _ => dataplane::attached_interfaces(&pin_dir)?,
            };
            for i in &ifaces {
                dataplane::detach(&pin_dir, i)?;
                println!("detached from {i}");
            }
            if purge {
                dataplane::purge(&pin_dir)?;
                println!("removed {}", pin_dir.display());
            }
        }
        Command::Policy {
            action:
                PolicyAction::Set {
                    min_version,
                    mode,
                    redirect_rate,
                    redirect_per_source,
                    ports,
                    port_mode,
                    fleet,
                    config,
                },
        } => {
            if min_version.is_none()
                && mode.is_none()
                && redirect_rate.is_none()
                && redirect_per_source.is_none()
                && ports.is_none()
                && port_mode.is_empty()
            {
                bail!(
                    "nothing to set: give --min-version, --mode, --redirect-rate, \
                     --redirect-per-source, --ports or --port-mode"
                );
            }
            if fleet {
                let change = fleet::FloorChange {
                    min_version,
                    mode: mode.map(CliMode::mode),
                    redirect_rate,
                    redirect_per_source,
                    ports,
                    port_mode,
                };
                return fleet::set_policy(config.as_deref(), Some(change));
            }
            let mut maps = dataplane::PinnedMaps::open(&pin_dir)?;
            let mut policy = maps.policy()?;
            if policy.configured == 0 {
                policy = Policy::DEFAULT;
            }
            if let Some(v) = min_version {
                policy.min_version = v as u8;
            }
            if let Some(m) = mode {
                policy.mode = m.mode() as u8;
            }
            if let Some(r) = redirect_rate {
                policy.redirect_rate = r;
            }
            if let Some(r) = redirect_per_source {
                policy.redirect_per_source = r;
            }
            maps.set_policy(policy)?;
            if let Some(ports) = ports {
                maps.set_ports(&ports)?;
            }
            if !port_mode.is_empty() {
                let mut modes = maps.port_modes()?;
                for (port, mode) in port_mode {
                    match mode {
                        Some(m) => modes.insert(port, m),
                        None => modes.remove(&port),
                    };
                }
                maps.set_port_modes(&modes)?;
            }
            println!("{}", describe(&maps)?);
        }
        Command::Policy {
            action: PolicyAction::Simulate { min_version, json, admin, config, admin_token_file },
        } => {
            let cred = operator::Credential::find(admin_token_file.as_deref(), config.as_deref())?;
            clients::simulate_floor(min_version, json, admin, cred.token())
                .map_err(|e| cred.explain(e))?;
        }
        Command::Clients {
            version,
            verdict,
            sni,
            top,
            json,
            watch,
            sample,
            admin,
            config,
            admin_token_file,
        } => {
            let cred = operator::Credential::find(admin_token_file.as_deref(), config.as_deref())?;
            let args = clients::ShowArgs { version, verdict, sni, top, json, watch, sample };
            clients::show(&args, admin, cred.token(), &pin_dir).map_err(|e| cred.explain(e))?;
        }
        Command::Policy { action: PolicyAction::Clear { config, .. } } => {
            fleet::set_policy(config.as_deref(), None)?;
        }
        Command::Policy { action: PolicyAction::Show { json, fleet: true, config } } => {
            fleet::show_policy(config.as_deref(), json)?;
        }
        Command::Fleet { action: FleetAction::Status { json, config } } => {
            fleet::status(config.as_deref(), json)?;
        }
        Command::Policy { action: PolicyAction::Show { json, .. } } => {
            let maps = dataplane::PinnedMaps::open(&pin_dir)?;
            let (policy, ports) = (maps.policy()?, maps.ports()?);
            let attached = dataplane::live_interfaces(&pin_dir)?;
            if json {
                let port_modes: serde_json::Map<String, serde_json::Value> = maps
                    .port_modes()?
                    .into_iter()
                    .map(|(p, m)| (p.to_string(), m.name().into()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "min_version": version_name(policy.min_version),
                        "mode": mode_name(policy.mode),
                        "redirect_rate": policy.redirect_rate,
                        "redirect_per_source": policy.redirect_per_source,
                        "ports": ports,
                        "port_modes": port_modes,
                        "attached": attached,
                    })
                );
            } else {
                println!("{}", describe(&maps)?);
                println!("attached: {attached:?}");
            }
            if let Some(w) = attachment_warning(&pin_dir) {
                eprintln!("warning: {w}");
            }
        }
        Command::Stats { json, watch, fleet: true, by_node, config, .. } => {
            fleet_stats::run(config.as_deref(), json, by_node, watch)?;
        }
        Command::Stats { json, watch, admin, .. } => {
            let snapshot = || -> Result<Snapshot> {
                let kernel = dataplane::PinnedMaps::open(&pin_dir).and_then(|m| m.stats());
                let user = UserStats::fetch(admin);
                match (kernel, user) {
                    (Err(e), Err(_)) => Err(e),
                    (kernel, user) => Ok(Snapshot { kernel, user: user.ok(), warning: None }),
                }
            };
            let mut last = snapshot()?;
            // Counters that cannot grow: the program is attached nowhere.
            let warning = last.kernel.is_ok().then(|| attachment_warning(&pin_dir)).flatten();
            if let Some(w) = &warning {
                eprintln!("warning: {w}");
            }
            last.warning = warning;
            show_watching(last, watch, json, snapshot, Snapshot::since, |s| s.show(json, admin))?;
        }
    }
    Ok(())
}

/// Shows `first`; with `--watch SECS`, then every SECS seconds the growth since the reading
/// before (`since`), until interrupted or a reading fails.
fn show_watching<T>(
    first: T,
    watch: Option<u64>,
    json: bool,
    mut read: impl FnMut() -> Result<T>,
    since: impl Fn(&T, &T) -> T,
    show: impl Fn(&T),
) -> Result<()> {
    show(&first);
    let Some(secs) = watch else { return Ok(()) };
    let secs = secs.max(1);
    let mut last = first;
    loop {
        thread::sleep(Duration::from_secs(secs));
        let now = read()?;
        if !json {
            println!("--- last {secs}s ---");
        }
        show(&since(&now, &last));
        last = now;
    }
}

/// What `outpost stats` shows: the kernel's counters, or why there are none, and the
/// userspace floor's when an `outpost run` answers.
struct Snapshot {
    kernel: Result<dataplane::Stats>,
    user: Option<UserStats>,
    /// Why the kernel's counters may be standing still (`--json` carries it as `warning`).
    warning: Option<String>,
}

impl Snapshot {
    fn since(&self, earlier: &Snapshot) -> Snapshot {
        let kernel = match (&self.kernel, &earlier.kernel) {
            (Ok(now), Ok(then)) => Ok(now.since(then)),
            (Ok(now), Err(_)) => Ok(now.clone()),
            (Err(e), _) => Err(anyhow::anyhow!("{e:#}")),
        };
        let user = match (&self.user, &earlier.user) {
            (Some(now), Some(then)) => Some(now.since(then)),
            (now, _) => now.clone(),
        };
        Snapshot { kernel, user, warning: self.warning.clone() }
    }

    fn show(&self, json: bool, admin: SocketAddr) {
        if json {
            let mut out = match &self.kernel {
                Ok(k) => k.to_json(),
                Err(e) => {
                    serde_json::json!({ "versions": null, "parse": null, "kernel_error": format!("{e:#}") })
                }
            };
            out["userspace"] =
                self.user.as_ref().map_or(serde_json::Value::Null, UserStats::to_json);
            if let Some(w) = &self.warning {
                out["warning"] = w.as_str().into();
            }
            println!("{out}");
            return;
        }
        match &self.kernel {
            Ok(k) => println!("kernel (XDP)\n{k}"),
            Err(e) => println!("kernel (XDP): no counters: {e:#}\n"),
        }
        match &self.user {
            Some(u) => println!("userspace (outpost run, admin {admin})\n{u}"),
            None => println!("userspace: no outpost run answers at {admin}"),
        }
    }
}

fn version_name(v: u8) -> &'static str {
    Version::from_u8(v).map_or("invalid", Version::name)
}

fn mode_name(m: u8) -> &'static str {
    Mode::from_u8(m).map_or("invalid", Mode::name)
}

/// The pinned policy, ports and port modes, in one line.
fn describe(maps: &dataplane::PinnedMaps) -> Result<String> {
    Ok(describe_policy(&maps.policy()?, &maps.ports()?, &maps.port_modes()?))
}

fn describe_policy(
    policy: &Policy,
    ports: &[u16],
    port_modes: &std::collections::BTreeMap<u16, Mode>,
) -> String {
    let mut s = format!(
        "policy: min-version {}, mode {}, redirect budget {}/s ({}/s per source network), \
         ports {:?}",
        version_name(policy.min_version),
        mode_name(policy.mode),
        policy.redirect_rate,
        policy.redirect_per_source,
        ports
    );
    for (port, mode) in port_modes {
        s += &format!(", port {port} {}", mode.name());
    }
    s
}

/// Why the program's counters cannot grow, if they cannot: maps are pinned but no pinned link
/// is live (its interface was removed or its namespace deleted, or none was ever attached).
fn attachment_warning(pin_dir: &Path) -> Option<String> {
    let links = dataplane::links(pin_dir).ok()?;
    if links.iter().any(|(_, s)| matches!(s, LinkState::Live { .. })) {
        return None;
    }
    let stale: Vec<&str> = links.iter().map(|(i, _)| i.as_str()).collect();
    Some(if stale.is_empty() {
        format!(
            "the XDP program is attached to no interface (no link pinned under {}): its \
             counters do not grow; `outpost attach --iface IF` attaches it",
            pin_dir.display()
        )
    } else {
        format!(
            "the XDP program is attached to nothing: the interface of the pinned link for {} is \
             gone (removed, or its namespace deleted), so its counters do not grow; `outpost \
             attach --iface IF` attaches it again and replaces the stale pin",
            stale.join(", ")
        )
    })
}

/// `outpost run`.
fn serve(
    pin_dir: &Path,
    config: Option<PathBuf>,
    io: Option<CliIo>,
    no_xdp: bool,
    iface: Option<String>,
    keep_attached: bool,
    upgrade: bool,
) -> Result<()> {
    // Taken before anything else: after a package upgrade the path names the new binary.
    let successor = successor_command();
    let mut attached_here = None;
    if let Some(iface) = &iface {
        if upgrade && dataplane::live_interfaces(pin_dir)?.contains(iface) {
            // The old process leaves it attached when it hands over; it is ours now.
            tracing::info!(iface, "upgrade: taking over the attached XDP floor");
            attached_here = Some(iface.clone());
        } else if dataplane::live_interfaces(pin_dir)?.contains(iface) {
            tracing::info!(iface, "the XDP floor is already attached; leaving it as it is on exit");
        } else {
            let mut dp = Dataplane::load(pin_dir)?;
            if dp.attach(PROG_FLOOR, iface, AttachMode::Native)?.replaced_stale {
                tracing::warn!(iface, "replaced a stale pinned link whose interface had gone");
            }
            tracing::info!(iface, pins = %pin_dir.display(), "XDP floor attached");
            attached_here = Some(iface.clone());
        }
    }
    let kernel: Option<Arc<dyn outpost_proxy::admin::KernelStats>> =
        (!no_xdp).then(|| Arc::new(KernelCounters::new(pin_dir)) as _);
    // The config's floor, or the fleet's while one is set; with the XDP floor attached by this
    // process, the kernel's too.
    let floor = fleet::FloorState::new(attached_here.as_ref().map(|_| pin_dir.to_owned()));
    let on_config: outpost_proxy::run::OnConfig = {
        let floor = floor.clone();
        Box::new(move |c: &outpost_proxy::config::Config| floor.on_config(c))
    };
    // The store first: a database that cannot be reached is a clear error before anything
    // listens.
    let (_, cfg) = outpost_proxy::load_config(config.as_deref())?;
    let store = edge::open_store(&cfg, upgrade)?;
    tracing::info!(store = %store.describe(), "store open");
    let audit_config: edge::AuditConfig = edge::section(&cfg, "audit")?;
    store.set_audit_retention(audit_config.retention());
    let sink = Arc::new(edge::StoreAudit::new(store.clone(), &audit_config)?);
    let audit = outpost_api::Audit::new(cfg.node_name(), Some(sink.clone() as _));
    let store_metrics: outpost_proxy::metrics::MetricsSource = {
        let store = store.clone();
        Arc::new(move |o: &mut String| store.metrics().render(o))
    };
    let (registry, mut metrics) = edge::registry(&store);
    metrics.extend([store_metrics, sink.metrics()]);
    let handed_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The fleet's policy is applied before anything is accepted.
    let interfaces = match no_xdp {
        true => Vec::new(),
        false => dataplane::live_interfaces(pin_dir).unwrap_or_default(),
    };
    let node = fleet::Node::new(
        store.clone(),
        edge::section(&cfg, "fleet")?,
        &cfg,
        interfaces,
        floor.clone(),
        handed_over.clone(),
    );
    let fleet = node.start()?;
    metrics.push(node.metrics());
    // Who connects: from the XDP program's records while it runs, else from the userspace
    // floor's hellos.
    let clients_config: clients::ClientsConfig = edge::section(&cfg, "clients")?;
    let clients = clients_config.enabled.then(|| clients::Clients::new(&clients_config));
    let mut admin = edge::admin(&store);
    if let Some(c) = &clients {
        metrics.push(c.metrics());
        admin.extend(c.admin());
    }
    let reader = match (&clients, no_xdp) {
        (Some(c), false) => Some(clients::KernelReader::start(pin_dir, c.clone())),
        _ => None,
    };
    edge::node_event(&audit, "node.start", None);
    let result = outpost_proxy::run(outpost_proxy::RunOptions {
        config,
        io: io.map(|i| match i {
            CliIo::Uring => outpost_proxy::io::Backend::Uring,
            CliIo::Epoll => outpost_proxy::io::Backend::Epoll,
            CliIo::Compio => outpost_proxy::io::Backend::Compio,
        }),
        kernel,
        on_config: Some(on_config),
        floor: floor.userspace(),
        hellos: clients.clone().map(|c| c as _),
        registry,
        admin,
        metrics,
        audit: Some(sink.clone()),
        upgrade,
        successor,
        on_handover: Some(Box::new({
            let handed = handed_over.clone();
            // The new process reads the kernel's records from now on: one reader at a time.
            let reading = reader.as_ref().map(clients::KernelReader::running);
            move || {
                handed.store(true, std::sync::atomic::Ordering::SeqCst);
                if let Some(r) = &reading {
                    r.store(false, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })),
    });
    fleet.stop();
    if let Some(r) = reader {
        r.stop(handed_over.load(std::sync::atomic::Ordering::SeqCst));
    }
    edge::node_event(&audit, "node.stop", result.as_ref().err().map(|e| format!("{e:#}")));
    sink.close();
    store.shutdown();
    if let Some(iface) = attached_here {
        if handed_over.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::info!(iface, "leaving the XDP floor attached for the new process");
        } else if keep_attached {
            tracing::info!(iface, "leaving the XDP floor attached (--keep-attached)");
        } else {
            match dataplane::detach(pin_dir, &iface) {
                Ok(()) => tracing::info!(iface, "XDP floor detached"),
                Err(e) => tracing::error!(iface, error = format!("{e:#}"), "detaching failed"),
            }
        }
    }
    result
}

/// How SIGUSR2 starts this binary again: the path it was started from (which, after a
/// package upgrade, holds the new binary) with the same arguments and `--upgrade`.
fn successor_command() -> Option<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().ok()?;
    let mut argv = vec![exe.into_os_string()];
    argv.extend(std::env::args_os().skip(1));
    if !argv.iter().any(|a| a == "--upgrade") {
        argv.push("--upgrade".into());
    }
    Some(argv)
}

/// The XDP program's per-version counters for /metrics, through its pinned maps (opened on
/// first use, reopened after a failure: the program may be attached after outpost started).
struct KernelCounters {
    pin_dir: PathBuf,
    maps: Mutex<Option<dataplane::PinnedMaps>>,
}

impl KernelCounters {
    fn new(pin_dir: &Path) -> KernelCounters {
        KernelCounters { pin_dir: pin_dir.to_owned(), maps: Mutex::new(None) }
    }
}

impl outpost_proxy::admin::KernelStats for KernelCounters {
    fn hellos(&self) -> Option<outpost_proxy::metrics::VersionCounts> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if maps.is_none() {
            *maps = dataplane::PinnedMaps::open(&self.pin_dir).ok();
        }
        match maps.as_ref()?.stats() {
            Ok(s) => Some(s.versions),
            Err(_) => {
                *maps = None;
                None
            }
        }
    }

    fn take_redirect(&self, client: SocketAddr, server: SocketAddr) -> bool {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if maps.is_none() {
            *maps = dataplane::PinnedMaps::open(&self.pin_dir).ok();
        }
        let key = outpost_common::maps::FlowKey::of_connection(client, server);
        maps.as_mut().is_some_and(|m| m.take_redirect(&key))
    }
}
