//! Support for the reservation end-to-end tests: a real `outpost run` with `[reserve]`, a TLS
//! HTTP/1.1 client on tokio-rustls (many concurrent requests from one test), a real SMTP
//! server (Debian's aiosmtpd) writing a Maildir, and the confirm link read from a delivered
//! mail.

#![allow(dead_code)]

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

pub use outpost_testkit::{free_port, Outpost, TempDir};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub const HOST: &str = "reserve.example.test";
pub const ZONE: &str = "workers.example.test";

/// A `[reserve]` section for tests: limits high enough for the load tests (set lower ones in
/// `extra`), mail to `smtp_port`, the shared secret file.
pub fn reserve_section(https: u16, smtp_port: u16, secret: &Path, extra: &str) -> String {
    format!(
        "[reserve]\nhost = \"{HOST}\"\nzone = \"{ZONE}\"\n\
         public_url = \"https://{HOST}:{https}\"\nsecret_file = \"{}\"\n\
         expiry_sweep_ms = 200\n{extra}\n\
         [reserve.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntimeout_ms = 3000\n\
         from = \"Reservations <reserve@example.test>\"\n",
        secret.display()
    )
}

/// Limits that never bite in a load test.
pub const NO_LIMITS: &str = "[reserve.limits]\nreserve_per_ip_per_minute = 1000000\n\
    reserve_per_email_per_hour = 1000000\navailability_per_ip_per_minute = 1000000\n\
    confirm_per_ip_per_minute = 1000000\n";

/// A secret file shared by the nodes of one test.
pub fn secret_file(dir: &TempDir) -> PathBuf {
    let p = dir.0.join("reserve.secret");
    std::fs::write(&p, b"test secret shared by every node of this test").unwrap();
    p
}

/// Starts outpost with `[reserve]` (listening on a port chosen here so the section can name
/// it) and `store` (a `[store]` section or empty for embedded).
pub fn start_edge(smtp_port: u16, secret: &Path, reserve_extra: &str, store: &str) -> Outpost {
    let https = free_port();
    let text = format!("{store}\n{}", reserve_section(https, smtp_port, secret, reserve_extra));
    Outpost::start_at(https, "uring", &text, &[], &["--no-xdp"])
}

// ---------------------------------------------------------------------------------------------
// HTTPS client.

/// A response.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// TLS client to one edge; cheap to clone.
#[derive(Clone)]
pub struct Client {
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    pub fn new(port: u16) -> Client {
        let cfg = outpost_testkit::tls::client_config();
        Client { port, tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)) }
    }

    /// One request on a fresh connection (`Connection: close`), within 60 s.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        tokio::time::timeout(Duration::from_secs(60), self.exchange(method, path, headers, body))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 60 s"))?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(HOST).unwrap();
        let mut s = self.tls.connect(name, tcp).await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        // The server may answer (413) and close before the whole body is in: not an error here.
        let _ = s.write_all(&out).await;
        let _ = s.flush().await;
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf).await;
        if buf.is_empty() {
            read?;
        }
        parse_response(&buf)
    }

    pub async fn post_json(&self, path: &str, v: &serde_json::Value) -> std::io::Result<Resp> {
        let body = v.to_string();
        self.request("POST", path, &[("Content-Type", "application/json")], body.as_bytes()).await
    }

    pub async fn get(&self, path: &str) -> std::io::Result<Resp> {
        self.request("GET", path, &[], b"").await
    }

    pub async fn reserve(&self, name: &str, email: &str) -> std::io::Result<Resp> {
        self.post_json("/reserve", &serde_json::json!({ "name": name, "email": email })).await
    }
}

fn parse_response(buf: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no head"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked") {
        body = dechunk(&body);
    }
    Ok(Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

/// A multi-thread runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs `n` reservations at once (`f(i)` gives name and email) and returns each answer's
/// status, in order. Panics on a transport error, with the request.
pub fn concurrent(client: &Client, n: usize, f: impl Fn(usize) -> (String, String)) -> Vec<u16> {
    let rt = runtime();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (name, email) = f(i);
            let c = client.clone();
            set.spawn(async move {
                let r = c.reserve(&name, &email).await;
                (i, name, email, r)
            });
        }
        let mut out = vec![0u16; n];
        while let Some(done) = set.join_next().await {
            let (i, name, email, r) = done.unwrap();
            let r = r.unwrap_or_else(|e| panic!("reserve {name} for {email}: {e}"));
            out[i] = r.status;
        }
        out
    })
}

pub fn count(statuses: &[u16], s: u16) -> usize {
    statuses.iter().filter(|&&x| x == s).count()
}

// ---------------------------------------------------------------------------------------------
// SMTP.

/// Debian's aiosmtpd, storing every mail in a Maildir; killed by PID on drop.
pub struct Smtp {
    pub port: u16,
    pub maildir: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
}

pub const PYTHON: &str = "/usr/bin/python3";

impl Smtp {
    /// Starts it on a free port.
    pub fn start() -> Smtp {
        Smtp::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Smtp {
        let dir = TempDir::new("smtp");
        let mut s = Smtp { port, maildir: dir.0.join("Maildir"), child: None, _dir: dir };
        s.up();
        s
    }

    /// (Re)starts the server on its port, keeping the Maildir.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let probe = Command::new(PYTHON).args(["-c", "import aiosmtpd"]).output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "Debian's python3-aiosmtpd is missing (apt-get install python3-aiosmtpd): {probe:?}"
        );
        let log =
            std::fs::File::create(self._dir.0.join(format!("smtp-{}.log", self.port))).unwrap();
        let child = Command::new(PYTHON)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{}", self.port)])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting aiosmtpd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGKILL by PID): the port refuses connections.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every delivered mail, raw.
    pub fn mails(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    if let Ok(t) = std::fs::read_to_string(e.path()) {
                        out.push(t);
                    }
                }
            }
        }
        out
    }

    /// The `To:` address of every delivered mail.
    pub fn recipients(&self) -> std::collections::BTreeSet<String> {
        self.mails()
            .iter()
            .filter_map(|m| {
                m.lines().find_map(|l| l.strip_prefix("To: ")).map(str::trim).map(str::to_owned)
            })
            .collect()
    }

    /// Mails to `to`.
    pub fn mails_to(&self, to: &str) -> Vec<String> {
        self.mails()
            .into_iter()
            .filter(|m| m.lines().any(|l| l.starts_with("To: ") && l.contains(to)))
            .collect()
    }

    /// Waits up to `limit` for at least `n` mails to `to`.
    pub fn wait_for(&self, to: &str, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.mails_to(to);
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{} mail(s) to {to} after {limit:?}, wanted {n}; all mails: {}",
                m.len(),
                self.mails().len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.down();
    }
}

/// Quoted-printable soft breaks removed and `=XX` decoded.
pub fn qp_decode(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The confirm link of a mail: `(full URL, path and query)`.
pub fn confirm_link(mail: &str) -> (String, String) {
    let text = qp_decode(mail);
    let at = text.find("https://").and_then(|i| {
        let rest = &text[i..];
        rest.find("/confirm?token=").map(|j| (i, i + j))
    });
    let (start, path_at) = at.unwrap_or_else(|| panic!("no confirm link in the mail:\n{text}"));
    let token_at = path_at + "/confirm?token=".len();
    let token: String = text[token_at..].chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(token.len(), 64, "a 32-byte token in hex: {}", &text[start..]);
    let path = format!("/confirm?token={token}");
    (format!("{}{path}", &text[start..path_at]), path)
}
