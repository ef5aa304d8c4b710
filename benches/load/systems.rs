//! The systems under test, started as children: the origin, nginx (Debian's, configured here)
//! and outpost (`outpost run`), all with the same certificate, the same origin and the same
//! number of workers.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cpus::Pin,
    procs::{self, Child, Stderr},
};

/// Worker processes/threads of every proxy that is not pinned (see [`Pin::workers`]): one per
/// core of this 2-core machine.
pub const PROXY_WORKERS: usize = 2;
/// Names in the certificate; the generator sends `edge.test` as SNI and Host.
pub const CERT_NAMES: &[&str] = &["edge.test", "localhost", "127.0.0.1", "198.18.2.2"];
const START_LIMIT: Duration = Duration::from_secs(20);

/// Where a child runs: the host's network namespace, or one made by [`crate::netns`].
#[derive(Clone, Debug)]
pub enum Place {
    Host,
    Netns(String),
}

impl Place {
    /// `argv` prefixed to run in this place. `nsenter --net` switches only the network
    /// namespace (keeping /sys/fs/bpf) and execs without forking, so the child's PID is the
    /// program's.
    pub fn argv(&self, argv: &[String]) -> Vec<String> {
        match self {
            Place::Host => argv.to_vec(),
            Place::Netns(ns) => {
                let mut full =
                    vec!["nsenter".to_owned(), format!("--net=/run/netns/{ns}"), "--".into()];
                full.extend_from_slice(argv);
                full
            }
        }
    }
}

/// One self-signed certificate (ECDSA P-256), given to every TLS system.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Cert {
    pub fn generate(dir: &Path) -> Result<Cert> {
        let names: Vec<String> = CERT_NAMES.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).context("generating the certificate")?;
        let (cert, key) = (dir.join("edge.pem"), dir.join("edge.key"));
        fs::write(&cert, ck.cert.pem())?;
        fs::write(&key, ck.signing_key.serialize_pem())?;
        Ok(Cert { cert, key })
    }
}

/// A running system: its main process (nginx's master, outpost, the origin) and its address.
pub struct Running {
    pub name: String,
    pub child: Child,
    /// Port it serves on (TLS for the proxies, plain HTTP for the origin).
    pub port: u16,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// CPU seconds of the process and its descendants (nginx's workers) so far.
    pub fn cpu_seconds(&self) -> f64 {
        procs::tree_cpu_seconds(self.pid())
    }

    /// [`cpu_seconds`](Self::cpu_seconds) to the nanosecond (see
    /// [`procs::tree_cpu_seconds_fine`]).
    pub fn cpu_seconds_fine(&self) -> f64 {
        procs::tree_cpu_seconds_fine(self.pid())
    }

    pub fn memory(&self) -> procs::Memory {
        procs::tree_memory(self.pid())
    }

    /// Fails with its stderr if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.exited() {
            bail!("{} exited ({status}):\n{}", self.name, self.child.stderr_tail(20));
        }
        Ok(())
    }
}

/// Starts the origin on `listen` (e.g. `127.0.0.1:0`), a thread per CPU of `pin`; returns once
/// it listens.
pub fn start_origin(
    exe: &Path,
    place: &Place,
    pin: &Pin,
    listen: &str,
    scratch: &Path,
) -> Result<Running> {
    let argv = place.argv(&pin.wrap(&[
        exe.display().to_string(),
        "origin".into(),
        "--listen".into(),
        listen.into(),
        "--threads".into(),
        pin.workers().to_string(),
    ]));
    let mut child = Child::spawn("origin", &argv, scratch, Stderr::File)?;
    let line = child.wait_for_line("listening", START_LIMIT)?;
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("origin printed {line:?}"))?;
    Ok(Running { name: "origin".into(), child, port })
}

/// Debian's nginx binary, installed with apt-get when missing.
pub fn nginx_binary() -> Result<PathBuf> {
    let bin = PathBuf::from("/usr/sbin/nginx");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("outpost-load: nginx is missing; installing Debian's package");
    // A package install must not start a system nginx: policy-rc.d refuses service starts where
    // it exists, and RUNLEVEL=1 makes invoke-rc.d skip them elsewhere.
    procs::run(&["apt-get", "update", "-q"], Duration::from_secs(300))?;
    procs::run(
        &[
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "RUNLEVEL=1",
            "apt-get",
            "install",
            "-y",
            "-q",
            "-o",
            "DPkg::Lock::Timeout=600",
            "nginx",
        ],
        Duration::from_secs(900),
    )?;
    if !bin.is_file() {
        bail!("apt-get install nginx left no {}", bin.display());
    }
    Ok(bin)
}

/// Timeouts shared by nginx and outpost so that neither keeps a silent connection longer.
#[derive(Clone, Copy, Debug)]
pub struct EdgeConf {
    /// For the TLS handshake (the hello included).
    pub handshake: Duration,
    /// Between requests on a keep-alive connection.
    pub idle: Duration,
    /// Idle connections to the origin each edge worker keeps (nginx `keepalive`, outpost
    /// `pool_size`).
    pub origin_pool: usize,
}

/// Starts nginx as the TLS edge on `listen` in front of `origin` (both `ip:port`), a worker
/// process per CPU of `pin`; with `http2`, it offers h2 in ALPN too.
#[allow(clippy::too_many_arguments)]
pub fn start_nginx(
    place: &Place,
    pin: &Pin,
    listen: &str,
    origin: &str,
    cert: &Cert,
    timeouts: EdgeConf,
    scratch: &Path,
    http2: bool,
) -> Result<Running> {
    let bin = nginx_binary()?;
    let dir = scratch.join(format!("nginx-{}", listen.replace([':', '.', '[', ']'], "_")));
    fs::create_dir_all(&dir)?;
    for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let d = dir.display();
    let mut conf = String::new();
    // worker_connections is per worker and counts upstream connections too; the file limit is
    // inherited from the bench (raised as far as allowed).
    let _ = write!(
        conf,
        r#"worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    # Preallocated per worker (~450 bytes each): sized to the file limit this machine allows
    # (20,000), not more, so that the idle RSS is not inflated by unused slots.
    worker_connections 20000;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    keepalive_timeout {idle}s;
    # In nginx 1.22 this also bounds the TLS handshake.
    client_header_timeout {handshake}s;
    upstream origin {{
        server {origin};
        keepalive {pool};
        keepalive_requests 100000;
        keepalive_timeout 600s;
    }}
    server {{
        # `listen ... http2`: Debian's nginx is 1.22, older than the `http2 on;` directive
        # (1.25.1).
        listen {listen} ssl{h2};
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        # The edge's suites in the edge's order, its rule for clients that put ChaCha20 first
        # included, so that both do the same handshake and record work for the same client.
        ssl_prefer_server_ciphers on;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
        ssl_conf_command Options PrioritizeChaCha;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }}
        # The websocket scenario: the upgrade goes to the origin (a WebSocket echo), then nginx
        # relays bytes both ways.
        location /ws {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"#,
        workers = pin.workers(),
        h2 = if http2 { " http2" } else { "" },
        idle = timeouts.idle.as_secs().max(1),
        pool = timeouts.origin_pool,
        handshake = timeouts.handshake.as_secs().max(1),
        cert = cert.cert.display(),
        key = cert.key.display(),
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let argv = place.argv(&pin.wrap(&[
        bin.display().to_string(),
        "-p".into(),
        dir.display().to_string(),
        "-e".into(),
        dir.join("error.log").display().to_string(),
        "-c".into(),
        conf_path.display().to_string(),
        "-g".into(),
        "daemon off;".into(),
    ]));
    let mut child = Child::spawn("nginx", &argv, scratch, Stderr::File)?;
    let port = port_of(listen)?;
    procs::wait_listening(port, START_LIMIT, &mut child).map_err(|e| {
        let log = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        e.context(format!("nginx error.log:\n{}", log.trim()))
    })?;
    Ok(Running { name: "nginx".into(), child, port })
}

fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {addr}"))
}

/// I/O backend of `outpost run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    Uring,
    Epoll,
    Compio,
}

impl Io {
    pub fn name(self) -> &'static str {
        match self {
            Io::Uring => "uring",
            Io::Epoll => "epoll",
            Io::Compio => "compio",
        }
    }
}

/// Whether `outpost run` exists in this build: `Err` says why not, in one line.
pub fn outpost_available(bin: Option<&Path>) -> Result<()> {
    let Some(bin) = bin else {
        bail!("no outpost binary (build it with `cargo build --release -p outpost`, or set OUTPOST_BIN)");
    };
    let bin = bin.display().to_string();
    match procs::run(&[&bin, "run", "--help"], Duration::from_secs(10)) {
        Ok(help) if help.contains("--config") => Ok(()),
        Ok(_) => bail!("`outpost run --help` does not mention --config"),
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().find(|l| l.contains("error")).unwrap_or(msg.as_str()).trim();
            bail!("`outpost run` does not work in this build: {first}")
        }
    }
}

/// Starts `outpost run` as the TLS edge on `listen` in front of `origin`, a worker per CPU of
/// `pin`.
#[allow(clippy::too_many_arguments)]
pub fn start_outpost(
    bin: &Path,
    io: Io,
    place: &Place,
    pin: &Pin,
    listen: &str,
    admin: &str,
    origin: &str,
    cert: &Cert,
    timeouts: EdgeConf,
    scratch: &Path,
    xdp_pins: Option<&Path>,
) -> Result<Running> {
    let name = format!("outpost-{}", io.name());
    let dir = scratch.join(format!("{name}-{}", listen.replace([':', '.', '[', ']'], "_")));
    fs::create_dir_all(&dir)?;
    let conf = format!(
        r#"listen = ["{listen}"]
admin = "{admin}"
data_dir = "{data}"
workers = {workers}
io = "{io}"

[floor]
min_version = "1.2"
mode = "reject"

[[tls.certs]]
names = ["edge.test", "localhost"]
cert = "{cert}"
key = "{key}"

[http]
handshake_timeout_ms = {handshake}
idle_timeout_ms = {idle}

[[routes]]
host = "*"
path = "/"
[routes.origin]
servers = ["{origin}"]
pool_size = {pool}
pool_idle_ms = 600000
health_check = {{ path = "/", interval_ms = 0 }}
"#,
        data = dir.join("data").display(),
        workers = pin.workers(),
        io = io.name(),
        cert = cert.cert.display(),
        key = cert.key.display(),
        handshake = timeouts.handshake.as_millis(),
        idle = timeouts.idle.as_millis(),
        pool = timeouts.origin_pool,
    );
    let conf_path = dir.join("outpost.toml");
    fs::write(&conf_path, conf)?;
    // `env` execs too: the PID stays outpost's. Per-connection logging would cost disk writes.
    let mut args: Vec<String> =
        vec!["env".into(), "RUST_LOG=warn".into(), bin.display().to_string()];
    // XDP, where a scenario wants it, is attached by the scenario with a pin directory of its
    // own. Given its pins, the proxy reads them (the legacy hellos the kernel passed on to the
    // legacy responder in redirect mode); without, it leaves BPF alone.
    if let Some(pins) = xdp_pins {
        args.extend(["--pin-dir".into(), pins.display().to_string()]);
    }
    args.extend(["run".into(), "--config".into(), conf_path.display().to_string()]);
    args.extend(["--io".into(), io.name().into()]);
    if xdp_pins.is_none() {
        args.push("--no-xdp".into());
    }
    let argv = place.argv(&pin.wrap(&args));
    let mut child = Child::spawn(&name, &argv, scratch, Stderr::File)?;
    let port = port_of(listen)?;
    procs::wait_listening(port, START_LIMIT, &mut child)?;
    Ok(Running { name, child, port })
}
