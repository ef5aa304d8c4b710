//! The edge applications on [`crate::edge`]'s topology, for the demo: Access (the login at the
//! edge) in front of origin a on `app.demo.test`, the reservation page on `reserve.demo.test`,
//! the peers they need, and walks through both with curl from the client namespace.
//!
//! ```text
//!  client ns                         edge ns
//!  curl (ip netns exec)              outpost run :443   [access]  [reserve]
//!  /etc/netns/<ns>/hosts:            OpenID provider    198.18.10.2:9443  (node-oidc-provider)
//!    *.demo.test -> 198.18.10.2      mail sink          127.0.0.1:2525    (aiosmtpd, a Maildir)
//! ```
//!
//! Both peers run in the edge namespace. The provider listens on the edge's client-facing
//! address, where the browser (sent there by redirects) and outpost (exchanging the code,
//! reading the keys) both reach it with no routing between the namespaces; its port is not one
//! the floor protects. On a real host it is a third party elsewhere. The mail sink listens on
//! the edge's loopback, since only outpost speaks SMTP; the mail is read from its Maildir, as
//! the recipient's mail client would.
//!
//! `ip netns exec` puts `/etc/netns/<ns>/hosts` over /etc/hosts, so commands in the client
//! namespace (the walks here and the commands the demo prints, run the same way) use the
//! demo's names as a browser would. The provider's issuer is an address: outpost runs through
//! `nsenter`, which keeps the host's /etc/hosts.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use outpost_testkit::{html_unescape as unescape, stalled, START_STALL, START_TRIES};
use serde_json::{json, Value};

use crate::{
    edge::{Edge, EDGE_V4},
    netns::{run, Daemon, Output, COMMAND_LIMIT, PYTHON},
};

/// Access's auth host: `/login`, `/callback`.
pub const AUTH_HOST: &str = "auth.demo.test";
/// The protected app, proxied to origin a.
pub const APP_HOST: &str = "app.demo.test";
pub const RESERVE_HOST: &str = "reserve.demo.test";
/// Reserved names are `<name>.<ZONE>`.
pub const ZONE: &str = "sites.demo.test";
/// Who logs in and reserves. The provider takes any login (no password check); one with an `@`
/// is a verified email, and the app lets in `@demo.test`.
pub const USER: &str = "alice@demo.test";
/// The name the walk reserves.
pub const NAME: &str = "alice";
/// The provider's port, on the edge's client-facing address.
pub const IDP_PORT: u16 = 9443;
/// The mail sink's port, on the edge namespace's loopback.
pub const SMTP_PORT: u16 = 2525;
/// The provider's name in `[[access.providers]]` (in URLs and audit events).
pub const PROVIDER: &str = "demo-idp";
const CLIENT_ID: &str = "outpost-demo";
/// Config, certificates, the Maildir and the cookie jar, in the temp directory.
pub(crate) const TEMP_DIR_PREFIX: &str = "outpost-apps-";
/// /etc/netns: files `ip netns exec NS` puts over /etc.
pub(crate) const ETC_NETNS: &str = "/etc/netns";

/// How long the mail sink may take to listen (the provider: `START_STALL`, each try).
const START_LIMIT: Duration = Duration::from_secs(90);
/// How long the confirmation mail may take: the outbox sends at once.
const MAIL_LIMIT: Duration = Duration::from_secs(10);
/// Longest one curl may take (its own `--max-time` is 10 s).
const CURL_LIMIT: Duration = Duration::from_secs(13);

static APPS: AtomicU32 = AtomicU32::new(0);

/// The provider, the mail sink and the client namespace's hosts file; stopped and removed on
/// drop, which must come before the [`Edge`]'s (a process inside keeps a namespace alive).
pub struct Apps {
    /// Config, certificates, Maildir, cookie jar.
    pub dir: PathBuf,
    client_ns: String,
    edge_ns: String,
    idp: Option<Daemon>,
    mail: Option<Daemon>,
}

/// One step of a walk: what was done, whether it went as it should, what was seen (or why not).
pub struct Step {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

impl Step {
    /// `what  ok|FAILED  detail`, like the demo's client lines.
    pub fn line(&self) -> String {
        let mark = if self.ok { "ok" } else { "FAILED" };
        format!("{:<34} {mark:<6} {}", self.what, self.detail)
    }
}

impl Apps {
    /// Writes what outpost's config names (the provider's CA, the client secret) and the
    /// provider's own config, before the edge starts; see [`Apps::config`] and [`Apps::start`].
    pub fn prepare() -> Apps {
        let (pid, n) = (std::process::id(), APPS.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("{TEMP_DIR_PREFIX}{pid}-{n}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let apps =
            Apps { dir, client_ns: String::new(), edge_ns: String::new(), idp: None, mail: None };
        apps.write_certificates();
        let secret = format!("demo-secret-{pid}-{n}");
        write(&apps.path("client-secret"), &format!("{secret}\n"));
        let provider = json!({
            "host": EDGE_V4,
            "port": IDP_PORT,
            "cert": apps.path("idp.pem"),
            "key": apps.path("idp.key"),
            "issuer": issuer(),
            "kid": "demo-key-1",
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": secret,
                "redirect_uris": [format!("https://{AUTH_HOST}/callback")],
            }],
        });
        write(&apps.path("provider.json"), &provider.to_string());
        apps
    }

    /// A CA of the demo's own and the provider's certificate for its address, signed by it
    /// (outpost trusts the CA through the provider's `ca_file`).
    fn write_certificates(&self) {
        let p = |name: &str| self.path(name);
        let ext = p("idp.ext");
        write(&ext, &format!("subjectAltName = IP:{EDGE_V4}\nbasicConstraints = CA:FALSE\n"));
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
        let (cert, key, csr) = (p("idp.pem"), p("idp.key"), p("idp.csr"));
        let cn = format!("/CN={EDGE_V4}");
        let steps: [Vec<&str>; 3] = [
            [&["openssl", "req", "-x509", "-days", "2", "-subj", "/CN=outpost demo CA"][..], &ec]
                .concat(),
            [&["openssl", "req", "-subj", &cn][..], &ec].concat(),
            vec![
                "openssl",
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-extfile",
                &ext,
            ],
        ];
        let outputs = [
            ["-keyout", &ca_key, "-out", &ca],
            ["-keyout", &key, "-out", &csr],
            ["-out", &cert, "-days", "2"],
        ];
        for (argv, out) in steps.iter().zip(outputs) {
            run(None, &[&argv[..], &out].concat(), COMMAND_LIMIT).ok();
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("UTF-8 path").to_owned()
    }

    /// The Maildir the mail sink writes.
    pub fn maildir(&self) -> String {
        self.path("Maildir")
    }

    /// The walks' cookie jar (curl's format).
    pub fn jar(&self) -> String {
        self.path("cookies.txt")
    }

    /// `[access]` and `[reserve]` for the edge's config (its `extra`): `app.demo.test` behind a
    /// login, for verified `@demo.test` emails; reservations mailed through the mail sink.
    pub fn config(&self) -> String {
        format!(
            r#"
[access]
auth_host = "{AUTH_HOST}"

[[access.providers]]
name = "{PROVIDER}"
display_name = "the demo's OpenID provider"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
ca_file = "{ca}"

[[access.apps]]
name = "app"
host = "{APP_HOST}"
allow_domains = ["demo.test"]

[reserve]
host = "{RESERVE_HOST}"
zone = "{ZONE}"

[reserve.smtp]
host = "127.0.0.1"
port = {SMTP_PORT}
from = "Reservations <reservations@demo.test>"
"#,
            issuer = issuer(),
            secret = self.path("client-secret"),
            ca = self.path("ca.pem"),
        )
    }

    /// Starts the provider and the mail sink in `edge`'s namespace and gives its client
    /// namespace the demo's names; returns once both listen.
    pub fn start(&mut self, edge: &Edge) {
        self.client_ns = edge.client_ns.clone();
        self.edge_ns = edge.edge_ns.clone();
        let hosts = Path::new(ETC_NETNS).join(&self.client_ns);
        fs::create_dir_all(&hosts).unwrap_or_else(|e| panic!("creating {}: {e}", hosts.display()));
        let names = format!("{EDGE_V4} {AUTH_HOST} {APP_HOST} {RESERVE_HOST}");
        write(&hosts.join("hosts").to_string_lossy(), &format!("127.0.0.1 localhost\n{names}\n"));

        let script = idp_dir().join("provider.mjs");
        let modules = idp_dir().join("node_modules/oidc-provider/package.json");
        assert!(
            modules.is_file(),
            "oidc-provider is not installed: run `cargo xtask setup` (npm ci in {})",
            idp_dir().display()
        );
        let argv = ["node", script.to_str().expect("UTF-8 path"), &self.path("provider.json")];
        // A start that stalls is reported and made again (`START_STALL`).
        for attempt in 1..=START_TRIES {
            let mut idp = Daemon::start("OpenID provider", Some(&self.edge_ns), &argv);
            if idp.ready_within(START_STALL, |d| d.stdout().contains("READY")) {
                self.idp = Some(idp);
                break;
            }
            eprintln!("{}\n{}", stalled("the OpenID provider", attempt, idp.pid()), idp.report());
        }
        assert!(
            self.idp.is_some(),
            "the OpenID provider did not start: {START_TRIES} starts stalled"
        );

        let listen = format!("127.0.0.1:{SMTP_PORT}");
        let maildir = self.maildir();
        let argv = [PYTHON, "-m", "aiosmtpd", "-n", "-l", &listen];
        let argv = [&argv[..], &["-c", "aiosmtpd.handlers.Mailbox", &maildir]].concat();
        let mut mail = Daemon::start("mail sink (aiosmtpd)", Some(&self.edge_ns), &argv);
        let edge_ns = self.edge_ns.clone();
        let filter = format!("sport = :{SMTP_PORT}");
        mail.wait_ready(START_LIMIT, |_| {
            let out = run(Some(&edge_ns), &["ss", "-Hltn", &filter], COMMAND_LIMIT);
            !out.stdout.trim().is_empty()
        });
        self.mail = Some(mail);
    }

    /// `ip netns exec <client ns> curl -sSk -i -w '\n%{url_effective}' --max-time 10` with the
    /// walks' cookie jar, as a browser's navigation (`Accept: text/html`), then `args`.
    fn curl(&self, args: &[&str]) -> Reply {
        let jar = self.jar();
        let mut argv = vec!["ip", "netns", "exec", &self.client_ns, "curl", "-sSk", "-i"];
        argv.extend(["--max-time", "10", "-c", &jar, "-b", &jar, "-H", "Accept: text/html"]);
        argv.extend(["-w", "\n%{url_effective}"]);
        argv.extend(args);
        Reply::parse(run(None, &argv, CURL_LIMIT))
    }

    /// The login, as a browser without JavaScript: the app without a token, the edge's login
    /// page, the provider's login form, signing in, back through `/callback` to the app, which
    /// gets the identity headers; then the app again, on the cookie alone. Stops at the first
    /// step that fails.
    pub fn walk_login(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let app = format!("https://{APP_HOST}/");
        // Without a token: a 302 to the login page on the auth host.
        let r = self.curl(&[&app]);
        let login = r.location().filter(|l| l.starts_with(&format!("https://{AUTH_HOST}/login")));
        let Some(login) = login.map(str::to_owned) else {
            steps
                .push(r.failed(&format!("{APP_HOST} without a login"), "no 302 to the login page"));
            return steps;
        };
        steps.push(Step::ok(&format!("{APP_HOST} without a login"), format!("302 to {login}")));

        // The login page: one form per provider (hidden app, return path, provider).
        let r = self.curl(&[&login]);
        let Some(form) = r.form().filter(|_| r.status() == Some(200)) else {
            steps.push(r.failed("the edge's login page", "no 200 with a form"));
            return steps;
        };
        let button = between(&r.body, "<button type=\"submit\">", "</button>").unwrap_or("?");
        steps.push(Step::ok(
            "the edge's login page",
            format!("200, a form: {:?}", unescape(button)),
        ));

        // Its form: a 302 to the provider (code flow, PKCE), which shows its login form.
        let action = absolute(&r.url, &form.action);
        let fields = form.data_args(&[]);
        let r = self.curl(&post(&fields, &action));
        let at_idp = r.url.starts_with(&issuer()) && r.status() == Some(200);
        let Some(idp_form) = r.form().filter(|_| at_idp) else {
            steps.push(
                r.failed("POST /login (choose the provider)", "no login form at the provider"),
            );
            return steps;
        };
        let first = r.hops.first().and_then(|h| h.location.clone()).unwrap_or_default();
        steps.push(Step::ok(
            "POST /login (choose the provider)",
            format!("302 to {}, its login form", cut(&first, 60)),
        ));

        // Signing in there: back to the edge's /callback, which sends the browser to the app
        // with a one-time code, which sets the app's cookie.
        let action = absolute(&r.url, &idp_form.action);
        let fields = idp_form.data_args(&[("login", USER), ("password", "demo")]);
        let r = self.curl(&post(&fields, &action));
        let through: Vec<String> = r.hops.iter().filter_map(|h| h.location.clone()).collect();
        let via_callback =
            through.iter().any(|l| l.starts_with(&format!("https://{AUTH_HOST}/callback")));
        if !(via_callback && r.status() == Some(200) && r.url == app) {
            steps.push(
                r.failed(&format!("sign in as {USER}"), "not back at the app through /callback"),
            );
            return steps;
        }
        // The provider's own hops are its business; the edge's are the flow.
        let path: Vec<String> =
            through.iter().filter(|l| !l.starts_with(&issuer())).map(|l| short_url(l)).collect();
        steps.push(Step::ok(
            &format!("sign in as {USER}"),
            format!("provider -> {} -> 200", path.join(" -> ")),
        ));

        // What the origin got from the edge: who the user is, and the edge's token.
        let email = r.echoed("outpost-access-authenticated-user-email");
        let token = r.echoed("outpost-access-jwt-assertion");
        match (email, token) {
            (Some(email), Some(token)) if email == USER => steps.push(Step::ok(
                "the app sees who it is",
                format!(
                    "Outpost-Access-Authenticated-User-Email: {email}, \
                     Outpost-Access-Jwt-Assertion: {}",
                    cut(&token, 24)
                ),
            )),
            _ => {
                steps.push(r.failed("the app sees who it is", "no identity headers at the origin"));
                return steps;
            }
        }

        // Again: the cookie alone lets the browser in, no provider on the way.
        let r = self.curl(&[&app]);
        if r.status() == Some(200) && r.hops.len() == 1 {
            steps.push(Step::ok(&format!("{APP_HOST} again"), "200 on the app's cookie".into()));
        } else {
            steps.push(r.failed(&format!("{APP_HOST} again"), "not a 200 on the cookie"));
        }
        steps
    }

    /// A reservation: the form page (its CSRF cookie and field), the form posted, the
    /// confirmation mail read from the Maildir, its link opened, the name then held (the page's
    /// availability API, and `outpost reservations show` on the edge's store).
    pub fn walk_reservation(&self, edge: &Edge) -> Vec<Step> {
        let mut steps = Vec::new();
        let fqdn = format!("{NAME}.{ZONE}");
        let page = format!("https://{RESERVE_HOST}/");
        let r = self.curl(&[&page]);
        let Some(form) = r.form().filter(|_| r.status() == Some(200)) else {
            steps.push(r.failed("the reservation page", "no 200 with a form"));
            return steps;
        };
        steps.push(Step::ok("the reservation page", format!("200, a form for <name>.{ZONE}")));

        let action = absolute(&r.url, &form.action);
        let fields = form.data_args(&[("name", NAME), ("email", USER)]);
        let r = self.curl(&post(&fields, &action)[1..]);
        let what = format!("reserve {fqdn}");
        if r.status() != Some(201) {
            steps.push(r.failed(&what, "no 201"));
            return steps;
        }
        let message = between(&r.body, "<p id=\"message\">", "</p>").map(unescape);
        steps.push(Step::ok(&what, format!("201: {}", message.unwrap_or_default())));

        // The mail, as its reader sees it.
        let mail = self.wait_mail();
        let link = mail.as_ref().ok().and_then(|m| confirm_link(m));
        let Some(link) = link else {
            let why = match &mail {
                Ok(m) => format!("no confirm link in the mail:\n{m}"),
                Err(e) => e.clone(),
            };
            steps.push(Step::failed("the confirmation mail", why));
            return steps;
        };
        let mail = mail.unwrap_or_default();
        let subject = mail.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("?");
        steps.push(Step::ok(
            "the confirmation mail",
            format!("to {USER}, {subject:?}, link {}", cut(&link, 56)),
        ));

        let r = self.curl(&[&link]);
        let title = between(&r.body, "id=\"result\"", "</h1>")
            .and_then(|t| t.split_once('>').map(|(_, t)| unescape(t)));
        if r.status() != Some(200) {
            steps.push(r.failed("open the link in the mail", "no 200"));
            return steps;
        }
        steps.push(Step::ok(
            "open the link in the mail",
            format!("200: {}", title.unwrap_or_default()),
        ));

        // Held: the page says the name is not available, and the store says confirmed.
        let check = format!("https://{RESERVE_HOST}/api/availability?name={NAME}");
        let r = self.curl(&["-H", "Accept: application/json", &check]);
        let v: Option<Value> = serde_json::from_str(r.body.trim()).ok();
        let held = v.as_ref().is_some_and(|v| v["available"] == false);
        if !held {
            steps.push(r.failed(&format!("{fqdn} is held"), "still available"));
            return steps;
        }
        let config = edge.dir.join("outpost.toml");
        let bin = edge.outpost_bin.to_str().expect("UTF-8 path");
        let show = ["reservations", "show", NAME, "--json", "--config"];
        let argv = [&[bin][..], &show, &[config.to_str().expect("UTF-8 path")]].concat();
        let out = run(Some(&edge.edge_ns), &argv, COMMAND_LIMIT);
        let record: Option<Value> = serde_json::from_str(out.stdout.trim()).ok();
        let state = record.as_ref().and_then(|r| r["state"].as_str()).unwrap_or("?");
        if out.success() && state == "confirmed" {
            let reason = v.as_ref().and_then(|v| v["reason"].as_str()).unwrap_or("?");
            steps.push(Step::ok(
                &format!("{fqdn} is held"),
                format!(
                    "/api/availability: not available ({reason}); \
                     outpost reservations show: {state}"
                ),
            ));
        } else {
            steps.push(Step::failed(&format!("{fqdn} is held"), format!("the store says:\n{out}")));
        }
        steps
    }

    /// The newest mail in the Maildir, as `tests/servers/mail.py` prints it, waiting for one.
    fn wait_mail(&self) -> Result<String, String> {
        let script = mail_script();
        let argv = [PYTHON, script.to_str().expect("UTF-8 path"), &self.maildir()];
        let deadline = Instant::now() + MAIL_LIMIT;
        loop {
            let out = run(None, &argv, COMMAND_LIMIT);
            if out.success() {
                return Ok(out.stdout);
            }
            if Instant::now() > deadline {
                return Err(format!("no mail after {MAIL_LIMIT:?}:\n{out}"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Apps {
    fn drop(&mut self) {
        // SIGTERM, by pid, each (Daemon's drop); then what was written.
        self.idp.take();
        self.mail.take();
        if !self.client_ns.is_empty() {
            let _ = fs::remove_dir_all(Path::new(ETC_NETNS).join(&self.client_ns));
            // Only if now empty: other namespaces' files stay.
            let _ = fs::remove_dir(ETC_NETNS);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Step {
    pub(crate) fn ok(what: &str, detail: String) -> Step {
        Step { what: what.into(), ok: true, detail }
    }

    pub(crate) fn failed(what: &str, why: String) -> Step {
        Step { what: what.into(), ok: false, detail: why }
    }
}

/// One response on the way (`curl -i -L` shows each).
struct Hop {
    status: u16,
    location: Option<String>,
}

/// What one curl saw: every response's status and Location, the last one's body, the URL it
/// ended at.
struct Reply {
    hops: Vec<Hop>,
    body: String,
    url: String,
    output: Output,
}

impl Reply {
    fn parse(output: Output) -> Reply {
        let text = output.stdout.replace("\r\n", "\n");
        let (mut rest, url) = match text.rsplit_once('\n') {
            Some((rest, url)) => (rest, url.trim().to_owned()),
            None => ("", text.trim().to_owned()),
        };
        let mut hops = Vec::new();
        while rest.starts_with("HTTP/") {
            let (head, body) = rest.split_once("\n\n").unwrap_or((rest, ""));
            let mut lines = head.lines();
            let status = lines.next().and_then(|l| l.split(' ').nth(1)?.parse().ok());
            let location = lines.find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location").then(|| v.trim().to_owned())
            });
            hops.push(Hop { status: status.unwrap_or(0), location });
            rest = body;
        }
        Reply { hops, body: rest.to_owned(), url, output }
    }

    /// The last response's status.
    fn status(&self) -> Option<u16> {
        self.hops.last().map(|h| h.status)
    }

    /// The last response's Location.
    fn location(&self) -> Option<&str> {
        self.hops.last()?.location.as_deref()
    }

    /// The first form of the last response.
    fn form(&self) -> Option<Form> {
        Form::first(&self.body)
    }

    /// The echo origin's line for request header `name` (lowercase), if it got one.
    fn echoed(&self, name: &str) -> Option<String> {
        self.body.lines().find_map(|l| {
            let (k, v) = l.strip_prefix("header ")?.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// A failed step: `why`, then the curl command and what it printed.
    fn failed(&self, what: &str, why: &str) -> Step {
        let statuses: Vec<String> = self.hops.iter().map(|h| h.status.to_string()).collect();
        let why = format!(
            "{why} (statuses {}, ended at {})\n{}",
            statuses.join(" "),
            self.url,
            self.output
        );
        Step::failed(what, why)
    }
}

/// An HTML form: where it posts, and its fields with their values.
struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

impl Form {
    /// The first form in `html`: its action and its inputs' names and values (unescaped).
    fn first(html: &str) -> Option<Form> {
        let start = html.find("<form")?;
        let html = &html[start..];
        let html = &html[..html.find("</form>")?];
        let action = attr(&html[..html.find('>')?], "action")?;
        let fields = html
            .split("<input")
            .skip(1)
            .filter_map(|i| {
                let tag = &i[..i.find('>')?];
                Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
            })
            .collect();
        Some(Form { action, fields })
    }

    /// curl's `--data-urlencode NAME=VALUE` for each field, `set` overriding or adding values.
    fn data_args(&self, set: &[(&str, &str)]) -> Vec<String> {
        let mut fields = self.fields.clone();
        for (k, v) in set {
            match fields.iter_mut().find(|(n, _)| n == k) {
                Some(f) => f.1 = (*v).to_owned(),
                None => fields.push(((*k).to_owned(), (*v).to_owned())),
            }
        }
        fields
            .iter()
            .flat_map(|(k, v)| ["--data-urlencode".to_owned(), format!("{k}={v}")])
            .collect()
    }
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + end]))
}

/// The text between the first `start` and the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    Some(text[from..][..text[from..].find(end)?].trim())
}

/// `s` cut to `n` characters, with an ellipsis when cut.
fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A URL without its query: where a hop went, not its one-time values.
fn short_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// The first `https://…/confirm?token=…` in the mail's text.
fn confirm_link(mail: &str) -> Option<String> {
    mail.split_whitespace()
        .find(|w| w.starts_with("https://") && w.contains("/confirm?token="))
        .map(str::to_owned)
}

/// A form's `action` as a URL: as it is when absolute, else on the origin of `page`.
fn absolute(page: &str, action: &str) -> String {
    if action.starts_with("https://") {
        return action.to_owned();
    }
    let host_end = page.find("://").map_or(0, |i| i + 3);
    let origin_end = page[host_end..].find('/').map_or(page.len(), |i| host_end + i);
    format!("{}{action}", &page[..origin_end])
}

/// curl's arguments for a form post followed to its end: `-L`, the fields, the URL.
fn post<'a>(fields: &'a [String], url: &'a str) -> Vec<&'a str> {
    ["-L"].into_iter().chain(fields.iter().map(String::as_str)).chain([url]).collect()
}

fn write(path: &str, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

/// `https://<edge's client-facing address>:IDP_PORT`.
pub fn issuer() -> String {
    format!("https://{EDGE_V4}:{IDP_PORT}")
}

/// The provider script and its node_modules (the access tests' own).
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../userspace/handlers/access/tests/idp")
}

/// The Maildir reader.
pub fn mail_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("servers/mail.py")
}
