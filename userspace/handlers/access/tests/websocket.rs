//! WebSockets to a protected app: the upgrade request is checked like any request (no token:
//! refused, never upgraded), an open socket outlives its app token's expiry, and a logout
//! closes it within revocation's 2 s bound. A real WebSocket origin and client (Python
//! `websockets`), a real provider, the real edge.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use outpost_testkit::{free_port, python, Outpost};
use serde_json::Value;
use support::*;

/// A child process killed (by its PID) on drop, with its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().expect("spawn");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().take(10_000) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    fn line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// The JSON report on the last line, within `limit`.
    fn report(&self, limit: Duration) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.line(left).expect("the client's report in time");
            if line.starts_with('{') {
                return serde_json::from_str(&line).unwrap();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ws_origin() -> (Proc, u16) {
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proxy/tests/websocket/ws.py");
    let p = Proc::start(Command::new(python()).arg(script).args([
        "origin",
        "--port",
        &port.to_string(),
    ]));
    assert_eq!(p.line(Duration::from_secs(15)).as_deref(), Some("listening"));
    (p, port)
}

fn client(edge_port: u16, cookie: Option<&str>, seconds: u32) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/websocket/client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).args(["--port", &edge_port.to_string(), "--host", WIKI]);
    cmd.args(["--seconds", &seconds.to_string()]);
    if let Some(c) = cookie {
        cmd.args(["--cookie", c]);
    }
    Proc::start(&mut cmd)
}

#[test]
fn a_websocket_to_a_protected_app_needs_a_login_outlives_its_token_and_ends_at_logout() {
    let (_origin, origin_port) = ws_origin();
    let port = free_port();
    let idp = Idp::start(&[callback(port)]);
    // App tokens of 1 s (plus the check's 60 s of leeway): the socket below outlives its own.
    let config = edge_config_to(
        port,
        &idp,
        &format!("127.0.0.1:{origin_port}"),
        "app_token_lifetime_secs = 1",
    );
    let edge = Outpost::start_at(port, "uring", &config, &[], &["--no-xdp"]);

    // Without a token the upgrade is refused like any request: no socket.
    let refused = client(port, None, 1).report(Duration::from_secs(20));
    assert_eq!(refused["open"], false, "{refused}");
    // Not a navigation (no `Accept: text/html`): 401, as for any API request.
    assert_eq!(refused["status"], 401, "{refused}");

    let b = Browser::new(port);
    b.login(&format!("https://{WIKI}:{port}/"), "bob@example.test");
    let token = b.cookie(&format!("https://{WIKI}:{port}/"), "__Host-outpost-token").unwrap();
    // A forged token is refused too.
    let forged = client(port, Some("x.y.z"), 1).report(Duration::from_secs(20));
    assert_eq!(forged["open"], false, "{forged}");

    let c = client(port, Some(&token), 120);
    assert_eq!(c.line(Duration::from_secs(20)).as_deref(), Some("open"), "{}", edge.log());
    // Wait until the token is past its expiry and the leeway: a request with it now gets a
    // renewed token from the session (`Set-Cookie`), which shows it expired. The socket
    // admitted with it still echoes.
    thread::sleep(Duration::from_secs(62));
    let with_old = b.nav(&format!("https://{WIKI}:{port}/x"));
    let renewed = with_old.set_cookies().iter().any(|c| c.starts_with("__Host-outpost-token="));
    assert!(renewed, "the token had not expired yet: {:?}", with_old.set_cookies());
    let out = b.follow(b.nav(&format!("https://{WIKI}:{port}/.outpost/logout")));
    let logged_out = std::time::Instant::now();
    assert!(out.iter().all(|r| r.status < 500), "logout failed");
    let report = c.report(Duration::from_secs(10));
    assert!(report["closed_after"].as_f64().unwrap_or(0.0) > 62.0, "{report}");
    let closed_in = logged_out.elapsed();
    assert!(report["echoed"].as_u64().unwrap() >= 300, "the socket did not keep echoing: {report}");
    assert!(
        report["closed_after"].is_number(),
        "the socket was not closed: {report}\n{}",
        edge.log()
    );
    assert!(
        closed_in <= Duration::from_millis(2500),
        "closed {closed_in:?} after the logout: {report}"
    );
    edge.wait_metric("outpost_upgraded_connections", "0", |n| n == 0);
}
