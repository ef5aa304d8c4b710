//! The Debian package as an operator meets it: `apt-get install ./outpost_*.deb` on this
//! machine creates the outpost system user and its state directory (0750, its own), installs
//! the binary, the unit, the config as a conffile, man pages and completions; the installed
//! config passes `outpost check` run as that user; the installed unit verifies; and
//! `apt-get purge` takes the state and the config away again.
//!
//! Built only with `--features deb` and run by `cargo xtask test` right after `cargo xtask
//! package`, with the package's path in `OUTPOST_DEB`. Needs root (it installs a package), like
//! CI.

use std::{path::Path, process::Command};

const PACKAGE: &str = "outpost";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}: {}\n{text}", out.status);
    text
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt(args: &[&str]) -> String {
    run(Command::new("apt-get")
        .args(["-y", "-q", "--no-install-recommends"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[test]
fn the_package_installs_a_service_that_checks_out_and_purges_clean() {
    assert!(unsafe { libc::geteuid() } == 0, "installing a package needs root");
    let deb = std::env::var("OUTPOST_DEB")
        .expect("OUTPOST_DEB: the package to install (cargo xtask test sets it)");
    assert!(Path::new(&deb).is_absolute() && Path::new(&deb).is_file(), "{deb}");
    if installed() {
        apt(&["purge", PACKAGE]);
    }

    apt(&["install", &deb]);
    assert!(installed());
    let version = run(Command::new("/usr/bin/outpost").arg("--version"));
    assert!(version.starts_with("outpost "), "{version}");

    // The system user, with no login, and its state directory.
    let passwd = run(Command::new("getent").args(["passwd", "outpost"]));
    assert!(passwd.trim_end().ends_with(":/usr/sbin/nologin"), "{passwd}");
    let state = run(Command::new("stat").args(["-c", "%U:%G %a", "/var/lib/outpost"]));
    assert_eq!(state.trim(), "outpost:outpost 750");

    // The config is a conffile (an upgrade keeps the operator's edits), and sound as shipped,
    // checked by the user the service runs as.
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", PACKAGE]));
    assert!(conffiles.contains("/etc/outpost/outpost.toml"), "{conffiles}");
    let check = run(Command::new("setpriv")
        .args(["--reuid=outpost", "--regid=outpost", "--init-groups", "--"])
        .args(["/usr/bin/outpost", "check", "--config", "/etc/outpost/outpost.toml"]));
    assert!(!check.to_lowercase().contains("problem"), "{check}");

    // The unit as installed, man pages, completions, the Prometheus and Grafana files.
    let unit = "/usr/lib/systemd/system/outpost.service";
    run(Command::new("systemd-analyze").args(["verify", unit]));
    for f in [
        "/usr/share/man/man1/outpost.1.gz",
        "/usr/share/man/man1/outpost-run.1.gz",
        "/usr/share/bash-completion/completions/outpost",
        "/usr/share/zsh/vendor-completions/_outpost",
        "/usr/share/fish/vendor_completions.d/outpost.fish",
        "/usr/share/outpost/prometheus/prometheus.yml",
        "/usr/share/outpost/prometheus/outpost.rules.yml",
        "/usr/share/outpost/prometheus/outpost.alerts.yml",
        "/usr/share/outpost/prometheus/targets/outpost.yml",
        "/usr/share/outpost/grafana/outpost-fleet.json",
        "/usr/share/doc/outpost/fleet.md",
    ] {
        assert!(Path::new(f).is_file(), "{f} is not installed");
    }

    // Purge: state and config go; the system user stays, as Debian leaves system users.
    apt(&["purge", PACKAGE]);
    assert!(!installed());
    for gone in ["/usr/bin/outpost", "/var/lib/outpost", "/etc/outpost/outpost.toml", unit] {
        assert!(!Path::new(gone).exists(), "{gone} is still there after purge");
    }
    run(Command::new("getent").args(["passwd", "outpost"]));
}
