//! `outpost.toml`: every key, its meaning and its default.
//!
//! Every struct here is `#[serde(default)]`: an empty file (or none at all) is a working
//! configuration (HTTPS on 127.0.0.1:8443 in front of the built-in page, admin on
//! 127.0.0.1:9901). A misspelt key is an error, not a silently ignored line: the core's own
//! tables deny unknown fields, and the tables it passes through unread (a route's handler
//! settings, an application's top-level section) are checked by their owner, or refused when
//! no registered handler owns the name.
//!
//! ```toml
//! listen = ["127.0.0.1:8443", "[::1]:8443"]
//! admin = "127.0.0.1:9901"
//!
//! [floor]
//! min_version = "1.2"
//! mode = "reject"
//! redirect_rate = "200/s"
//! redirect_per_source = "5/s"
//! help_url = "https://example.com/tls-help"
//! [floor.port_modes]
//! 8443 = "redirect"
//!
//! [[tls.certs]]
//! names = ["example.com", "*.example.com"]
//! cert = "/etc/outpost/example.pem"
//! key = "/etc/outpost/example.key"
//!
//! [[routes]]
//! host = "example.com"
//! path = "/"
//! [routes.origin]
//! servers = ["10.0.0.5:8080", "10.0.0.6:8080"]
//! health_check = { path = "/healthz", interval_ms = 2000 }
//! ```

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use outpost_common::{Mode, Version};
use serde::Deserialize;

use crate::{http::Limits, io::Backend};

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Addresses the TLS proxy listens on; IPv6 addresses in brackets (`"[::1]:8443"`). Every
    /// worker binds each of them with SO_REUSEPORT. Not changed by a reload. Default
    /// `["127.0.0.1:8443"]`.
    pub listen: Vec<SocketAddr>,
    /// The admin listener, plain HTTP: `/healthz` and Prometheus `/metrics`, and the endpoints
    /// of the binary and the applications, which need the admin token of the data directory
    /// (see [`crate::admin`]). Keep it on loopback or a management network. Not changed by a
    /// reload. Default `127.0.0.1:9901`.
    pub admin: SocketAddr,
    /// Where outpost keeps its state (the self-signed certificate, the admin token). Default:
    /// `$OUTPOST_DATA`, else `./outpost-data`.
    pub data_dir: Option<PathBuf>,
    /// Worker threads, each with its own runtime (and io_uring) and its own listening sockets;
    /// 0 means one per CPU. Default 0.
    pub workers: usize,
    /// I/O backend, `"uring"` (tokio-uring), `"epoll"` or `"compio"` (io_uring through compio,
    /// tried and measured slower, see benches/README.md); `outpost run --io` overrides it. If
    /// io_uring cannot start, outpost falls back to epoll with a warning. Default `"uring"`.
    pub io: Backend,
    /// How long SIGTERM/SIGINT wait for in-flight requests before exiting, in milliseconds.
    /// Default 10000.
    pub shutdown_grace_ms: u64,
    /// The userspace TLS version floor (the same policy the XDP program enforces in the
    /// kernel; this one also holds where XDP is not attached).
    pub floor: FloorConfig,
    /// Certificates.
    pub tls: TlsConfig,
    /// HTTP limits and timeouts for client connections.
    pub http: HttpConfig,
    /// This edge node's name, in logs, audit events and `/metrics`. Default: the hostname.
    pub node: Option<String>,
    /// Work after the response.
    pub after_response: AfterResponseConfig,
    /// Routes, matched by host and then by the longest path prefix. Default: one route, any
    /// host, path `/`, to the built-in page through the `origin` handler.
    pub routes: Vec<RouteConfig>,
    /// Top-level sections of applications and of the binary (`[store]`, `[access]`): kept
    /// unread here and handed to whoever registered each name; a name nobody registered is an
    /// error when the configuration is built.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            data_dir: None,
            workers: 0,
            io: Backend::Uring,
            shutdown_grace_ms: 10_000,
            floor: FloorConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            node: None,
            after_response: AfterResponseConfig::default(),
            routes: vec![RouteConfig::default()],
            sections: BTreeMap::new(),
        }
    }
}

/// `[floor]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloorConfig {
    /// Lowest TLS version let through: `"1.0"`, `"1.1"`, `"1.2"`, `"1.3"`. Default `"1.2"`.
    pub min_version: MinVersion,
    /// What happens to a hello below the floor: `"observe"` (count it and let rustls answer),
    /// `"drop"` (close without a word), `"reject"` (a TLS protocol_version alert, then close)
    /// or `"redirect"` (within the redirect budget, the legacy responder completes the old
    /// handshake and answers a 403 page saying why; over it, and for SSLv2/SSLv3, reject).
    /// In redirect mode the edge completes TLS 1.0/1.1 handshakes, so a scanner reports those
    /// versions as offered on that port: keep `reject` where a PCI scan looks. Default
    /// `"reject"`.
    pub mode: FloorMode,
    /// Listen ports whose mode is not `mode`, e.g. `{ 8443 = "redirect" }`. With XDP attached
    /// by `outpost run --iface`, the kernel gets the same. Default none.
    pub port_modes: BTreeMap<String, FloorMode>,
    /// Redirect budget of the whole edge: legacy hellos a second passed on to the legacy
    /// responder (`"200/s"`); over it they are rejected. `"0/s"`: none are. The XDP program
    /// applies it in the kernel; without XDP the userspace floor does. Default `"200/s"`.
    pub redirect_rate: Rate,
    /// The same per source network (IPv4 /24, IPv6 /48). Default `"5/s"`.
    pub redirect_per_source: Rate,
    /// A page the legacy responder's 403 links to, to tell people how to upgrade. Default none.
    pub help_url: Option<String>,
    /// How many bytes of a first flight are read while looking for a conclusive ClientHello;
    /// past this the connection goes on to rustls unclassified. Default 16384.
    pub max_hello_bytes: usize,
}

impl Default for FloorConfig {
    fn default() -> Self {
        FloorConfig {
            min_version: MinVersion(Version::Tls12),
            mode: FloorMode(Mode::Reject),
            port_modes: BTreeMap::new(),
            redirect_rate: Rate(outpost_common::version::DEFAULT_REDIRECT_RATE),
            redirect_per_source: Rate(outpost_common::version::DEFAULT_REDIRECT_PER_SOURCE),
            help_url: None,
            max_hello_bytes: 16 * 1024,
        }
    }
}

impl FloorConfig {
    pub fn policy(&self) -> outpost_common::Policy {
        let mut p = outpost_common::Policy::new(self.min_version.0, self.mode.0);
        p.redirect_rate = self.redirect_rate.0;
        p.redirect_per_source = self.redirect_per_source.0;
        p
    }

    /// `port_modes` by port number (checked by [`Config::parse`]).
    pub fn port_modes(&self) -> BTreeMap<u16, Mode> {
        self.port_modes.iter().filter_map(|(p, m)| Some((p.parse().ok()?, m.0))).collect()
    }
}

/// A budget in config form: `"200/s"` (a bare number means per second too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct Rate(pub u32);

impl Rate {
    /// Parses `"N/s"` or `"N"`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
        n.trim()
            .parse::<u32>()
            .map(Rate)
            .map_err(|_| format!("bad rate {s:?}: use a whole number per second, e.g. \"200/s\""))
    }
}

impl TryFrom<toml::Value> for Rate {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Rate::parse(&s),
            toml::Value::Integer(n) => {
                u32::try_from(n).map(Rate).map_err(|_| format!("bad rate {n}"))
            }
            other => Err(format!("bad rate {other}: use e.g. \"200/s\"")),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// A TLS version in config form (`"1.2"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MinVersion(pub Version);

impl TryFrom<String> for MinVersion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let v = s.to_ascii_lowercase();
        Ok(MinVersion(match v.trim_start_matches("tls").trim_start_matches('v') {
            "ssl3" | "sslv3" | "3.0" => Version::Sslv3,
            "1.0" | "1" => Version::Tls10,
            "1.1" => Version::Tls11,
            "1.2" => Version::Tls12,
            "1.3" => Version::Tls13,
            _ => return Err(format!("unknown TLS version {s:?}: use 1.0, 1.1, 1.2 or 1.3")),
        }))
    }
}

/// A floor mode in config form (`"reject"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FloorMode(pub Mode);

impl TryFrom<String> for FloorMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Mode::from_name(&s).map(FloorMode).ok_or_else(|| {
            format!("unknown floor mode {s:?}: use observe, drop, reject or redirect")
        })
    }
}

/// `[tls]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates chosen by SNI. The first one also serves clients whose SNI matches none
    /// (or who send none). Empty (the default): a self-signed certificate, generated into the
    /// data directory on first start and reused afterwards.
    pub certs: Vec<CertConfig>,
    /// Extra names (DNS names or IP addresses) for the self-signed certificate, besides
    /// `localhost` and `127.0.0.1`. Changing them regenerates it. Default none.
    pub self_signed_names: Vec<String>,
}

/// `[[tls.certs]]`: one certificate chain and its key, both PEM.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// SNI names this certificate serves: exact names or `*.suffix` wildcards. Required.
    pub names: Vec<String>,
    /// PEM file with the certificate chain, leaf first. Required.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: PathBuf,
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request head (request line and header fields); more is answered with 431.
    /// Default 16384.
    pub max_head_bytes: usize,
    /// Most header fields in a request; more is answered with 431. Default 100.
    pub max_headers: usize,
    /// Largest request body, after dechunking; more is answered with 413. Default 10 MiB.
    pub max_body_bytes: u64,
    /// Offer HTTP/2 to clients by ALPN (`h2` before `http/1.1`); each stream is one request
    /// through the same routes, filters and handlers. Origins stay HTTP/1.1. Default true.
    pub h2: bool,
    /// Most HTTP/2 streams a client may have open at once on one connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused with RST_STREAM(REFUSED_STREAM).
    /// Default 100.
    pub h2_max_concurrent_streams: u32,
    /// Time for the TLS handshake, including the ClientHello, in milliseconds. Default 10000.
    pub handshake_timeout_ms: u64,
    /// Time for a whole request head once its first byte arrived (and for the first request
    /// after the handshake); a slower client gets 408 and is closed. Default 10000.
    pub header_timeout_ms: u64,
    /// How long a keep-alive connection may wait for its next request. Default 60000.
    pub idle_timeout_ms: u64,
    /// Longest pause while reading a request body or writing a response (and, on an upgraded
    /// connection, for one write to either side). Default 30000.
    pub body_timeout_ms: u64,
    /// An upgraded connection (a WebSocket the origin accepted) with no byte moving either
    /// way for this long is closed. WebSocket pings count as traffic, so clients and origins
    /// that ping more often than this keep their connections. Default 300000 (5 minutes).
    pub upgraded_idle_timeout_ms: u64,
    /// Keep request header fields whose name contains `_`. Off by default, as in nginx: CGI,
    /// WSGI, PHP and Rack read `X_User` and `X-User` as one name, so such a field could pass
    /// for one the edge asserts. Dropped fields are counted
    /// (`outpost_request_fields_dropped_total`).
    pub underscores_in_headers: bool,
    /// Addresses of proxies in front of the edge whose `X-Forwarded-*` and `Forwarded` fields
    /// are kept (and appended to). From anyone else they are replaced. Default none: the edge
    /// faces clients.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = Limits::default();
        HttpConfig {
            max_head_bytes: limits.max_head_bytes,
            max_headers: limits.max_headers,
            max_body_bytes: limits.max_body_bytes,
            h2: true,
            h2_max_concurrent_streams: 100,
            handshake_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_timeout_ms: 30_000,
            upgraded_idle_timeout_ms: 300_000,
            underscores_in_headers: false,
            trusted_proxies: Vec::new(),
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.max_head_bytes,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// `[[routes]]`: a host pattern and path prefix, the handler that serves them, and that
/// handler's own settings (`[routes.<handler>]`), which the core passes through unread.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RouteConfig {
    /// Host this route serves (from the Host header, port and case ignored): an exact name,
    /// `*.suffix` (any subdomain), or `*` (any host). Default `*`.
    pub host: String,
    /// Path prefix, matched on whole segments (`/api` matches `/api` and `/api/x`, not
    /// `/apix`); the longest matching prefix wins. Default `/`.
    pub path: String,
    /// The handler serving the route, by the name the binary registered it under. Default
    /// `"origin"`.
    pub handler: String,
    /// The handler's settings: the table named after it (`[routes.origin]`). Any other key is
    /// an error.
    #[serde(flatten)]
    pub settings: BTreeMap<String, toml::Value>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            host: "*".into(),
            path: "/".into(),
            handler: "origin".into(),
            settings: BTreeMap::new(),
        }
    }
}

impl RouteConfig {
    /// The handler's settings table (empty when the route has none).
    pub fn handler_settings(&self) -> toml::Value {
        self.settings
            .get(&self.handler)
            .cloned()
            .unwrap_or_else(|| toml::Value::Table(toml::Table::new()))
    }
}

/// `[after_response]`: work handlers hand the core to run once their response is out (audit
/// events, mail).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AfterResponseConfig {
    /// Most such tasks pending per worker; past it new work is dropped, counted in
    /// `outpost_after_response_dropped_total` and logged, and the request is never held up.
    /// Default 4096.
    pub max_pending: usize,
}

impl Default for AfterResponseConfig {
    fn default() -> Self {
        AfterResponseConfig { max_pending: 4096 }
    }
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text)?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        if let Some((k, _)) = self.sections.iter().find(|(_, v)| !v.is_table()) {
            bail!("unknown key `{k}`");
        }
        if self.listen.is_empty() {
            bail!("`listen` is empty: give at least one address");
        }
        if self.routes.is_empty() {
            bail!("`routes` is empty: give at least one route");
        }
        for r in &self.routes {
            if !r.path.starts_with('/') {
                bail!("route path {:?} must start with /", r.path);
            }
            if let Some(k) = r.settings.keys().find(|k| **k != r.handler) {
                bail!(
                    "route {} {}: unknown key `{k}` (the handler is {:?}; its settings go in \
                     [routes.{}])",
                    r.host,
                    r.path,
                    r.handler,
                    r.handler
                );
            }
        }
        for port in self.floor.port_modes.keys() {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                bail!("[floor.port_modes]: {port:?} is not a port number");
            }
        }
        if let Some(url) = &self.floor.help_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                bail!("[floor] help_url {url:?} must be an http:// or https:// URL");
            }
        }
        for c in &self.tls.certs {
            if c.names.is_empty() {
                bail!("certificate {}: `names` is empty", c.cert.display());
            }
        }
        Ok(())
    }

    /// The data directory: the config's, else `$OUTPOST_DATA`, else `./outpost-data`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| std::env::var_os("OUTPOST_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("outpost-data"))
    }

    /// This node's name: the config's, else the hostname, else `outpost`.
    pub fn node_name(&self) -> String {
        if let Some(n) = self.node.as_ref().filter(|n| !n.is_empty()) {
            return n.clone();
        }
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let end = buf.iter().position(|b| *b == 0).unwrap_or(0);
        match std::str::from_utf8(&buf[..end]) {
            Ok(h) if rc == 0 && !h.is_empty() => h.to_owned(),
            _ => "outpost".into(),
        }
    }

    /// A top-level section by name, if the file has it.
    pub fn section(&self, name: &str) -> Option<&toml::Value> {
        self.sections.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].handler, "origin");
        assert_eq!(c.floor.policy(), outpost_common::Policy::DEFAULT);
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            r#"
            listen = ["127.0.0.1:1443", "[::1]:1443"]
            workers = 3
            io = "epoll"
            [floor]
            min_version = "1.3"
            mode = "observe"
            [http]
            header_timeout_ms = 500
            [[routes]]
            host = "*.example.com"
            path = "/api"
            [routes.origin]
            servers = ["127.0.0.1:9000", "localhost:9001"]
            health_check = { path = "/h", interval_ms = 100 }
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.io, Backend::Epoll);
        assert_eq!(c.floor.min_version.0, Version::Tls13);
        assert_eq!(c.floor.mode.0, Mode::Observe);
        assert_eq!(c.http.header_timeout_ms, 500);
        assert_eq!(c.http.idle_timeout_ms, 60_000);
        let origin = c.routes[0].handler_settings();
        assert_eq!(origin["health_check"]["path"].as_str(), Some("/h"));
    }

    #[test]
    fn redirect_keys() {
        let c = Config::parse(
            r#"
            [floor]
            mode = "reject"
            redirect_rate = "300/s"
            redirect_per_source = 2
            help_url = "https://help.example/tls"
            [floor.port_modes]
            8443 = "redirect"
            "#,
        )
        .unwrap();
        let p = c.floor.policy();
        assert_eq!((p.redirect_rate, p.redirect_per_source), (300, 2));
        assert_eq!(c.floor.port_modes(), BTreeMap::from([(8443, Mode::Redirect)]));
        assert_eq!(c.floor.help_url.as_deref(), Some("https://help.example/tls"));
        let d = Config::parse("").unwrap().floor.policy();
        assert_eq!((d.redirect_rate, d.redirect_per_source), (200, 5));
        assert_eq!(Rate::parse("0/s"), Ok(Rate(0)));
    }

    #[test]
    fn mistakes_are_errors() {
        for bad in [
            "listn = []",
            "[floor]\nmin_version = \"1.4\"",
            "[floor]\nmode = \"block\"",
            "[floor]\nredirect_rate = \"fast\"",
            "[floor]\nredirect_per_source = -1",
            "[floor.port_modes]\nhttps = \"redirect\"",
            "[floor.port_modes]\n8443 = \"bounce\"",
            "[floor]\nhelp_url = \"javascript:alert(1)\"",
            "[[routes]]\npath = \"api\"",
            "[[routes]]\n[routes.orign]\nservers = [\"127.0.0.1:1\"]",
            "[[routes]]\nhandler = \"access\"\n[routes.origin]\nservers = []",
        ] {
            assert!(Config::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
