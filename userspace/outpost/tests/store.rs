//! `outpost run` with its store, end to end through the real binary: two edge nodes sharing
//! one PostgreSQL (started by the test) write one audit log; PostgreSQL restarting under the
//! edge gives 503s, then service again without restarting it; a database that is unreachable,
//! locked or corrupt at start is one clear error. Secrets never reach the logs.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use outpost_store::testing::TestPostgres;
use outpost_testkit::{curl, free_port, outpost_bin, stdout, Outpost, TempDir};

fn pg_config(node: &str, url: &str) -> String {
    format!(
        "node = \"{node}\"\n[store]\nurl = \"{url}\"\ntimeout_ms = 1000\nconnect_timeout_ms = 1000\n"
    )
}

/// Runs `outpost` with `args` expecting it to exit by itself within `limit`.
fn run_to_exit(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(outpost_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting outpost");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "outpost {args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The admin listener's `/audit` as JSON.
fn audit(o: &Outpost, query: &str) -> (u16, serde_json::Value) {
    let (status, body) = o.admin_get(&format!("/audit?{query}")).expect("admin answers");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

fn nodes_of(events: &serde_json::Value, kind: &str) -> Vec<String> {
    let mut nodes: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn two_nodes_write_one_audit_log_on_postgres() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let mut a = Outpost::start("uring", &pg_config("edge-a", &url));
    let mut b = Outpost::start("epoll", &pg_config("edge-b", &url));
    // Each node's start is in the log both read.
    for o in [&a, &b] {
        let (status, events) = audit(o, "kind=node.start");
        assert_eq!(status, 200);
        assert_eq!(nodes_of(&events, "node.start"), ["edge-a", "edge-b"], "{events}");
    }
    // Both in /metrics as their node, and the store as PostgreSQL.
    assert!(a.metrics().contains("outpost_node_info{node=\"edge-a\"} 1"));
    assert!(b.metrics().contains("outpost_store_info{backend=\"postgres\"} 1"));
    for o in [&mut a, &mut b] {
        o.signal(libc::SIGTERM);
        assert!(o.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()));
        assert!(!o.log().contains(pg.password()), "the password reached the log:\n{}", o.log());
    }
    // No edge answers now: `outpost audit` reads the store of the config it is given.
    let config = a.dir.0.join("outpost.toml");
    let dead_admin = format!("127.0.0.1:{}", free_port());
    let out = run_to_exit(
        &["audit", "--json", "--admin", &dead_admin, "--config", config.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "outpost audit failed: {}", stderr(&out));
    let events: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(nodes_of(&events, "node.start"), ["edge-a", "edge-b"], "{events}");
    assert_eq!(nodes_of(&events, "node.stop"), ["edge-a", "edge-b"], "{events}");
    // The table form names both nodes, and filters by kind.
    let out = run_to_exit(
        &[
            "audit",
            "--kind",
            "node.stop",
            "--admin",
            &dead_admin,
            "--config",
            config.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let table = stdout(&out);
    assert!(table.contains("edge-a") && table.contains("edge-b"), "{table}");
    assert!(!table.contains("node.start"), "{table}");
}

#[test]
fn postgres_restart_gives_503_then_service_without_restarting_the_edge() {
    let pg = TestPostgres::start();
    let o = Outpost::start("uring", &pg_config("edge-r", &pg.url()));
    assert_eq!(audit(&o, "").0, 200);
    pg.stop();
    let started = Instant::now();
    let (status, body) = o.admin_get("/audit").expect("admin answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"error\""), "a JSON error: {body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 must come within the store timeout, took {:?}",
        started.elapsed()
    );
    // Routes that need no store keep serving.
    let page = curl(&[&o.url("/")]);
    assert!(stdout(&page).contains("outpost is running"), "{}", stdout(&page));
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = o.admin_get("/audit").expect("admin answers");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the store did not come back; log:\n{}", o.log());
        thread::sleep(Duration::from_millis(200));
    }
    assert!(!o.log().contains(pg.password()), "the password reached the log:\n{}", o.log());
}

#[test]
fn unreachable_postgres_at_start_is_one_line_naming_the_url_without_its_password() {
    let dir = TempDir::new("pg-down");
    let port = free_port();
    let config = dir.0.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\
             [store]\nurl = \"postgres://outpost:s3cret-pw@127.0.0.1:{port}/outpost\"\n\
             connect_timeout_ms = 1000\n",
            free_port(),
            free_port(),
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    let out = run_to_exit(
        &["run", "--no-xdp", "--config", config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("outpost: "), "{err}");
    assert!(last.contains(&format!("postgres://outpost:***@127.0.0.1:{port}/outpost")), "{err}");
    assert!(!err.contains("s3cret-pw"), "the password reached stderr: {err}");
}

/// `outpost run` with a fresh config on `data` (SQLite), expected to fail at start.
fn start_fails(data: &Path) -> String {
    let dir = TempDir::new("sqlite-bad");
    let config = dir.0.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
            free_port(),
            free_port(),
            data.display()
        ),
    )
    .unwrap();
    let out = run_to_exit(
        &["run", "--no-xdp", "--config", config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "outpost started on {}", data.display());
    stderr(&out).lines().last().unwrap_or_default().to_owned()
}

#[test]
fn sqlite_locked_or_corrupt_at_start_is_a_clear_error() {
    // Locked: another edge holds the data directory.
    let running = Outpost::start("uring", "");
    let data = running.dir.0.join("data");
    let err = start_fails(&data);
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    drop(running);
    // Corrupt: not a database.
    let dir = TempDir::new("corrupt");
    std::fs::write(dir.0.join("outpost.db"), vec![0x5a; 8192]).unwrap();
    let err = start_fails(&dir.0);
    assert!(err.contains("outpost.db"), "{err}");
    // Unwritable: the data directory cannot be created (a file stands where a directory should).
    let dir = TempDir::new("unwritable");
    std::fs::write(dir.0.join("file"), b"x").unwrap();
    let err = start_fails(&dir.0.join("file/data"));
    assert!(err.contains("file/data"), "{err}");
}

#[test]
fn audit_events_also_go_to_a_json_lines_file_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("audit-file");
    let file = dir.0.join("audit.jsonl");
    let mut o = Outpost::start(
        "uring",
        &format!("node = \"edge-f\"\n[audit]\nfile = \"{}\"\n", file.display()),
    );
    o.signal(libc::SIGTERM);
    assert!(o.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", o.log());
    let text = std::fs::read_to_string(&file).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            let e: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(e["node"], "edge-f", "{l}");
            e["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["node.start", "node.stop"], "{text}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "audit file mode {mode:o}");
    let db = o.dir.0.join("data/outpost.db");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} mode {mode:o}", db.display());
}

#[test]
fn operator_commands_read_the_embedded_store_beside_a_running_edge() {
    let o = Outpost::start("uring", "node = \"edge-t\"\n");
    let config = o.dir.0.join("outpost.toml");
    // No admin listener to ask (a port nothing listens on): the command opens the store
    // itself, while the edge holds it.
    let dead_admin = format!("127.0.0.1:{}", free_port());
    let out = run_to_exit(
        &["audit", "--json", "--admin", &dead_admin, "--config", config.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "outpost audit beside the edge failed: {}", stderr(&out));
    let events: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(nodes_of(&events, "node.start"), ["edge-t"], "{events}");
    // The edge still serves its store.
    assert_eq!(audit(&o, "").0, 200);

    // Through the running edge: the command sends the admin token it finds in the data
    // directory of --config, or in --admin-token-file / $OUTPOST_ADMIN_TOKEN_FILE.
    let live = format!("127.0.0.1:{}", o.admin);
    let elsewhere = TempDir::new("no-config-here");
    let audit_cli = |args: &[&str], env: &[(&str, &Path)]| {
        let out = outpost_testkit::run_client(
            Command::new(outpost_bin())
                .args(["audit", "--json", "--kind", "node.start", "--admin", &live])
                .args(args)
                .current_dir(&elsewhere.0)
                .env_remove("OUTPOST_DATA")
                .env_remove("OUTPOST_ADMIN_TOKEN_FILE")
                .envs(env.iter().copied()),
            Duration::from_secs(20),
        );
        (out.status.success(), stdout(&out), stderr(&out))
    };
    let (ok, events, err) = audit_cli(&["--config", config.to_str().unwrap()], &[]);
    assert!(ok && events.contains("edge-t"), "audit --config: {err}{events}");
    let token = o.admin_token_file();
    let (ok, events, err) = audit_cli(&[], &[("OUTPOST_ADMIN_TOKEN_FILE", &token)]);
    assert!(ok && events.contains("edge-t"), "audit with $OUTPOST_ADMIN_TOKEN_FILE: {err}{events}");
    // Without a token the edge refuses, and the error says where the token was looked for.
    let (ok, _, err) = audit_cli(&[], &[]);
    assert!(!ok && err.contains("401") && err.contains("admin-token"), "{err}");
    assert!(!err.contains(&o.admin_token()), "{err}");
}
