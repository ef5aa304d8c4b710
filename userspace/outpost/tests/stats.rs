//! `outpost stats` beside a running `outpost run`: the userspace floor's counters come from
//! the admin listener, and the command still answers when no XDP program is loaded.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use outpost_testkit::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `outpost run --no-xdp` on loopback with nothing but the floor, up and answering TLS 1.3:
/// the process, its HTTPS port, its admin port and its directory.
fn start_run(tag: &str) -> (Run, u16, u16, PathBuf) {
    let dir = std::env::temp_dir().join(format!("outpost-{tag}-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (https, admin) = (free_port(), free_port());
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:{https}\"]\nadmin = \"127.0.0.1:{admin}\"\ndata_dir = \"{}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let run = Run(Command::new(BIN)
        .args(["run", "--no-xdp", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let url = format!("https://127.0.0.1:{https}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !curl(&["--tlsv1.3", &url]) {
        assert!(Instant::now() < deadline, "outpost run did not come up");
        thread::sleep(Duration::from_millis(100));
    }
    (run, https, admin, dir)
}

/// `outpost stats ARGS --admin 127.0.0.1:ADMIN` with no XDP program: its stdout.
fn stats(dir: &Path, admin: u16, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--pin-dir")
        .arg(dir.join("no-bpf-here"))
        .arg("stats")
        .args(args)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "outpost stats {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn curl(args: &[&str]) -> bool {
    Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "--max-time", "5"])
        .args(args)
        .status()
        .unwrap()
        .success()
}

#[test]
fn stats_shows_the_userspace_floor_of_a_running_proxy() {
    let (_run, https, admin, dir) = start_run("stats");
    let url = format!("https://127.0.0.1:{https}/");
    assert!(curl(&["--tlsv1.2", "--tls-max", "1.2", &url]));
    assert!(!curl(&["--tlsv1.0", "--tls-max", "1.0", "--ciphers", "DEFAULT@SECLEVEL=0", &url]));

    let v: serde_json::Value =
        serde_json::from_str(stats(&dir, admin, &["--json"]).trim()).unwrap();
    assert!(v["versions"].is_null(), "no XDP program here: {v}");
    assert!(v["kernel_error"].as_str().unwrap().contains("not loaded"), "{v}");
    let user = &v["userspace"];
    assert_eq!(user["versions"]["TLS1.0"]["reject"], 1, "{v}");
    assert_eq!(user["versions"]["TLS1.2"]["pass"], 1, "{v}");
    assert!(user["versions"]["TLS1.3"]["pass"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(user["negotiated"]["TLSv1.2"], 1, "{v}");

    // Nothing at either end: a clear error, not an empty table.
    let out = Command::new(BIN)
        .arg("--pin-dir")
        .arg(dir.join("no-bpf-here"))
        .args(["stats", "--admin", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not loaded"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_shows_what_alpn_chose_per_tls_version() {
    let (_run, https, admin, dir) = start_run("stats-alpn");
    let url = format!("https://127.0.0.1:{https}/");
    // start_run's probes counted already: the test looks at the growth.
    let json = || -> serde_json::Value {
        serde_json::from_str(stats(&dir, admin, &["--json"]).trim()).unwrap()
    };
    let before = json();
    for args in [
        &["--http2", "--tlsv1.3"][..],
        &["--http1.1", "--tlsv1.3"],
        &["--http1.1", "--no-alpn", "--tlsv1.3"],
        &["--http2", "--tlsv1.2", "--tls-max", "1.2"],
        &["--http1.1", "--tlsv1.2", "--tls-max", "1.2"],
        &["--http1.1", "--tlsv1.2", "--tls-max", "1.2"],
    ] {
        assert!(curl(&[args, &[url.as_str()][..]].concat()), "curl {args:?} {url}");
    }

    let v = json();
    let count = |v: &serde_json::Value, version: &str, alpn: &str| -> u64 {
        v["userspace"]["alpn"][version][alpn]
            .as_u64()
            .unwrap_or_else(|| panic!("no alpn.{version}.{alpn} in {v}"))
    };
    let want = [
        ("TLSv1.3", [("h2", 1), ("http/1.1", 1), ("none", 1)]),
        ("TLSv1.2", [("h2", 1), ("http/1.1", 2), ("none", 0)]),
    ];
    for (version, row) in want {
        for (alpn, n) in row {
            assert_eq!(
                count(&v, version, alpn) - count(&before, version, alpn),
                n,
                "{version} {alpn}: before {before}\nafter {v}"
            );
        }
    }
    // The table shows the same counts as the JSON.
    let expect_row = |version: &str| -> Vec<String> {
        let mut row = vec![version.to_owned()];
        row.extend(["h2", "http/1.1", "none"].map(|a| count(&v, version, a).to_string()));
        row
    };

    let table = stats(&dir, admin, &[]);
    let row = |version: &str| -> Vec<String> {
        let after = &table[table.find("ALPN (handshakes)").unwrap_or_else(|| panic!("{table}"))..];
        after
            .lines()
            .find(|l| l.starts_with(version))
            .unwrap_or_else(|| panic!("no {version} row under the ALPN table:\n{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let header = table.lines().find(|l| l.starts_with("ALPN (handshakes)")).unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["ALPN", "(handshakes)", "h2", "http/1.1", "none"],
        "{table}"
    );
    assert_eq!(row("TLSv1.3"), expect_row("TLSv1.3"), "{table}");
    assert_eq!(row("TLSv1.2"), expect_row("TLSv1.2"), "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}
