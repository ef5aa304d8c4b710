//! `outpost stats` beside a running `outpost run`: the userspace floor's counters come from
//! the admin listener, and the command still answers when no XDP program is loaded.

use std::{
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
    let dir = std::env::temp_dir().join(format!("outpost-stats-test-{}", std::process::id()));
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
    let _run = Run(Command::new(BIN)
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
    assert!(curl(&["--tlsv1.2", "--tls-max", "1.2", &url]));
    assert!(!curl(&["--tlsv1.0", "--tls-max", "1.0", "--ciphers", "DEFAULT@SECLEVEL=0", &url]));

    let out = Command::new(BIN)
        .arg("--pin-dir")
        .arg(dir.join("no-bpf-here"))
        .args(["stats", "--json", "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
