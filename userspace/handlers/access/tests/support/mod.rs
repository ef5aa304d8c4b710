//! What the access tests start: a real OpenID provider (node-oidc-provider on Node.js, over
//! HTTPS with a CA of the test's own), the real `outpost` binary with `[access]`, echo origins,
//! and a cookie-jar HTTPS client that follows the flow hop by hop. Everything is started by the
//! test and stopped by PID on drop.

#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub use outpost_testkit::{free_port, Origin, Outpost, TempDir};
use outpost_testkit::{html_unescape as unescape, stalled, START_STALL, START_TRIES};
use reqwest::{blocking::Client, cookie::Jar, header::HeaderMap, redirect::Policy};

/// The hosts of the tests, all served by the edge on loopback.
pub const AUTH: &str = "auth.example.test";
pub const WIKI: &str = "wiki.example.test";
pub const DASH: &str = "dash.example.test";
pub const CLIENT_ID: &str = "outpost-edge";
pub const CLIENT_SECRET: &str = "edge-client-secret-7f3a";

/// The directory of the provider script and its node_modules.
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// Panics with the setup command unless node and the npm packages are installed.
pub fn require_node() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is not installed: these tests run a real OpenID provider on Node.js \
         (apt-get install nodejs npm)"
    );
    for pkg in ["oidc-provider", "playwright-core"] {
        assert!(
            idp_dir().join("node_modules").join(pkg).join("package.json").is_file(),
            "the npm package {pkg} is missing: run `npm ci --prefix {}`",
            idp_dir().display()
        );
    }
}

/// A CA and a certificate for 127.0.0.1 it signed, as PEM files in `dir`: (ca, cert, key).
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    tls_files_for(dir, "127.0.0.1")
}

/// A CA and a certificate for `host` (and localhost) it signed, as PEM files in `dir`.
pub fn tls_files_for(dir: &Path, host: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "outpost access test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.pem"), dir.join("idp.pem"), dir.join("idp.key"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

/// node-oidc-provider, started by the test, killed on drop.
pub struct Idp {
    child: Option<Child>,
    /// The address it listens on, and its namespace (`None`: this one).
    host: String,
    ns: Option<String>,
    pub port: u16,
    pub dir: TempDir,
    pub ca: PathBuf,
    cfg: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Idp {
    /// A provider on loopback with one client whose redirect URIs are the given ones.
    pub fn start(redirect_uris: &[String]) -> Idp {
        let mut idp = Idp::configured("127.0.0.1", redirect_uris);
        idp.spawn();
        idp
    }

    /// A provider for `host`, its files written but not started: its issuer, CA and secret
    /// can go into an edge's config before the namespace it will run in exists
    /// ([`Idp::spawn_in`]).
    pub fn configured(host: &str, redirect_uris: &[String]) -> Idp {
        require_node();
        let dir = TempDir::new("idp");
        let (ca, cert, key) = tls_files_for(&dir.0, host);
        let port = free_port();
        let cfg = dir.0.join("provider.json");
        let config = serde_json::json!({
            "host": host,
            "port": port,
            "cert": cert,
            "key": key,
            "issuer": format!("https://{host}:{port}"),
            "kid": "idp-key-1",
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": redirect_uris,
            }],
        });
        std::fs::write(&cfg, config.to_string()).unwrap();
        Idp {
            child: None,
            host: host.to_owned(),
            ns: None,
            port,
            dir,
            ca,
            cfg,
            log: Arc::new(Mutex::new(String::new())),
        }
    }

    /// Starts a [`Idp::configured`] provider in network namespace `ns`.
    pub fn spawn_in(&mut self, ns: &str) {
        self.ns = Some(ns.to_owned());
        self.spawn();
    }

    /// Starts the provider and waits until it listens; a start that stalls is made again
    /// ([`START_STALL`]).
    fn spawn(&mut self) {
        for attempt in 1..=START_TRIES {
            if self.spawn_once() {
                return;
            }
            let pid = self.child.as_ref().map_or(0, |c| c.id());
            let stalled = stalled("the OpenID provider", attempt, pid);
            eprintln!("{stalled}");
            self.log.lock().unwrap().push_str(&format!("{stalled}\n"));
            self.stop();
        }
        panic!(
            "the OpenID provider did not start: {START_TRIES} starts stalled; its output:\n{}",
            self.log()
        );
    }

    /// Starts the provider once: whether it listens within [`START_STALL`]. Panics if it exits.
    fn spawn_once(&mut self) -> bool {
        // In a namespace through nsenter, which execs: the pid is still node's own.
        let mut command = match &self.ns {
            None => Command::new("node"),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).args(["--", "node"]);
                c
            }
        };
        let mut child = command
            .arg(idp_dir().join("provider.mjs"))
            .arg(&self.cfg)
            .current_dir(idp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting node");
        let (tx, rx) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (tx, log) = (tx.clone(), self.log.clone());
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.starts_with("READY") {
                        let _ = tx.send(());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.child = Some(child);
        // Node loads a few hundred modules and makes an RSA key before it listens. A provider
        // that exits is reported at once.
        let deadline = Instant::now() + START_STALL;
        loop {
            if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return true;
            }
            if let Some(s) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the OpenID provider exited ({s}); its output:\n{}", self.log());
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    pub fn issuer(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Down: the process is killed (connections refused).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port with a new signing key (`kid`): a key rotation at the
    /// provider. Its sessions are gone too (memory adapter).
    pub fn restart_with_key(&mut self, kid: &str) {
        self.stop();
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.cfg).unwrap()).unwrap();
        cfg["kid"] = kid.into();
        std::fs::write(&self.cfg, cfg.to_string()).unwrap();
        self.spawn();
    }

    /// Sets faults (`token_delay_ms=6000`, `token_error=server_error`, `clear=1`).
    pub fn fault(&self, query: &str) {
        let c = Client::builder().danger_accept_invalid_certs(true).build().unwrap();
        let r = c.get(format!("{}/_test/fault?{query}", self.issuer())).send().unwrap();
        assert_eq!(r.status(), 200, "setting fault {query}");
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("--- OpenID provider log ---\n{}", self.log());
        }
    }
}

/// `[access]` (and routes to `origin` for the wiki and the dashboard) for an edge on `port`.
pub fn edge_config(port: u16, idp: &Idp, origin: &Origin, extra_access: &str) -> String {
    edge_config_to(port, idp, &origin.addr(), extra_access)
}

/// The same, with the wiki and the dashboard proxied to the origin at `origin`.
pub fn edge_config_to(port: u16, idp: &Idp, origin: &str, extra_access: &str) -> String {
    let secret = idp.dir.0.join("client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let provider = format!(
        "name = \"testidp\"\ndisplay_name = \"Test IdP\"\nissuer = \"{}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\nca_file = \"{}\"\n",
        idp.issuer(),
        secret.display(),
        idp.ca.display(),
    );
    access_config(port, origin, &provider, extra_access)
}

/// The routes and `[access]` of the tests for an edge on `port`: the wiki and the dashboard
/// proxied to `origin`, `extra_access` in `[access]`, and one identity provider (`provider`:
/// the keys of its `[[access.providers]]` table).
pub fn access_config(port: u16, origin: &str, provider: &str, extra_access: &str) -> String {
    format!(
        r#"
[[routes]]
host = "{WIKI}"
path = "/"
handler = "origin"
[routes.origin]
servers = ["{origin}"]
health_check = {{ interval_ms = 0 }}

[[routes]]
host = "{DASH}"
path = "/"
handler = "origin"
[routes.origin]
servers = ["{origin}"]
health_check = {{ interval_ms = 0 }}

[access]
auth_host = "{AUTH}"
https_port = {port}
{extra_access}

[[access.providers]]
{provider}
[[access.apps]]
name = "wiki"
host = "{WIKI}"
allow_domains = ["example.test"]
bypass = ["/healthz"]

[[access.apps]]
name = "dashboard"
host = "{DASH}"
allow_emails = ["alice@example.test"]
"#
    )
}

/// The callback URL the provider must accept for an edge on `port`.
pub fn callback(port: u16) -> String {
    match port {
        443 => format!("https://{AUTH}/callback"),
        port => format!("https://{AUTH}:{port}/callback"),
    }
}

/// A provider and an edge in front of an echo origin.
pub struct Setup {
    pub idp: Idp,
    pub origin: Origin,
    pub edge: Outpost,
    pub port: u16,
}

impl Setup {
    /// On the embedded store.
    pub fn start(extra_access: &str) -> Setup {
        Setup::start_with(extra_access, None)
    }

    /// On the PostgreSQL at `store_url` (the test can then read and write what the edge
    /// keeps, its keys included).
    pub fn start_with(extra_access: &str, store_url: Option<&str>) -> Setup {
        let port = free_port();
        let idp = Idp::start(&[callback(port)]);
        let origin = Origin::start("app");
        let mut config = edge_config(port, &idp, &origin, extra_access);
        if let Some(url) = store_url {
            config = format!("[store]\nurl = \"{url}\"\n{config}");
        }
        let edge = Outpost::start_at(port, "uring", &config, &[], &["--no-xdp"]);
        Setup { idp, origin, edge, port }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    pub fn browser(&self) -> Browser {
        Browser::new(self.port)
    }

    /// Audit events of `kind` (newest last), waiting up to 5 s for at least `min` of them:
    /// they are written after the response.
    pub fn audit(&self, kind: &str, min: usize) -> Vec<serde_json::Value> {
        audit_at(&self.edge, kind, min)
    }

    /// See [`wait_event`].
    pub fn expect_event(&self, kind: &str, outcome: &str, reason: &str) -> Vec<serde_json::Value> {
        wait_event(&self.edge, kind, outcome, reason)
    }
}

pub fn audit_at(edge: &Outpost, kind: &str, min: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) =
            edge.admin_get(&format!("/audit?kind={kind}&limit=1000")).expect("admin /audit");
        assert_eq!(status, 200, "{body}");
        let events: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        if events.len() >= min || Instant::now() > deadline {
            return events;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to 5 s for an event of `kind` with `outcome` and a reason containing `reason`
/// (events are written after the response); returns all events of `kind`.
pub fn wait_event(
    edge: &Outpost,
    kind: &str,
    outcome: &str,
    reason: &str,
) -> Vec<serde_json::Value> {
    wait_event_from(|| audit_at(edge, kind, 0), kind, outcome, reason)
}

/// [`wait_event`] on the events `fetch` reads (of `kind`), wherever the admin listener is.
pub fn wait_event_from(
    fetch: impl Fn() -> Vec<serde_json::Value>,
    kind: &str,
    outcome: &str,
    reason: &str,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = fetch();
        if has_event(&events, outcome, reason) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event {outcome} with reason {reason:?}; the events:\n{events:#?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether some event has `outcome` and a reason containing `reason`.
pub fn has_event(events: &[serde_json::Value], outcome: &str, reason: &str) -> bool {
    events.iter().any(|e| {
        e["outcome"] == outcome && e["reason"].as_str().is_some_and(|r| r.contains(reason))
    })
}

/// One response, read whole.
#[derive(Clone, Debug)]
pub struct Resp {
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn location(&self) -> Option<String> {
        self.headers.get("location").map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("").to_owned())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }

    /// The echo origin's line for request header `name`, if it got one.
    pub fn echoed(&self, name: &str) -> Option<String> {
        let prefix = format!("header {}:", name.to_ascii_lowercase());
        self.body.lines().find_map(|l| {
            l.to_ascii_lowercase().starts_with(&prefix).then(|| l[prefix.len()..].trim().to_owned())
        })
    }
}

/// A browser without JavaScript: a cookie jar, names of the test hosts resolved to the edge,
/// redirects followed one hop at a time (so each can be checked).
pub struct Browser {
    pub client: Client,
    pub jar: Arc<Jar>,
    /// Every response seen, in order.
    pub seen: Mutex<Vec<Resp>>,
}

impl Browser {
    pub fn new(edge_port: u16) -> Browser {
        Browser::with_ports(&[edge_port])
    }

    /// Several edges: the hosts resolve to the first port; URLs carry their own port anyway.
    pub fn with_ports(ports: &[u16]) -> Browser {
        Browser::at([127, 0, 0, 1], ports[0], Arc::new(Jar::default()))
    }

    /// The test hosts resolved to `ip` (the port comes from the URLs), with cookie jar `jar`:
    /// two of these sharing a jar are one browser whose requests reach different edge nodes.
    pub fn at(ip: [u8; 4], port: u16, jar: Arc<Jar>) -> Browser {
        let mut b = Client::builder()
            .cookie_provider(jar.clone())
            .redirect(Policy::none())
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(20));
        for h in [AUTH, WIKI, DASH] {
            b = b.resolve(h, SocketAddr::from((ip, port)));
        }
        Browser { client: b.build().unwrap(), jar, seen: Mutex::new(Vec::new()) }
    }

    pub fn read(&self, r: reqwest::blocking::Response) -> Resp {
        let resp = Resp {
            url: r.url().to_string(),
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: String::new(),
        };
        let body = r.text().unwrap_or_default();
        let resp = Resp { body, ..resp };
        self.seen.lock().unwrap().push(resp.clone());
        resp
    }

    /// A navigation: GET accepting HTML.
    pub fn nav(&self, url: &str) -> Resp {
        let r = self
            .client
            .get(url)
            .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        self.read(r)
    }

    /// A request that is not a navigation (an API call).
    pub fn api(&self, url: &str) -> Resp {
        let r = self.client.get(url).header("Accept", "application/json").send().unwrap();
        self.read(r)
    }

    pub fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        let mut rb = self.client.get(url).header("Accept", "text/html");
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.read(rb.send().unwrap())
    }

    pub fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Resp {
        let r = self.client.post(url).header("Accept", "text/html").form(form).send().unwrap();
        self.read(r)
    }

    /// Follows redirects from `r` (GET each Location, relative to the current URL) until a
    /// response that is not one; returns every hop including `r`.
    pub fn follow(&self, r: Resp) -> Vec<Resp> {
        let mut hops = vec![r];
        for _ in 0..20 {
            let last = hops.last().unwrap();
            if !(300..400).contains(&last.status) {
                return hops;
            }
            let loc = last
                .location()
                .unwrap_or_else(|| panic!("{} {} without Location", last.status, last.url));
            let next = reqwest::Url::parse(&last.url).unwrap().join(&loc).unwrap();
            hops.push(self.nav(next.as_str()));
        }
        panic!("redirect loop: {:?}", hops.iter().map(|h| &h.url).collect::<Vec<_>>());
    }

    /// Starts a login on the edge's login page at `login_url` (already there): submits the
    /// form of the first provider; returns the 302 to the provider.
    pub fn choose_provider(&self, login_page: &Resp) -> Resp {
        assert_eq!(login_page.status, 200, "login page: {}", login_page.body);
        let fields = form_fields(&login_page.body);
        let form: Vec<(&str, &str)> =
            fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let action = reqwest::Url::parse(&login_page.url).unwrap().join("/login").unwrap();
        self.post_form(action.as_str(), &form)
    }

    /// Follows `to_idp` (the 302 to the provider) and signs in there as `user` when the
    /// provider asks (it does not when it still has a session); returns the response that
    /// sends the browser back to the edge's /callback (not followed).
    pub fn sign_in_at_idp(&self, to_idp: Resp, user: &str) -> Resp {
        let mut r = to_idp;
        let mut submitted = false;
        for _ in 0..20 {
            if (300..400).contains(&r.status) {
                let loc = r.location().unwrap();
                let next = reqwest::Url::parse(&r.url).unwrap().join(&loc).unwrap();
                if next.path() == "/callback" {
                    return r;
                }
                r = self.nav(next.as_str());
                continue;
            }
            assert!(!submitted && r.status == 200, "provider: {} {}: {}", r.status, r.url, r.body);
            let action = form_action(&r.body)
                .unwrap_or_else(|| panic!("no form at the provider: {}", r.body));
            let action = reqwest::Url::parse(&r.url).unwrap().join(&action).unwrap();
            r = self.post_form(
                action.as_str(),
                &[("prompt", "login"), ("login", user), ("password", "x")],
            );
            submitted = true;
        }
        panic!("the provider did not send the browser back");
    }

    /// The whole flow from a protected URL as `user`; returns every hop, ending at the page.
    pub fn login(&self, app_url: &str, user: &str) -> Vec<Resp> {
        let first = self.nav(app_url);
        assert_eq!(first.status, 302, "{app_url} without a token: {}", first.body);
        let to_login = self.follow(first);
        let login_page = to_login.last().unwrap().clone();
        let to_idp = self.choose_provider(&login_page);
        assert_eq!(to_idp.status, 302, "POST /login: {}", to_idp.body);
        let back = self.sign_in_at_idp(to_idp, user);
        let mut hops = to_login;
        hops.extend(self.follow(back));
        hops
    }

    /// The value of cookie `name` the jar would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        use reqwest::cookie::CookieStore as _;
        let v = self.jar.cookies(&reqwest::Url::parse(url).unwrap())?;
        v.to_str()
            .unwrap()
            .split("; ")
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    /// Puts cookie `name=value` in the jar for `url`'s host (a manual Cookie header would be
    /// replaced by the jar's).
    pub fn set_cookie(&self, url: &str, name: &str, value: &str) {
        self.jar.add_cookie_str(
            &format!("{name}={value}; Secure; HttpOnly; Path=/"),
            &reqwest::Url::parse(url).unwrap(),
        );
    }

    /// Every cookie the jar would send to `url`, as (name, value).
    pub fn jar_cookies(&self, url: &str) -> Vec<(String, String)> {
        use reqwest::cookie::CookieStore as _;
        let Some(v) = self.jar.cookies(&reqwest::Url::parse(url).unwrap()) else {
            return Vec::new();
        };
        v.to_str()
            .unwrap()
            .split("; ")
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }

    /// Every Set-Cookie seen so far.
    pub fn all_set_cookies(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.set_cookies().into_iter().map(|c| (r.url.clone(), c)))
            .collect()
    }
}

/// Hidden and submit fields of the first form in `html` (name, value).
pub fn form_fields(html: &str) -> Vec<(String, String)> {
    let form = &html[html.find("<form").expect("a form")..];
    let form = &form[..form.find("</form>").unwrap()];
    let mut out = Vec::new();
    for input in form.split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap()];
        if let (Some(n), v) = (attr(tag, "name"), attr(tag, "value")) {
            out.push((n, v.unwrap_or_default()));
        }
    }
    out
}

pub fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    attr(&form[..form.find('>')?], "action")
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + end]))
}

/// Checks the flags every Set-Cookie of the flow must carry.
pub fn assert_cookie_flags(url: &str, c: &str) {
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            c.split(';').any(|p| p.trim().eq_ignore_ascii_case(flag)),
            "{flag} missing on {url}: {c}"
        );
    }
    assert!(!c.to_ascii_lowercase().contains("domain="), "a Domain (not host-only) on {url}: {c}");
    assert!(c.starts_with("__Host-"), "no __Host- prefix on {url}: {c}");
}

/// A store client of the test's own on the PostgreSQL at `url`.
pub fn store(url: &str) -> (outpost_store::Store, TempDir) {
    let dir = TempDir::new("store-client");
    let cfg = outpost_store::StoreConfig { url: Some(url.to_owned()), ..Default::default() };
    (outpost_store::Store::open(&cfg, &dir.0).expect("opening the test's store client"), dir)
}

/// Runs `f` to completion on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The claims of `token`, unverified.
pub fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
    )
    .unwrap()
}

/// `token` as the app token of browser `b` (whose jar holds nothing for `url`): a navigation
/// and an API call to `url`.
pub fn present_token(b: &Browser, url: &str, token: &str) -> (Resp, Resp) {
    let cookie = format!("__Host-outpost-token={token}");
    let nav = b.get_with(url, &[("Cookie", &cookie)]);
    let api = b
        .client
        .get(url)
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (nav, b.read(api))
}

/// Whether `(nav, api)` is the refusal of a request without a valid token: a 302 to the
/// login page for the navigation, a 401 for the API call.
pub fn refused(nav: &Resp, api: &Resp) -> bool {
    nav.status == 302
        && nav.location().is_some_and(|l| l.contains("/login?app="))
        && api.status == 401
}

/// Presents `token` at `url` through `b` until it is refused; panics if that takes longer
/// than `limit`. How long it took.
pub fn wait_refused(b: &Browser, url: &str, token: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (nav, api) = present_token(b, url, token);
        if refused(&nav, &api) {
            return started.elapsed();
        }
        // Let through, or (between the two requests) just revoked.
        assert!(
            [200, 302].contains(&nav.status) && [200, 401].contains(&api.status),
            "neither let through nor refused: {} {}\n{}",
            nav.status,
            api.status,
            nav.body
        );
        assert!(
            started.elapsed() < limit,
            "{url}: the revoked token still reaches the origin after {limit:?}:\n{}",
            nav.body
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `outpost ARGS` (the CLI binary); panics with its output unless it succeeds. Its stdout.
pub fn outpost_cli(args: &[&str]) -> String {
    let out = Command::new(outpost_testkit::outpost_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the outpost binary");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "outpost {args:?}: {}\n{stdout}\n{stderr}", out.status);
    stdout.into_owned()
}
