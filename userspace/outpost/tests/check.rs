//! `outpost check --config FILE`: exit 0 and `ok` for a config `outpost run` would start with;
//! exit 1 and one line per problem on stderr otherwise, for each kind of problem it knows.
//! Certificates come from the `openssl` CLI; "not readable by this user" runs the check as
//! `nobody` through `setpriv` (these tests run as root, who can read anything).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// A scratch directory with a config in it, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d =
            std::env::temp_dir().join(format!("outpost-check-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `outpost.toml` with `body` after a data_dir inside this directory.
    fn config(&self, body: &str) -> PathBuf {
        let data = self.path("data");
        let text = format!(
            "data_dir = {:?}\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n{body}",
            data.display().to_string()
        );
        let p = self.path("outpost.toml");
        fs::write(&p, text).unwrap();
        p
    }

    /// A self-signed P-256 certificate and key named `name.crt` / `name.key`, key mode 0600.
    fn cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let (crt, key) = (self.path(&format!("{name}.crt")), self.path(&format!("{name}.key")));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .args(["-nodes", "-days", "1", "-subj", "/CN=example.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("the check tests need the openssl CLI (Debian package openssl)");
        assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
        chmod(&key, 0o600);
        (crt, key)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn cert_section(names: &str, crt: &Path, key: &Path) -> String {
    format!(
        "[[tls.certs]]\nnames = [{names:?}]\ncert = {:?}\nkey = {:?}\n",
        crt.display().to_string(),
        key.display().to_string()
    )
}

/// `outpost check --config FILE [extra]`: (exit code, stdout, stderr).
fn check(config: &Path, extra: &[&str]) -> (i32, String, String) {
    check_as(None, config, extra)
}

fn check_as(user: Option<&str>, config: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([&format!("--reuid={u}"), "--regid=nogroup", "--clear-groups", "--", BIN]);
            c
        }
        None => Command::new(BIN),
    };
    let out = cmd.arg("check").arg("--config").arg(config).args(extra).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts exit 1 and a problem line containing each of `wanted`.
#[track_caller]
fn assert_problems(config: &Path, (code, stdout, stderr): (i32, String, String), wanted: &[&str]) {
    let text = fs::read_to_string(config).unwrap_or_default();
    assert_eq!(code, 1, "exit code for\n{text}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(!stdout.contains("ok"), "stdout says ok for\n{text}\n{stdout}");
    for w in wanted {
        assert!(
            stderr.lines().any(|l| l.contains(w)),
            "no problem line with {w:?} for\n{text}\nstderr:\n{stderr}"
        );
    }
}

#[test]
fn a_good_config_is_ok() {
    let d = Dir::new("good");
    let (crt, key) = d.cert("a");
    let url_file = d.path("store-url");
    fs::write(&url_file, "postgres://outpost:pw@127.0.0.1:1/outpost\n").unwrap();
    chmod(&url_file, 0o600);
    let cfg = d.config(&format!(
        "{}\n[store]\nurl_file = {:?}\n",
        cert_section("example.test", &crt, &key),
        url_file.display().to_string()
    ));
    let (code, stdout, stderr) = check(&cfg, &[]);
    assert_eq!((code, stdout.trim()), (0, "ok"), "stderr: {stderr}");
    assert!(stderr.is_empty(), "a good config printed on stderr: {stderr}");
    // Nothing was written where `outpost run` keeps its state.
    assert!(!d.path("data").exists(), "check created the data directory");
}

#[test]
fn the_example_config_is_ok() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("outpost.example.toml");
    let d = Dir::new("example");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&example)
        .current_dir(&d.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "outpost check on the example failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn a_config_that_does_not_parse() {
    let d = Dir::new("parse");
    let cfg = d.config("listne = 1\n");
    assert_problems(&cfg, check(&cfg, &[]), &["config:", "listne"]);
    let missing = d.path("nope.toml");
    assert_problems(&missing, check(&missing, &[]), &["config:"]);
}

#[test]
fn a_key_that_is_not_the_certificates() {
    let d = Dir::new("mismatch");
    let (crt_a, _) = d.cert("a");
    let (_, key_b) = d.cert("b");
    let cfg = d.config(&cert_section("example.test", &crt_a, &key_b));
    assert_problems(&cfg, check(&cfg, &[]), &["tls certificate [\"example.test\"]"]);
}

#[test]
fn a_missing_certificate_and_a_missing_key() {
    let d = Dir::new("missing");
    let (crt, key) = d.cert("a");
    let cfg = d.config(&format!(
        "{}{}",
        cert_section("one.test", &d.path("gone.crt"), &key),
        cert_section("two.test", &crt, &d.path("gone.key"))
    ));
    let out = check(&cfg, &[]);
    assert_problems(&cfg, out.clone(), &["one.test", "two.test", "gone.key"]);
    // One line per problem: two certificates, and the missing key as a secret file.
    assert_eq!(out.2.lines().filter(|l| !l.starts_with("outpost:")).count(), 3, "{}", out.2);
}

#[test]
fn a_world_readable_key() {
    let d = Dir::new("readable");
    let (crt, key) = d.cert("a");
    chmod(&key, 0o644);
    let cfg = d.config(&cert_section("example.test", &crt, &key));
    assert_problems(&cfg, check(&cfg, &[]), &["readable by every user (mode 644)", "chmod o-r"]);
}

#[test]
fn a_secret_this_user_cannot_read() {
    let d = Dir::new("unreadable");
    chmod(&d.0, 0o755);
    let secret = d.path("reserve.secret");
    fs::write(&secret, [7u8; 32]).unwrap();
    chmod(&secret, 0o600);
    let cfg = d.config(&format!(
        "[reserve]\nhost = \"reserve.test\"\nsecret_file = {:?}\n",
        secret.display().to_string()
    ));
    chmod(&cfg, 0o644);
    // As nobody: the secret is root's. Its data directory is not nobody's either.
    let out = check_as(Some("nobody"), &cfg, &[]);
    assert_problems(&cfg, out, &["[reserve] secret_file", "not readable by this user"]);
}

#[test]
fn a_data_directory_this_user_cannot_write() {
    let d = Dir::new("datadir");
    chmod(&d.0, 0o755);
    let cfg = d.config("");
    chmod(&cfg, 0o644);
    let out = check_as(Some("nobody"), &cfg, &[]);
    assert_problems(&cfg, out, &["data_dir", "not writable by this user"]);
}

#[test]
fn an_admin_token_others_can_read() {
    let d = Dir::new("token");
    fs::create_dir_all(d.path("data")).unwrap();
    let token = d.path("data/admin-token");
    fs::write(&token, format!("{}\n", "a".repeat(64))).unwrap();
    chmod(&token, 0o640);
    let cfg = d.config("");
    assert_problems(&cfg, check(&cfg, &[]), &["admin token", "readable by others", "chmod 600"]);
}

#[test]
fn store_urls() {
    let d = Dir::new("store");
    let cfg = d.config("[store]\nurl = \"mysql://db/outpost\"\n");
    assert_problems(&cfg, check(&cfg, &[]), &["store:", "unsupported store url"]);
    let cfg = d.config("[store]\nurl = \"postgres://outpost:hunter2@db:notaport/outpost\"\n");
    let out = check(&cfg, &[]);
    assert!(!out.2.contains("hunter2"), "the password was printed: {}", out.2);
    assert_problems(&cfg, out, &["store:", "invalid PostgreSQL url"]);
    let cfg = d.config(&format!(
        "[store]\nurl_file = {:?}\n",
        d.path("no-such-file").display().to_string()
    ));
    assert_problems(&cfg, check(&cfg, &[]), &["[store] url_file", "cannot read url_file"]);
    let cfg = d.config("[store]\npool_size = 0\n");
    assert_problems(&cfg, check(&cfg, &[]), &["pool_size"]);
}

#[test]
fn connect_reaches_postgresql_only_when_asked() {
    // Port 1 on loopback: nothing listens, the connect is refused at once.
    let d = Dir::new("connect");
    let cfg = d.config("[store]\nurl = \"postgres://outpost:hunter2@127.0.0.1:1/outpost\"\n");
    let (code, stdout, stderr) = check(&cfg, &[]);
    assert_eq!((code, stdout.trim()), (0, "ok"), "without --connect nothing connects: {stderr}");
    let out = check(&cfg, &["--connect"]);
    assert!(!out.2.contains("hunter2"), "the password was printed: {}", out.2);
    assert_problems(&cfg, out, &["cannot connect to PostgreSQL at postgres://outpost:***@"]);
}

#[test]
fn connect_succeeds_against_a_real_postgresql() {
    let pg = outpost_store::testing::TestPostgres::start();
    let d = Dir::new("connect-ok");
    let cfg = d.config(&format!("[store]\nurl = {:?}\n", pg.url()));
    let (code, stdout, stderr) = check(&cfg, &["--connect"]);
    assert_eq!((code, stdout.trim()), (0, "ok"), "stderr: {stderr}");
}

#[test]
fn routes_and_sections_that_do_not_build() {
    let d = Dir::new("routes");
    let cfg = d.config("[[routes]]\nhost = \"*\"\npath = \"/\"\nhandler = \"nosuch\"\n");
    assert_problems(&cfg, check(&cfg, &[]), &["routes:", "unknown handler \"nosuch\""]);
    let cfg = d.config("[nosuch]\nx = 1\n");
    assert_problems(&cfg, check(&cfg, &[]), &["routes:", "unknown section [nosuch]"]);
    // A shared store needs the reservation secret in a file every node has.
    let cfg = d.config(
        "[store]\nurl = \"postgres://outpost@127.0.0.1:1/outpost\"\n[reserve]\nhost = \"r.test\"\n",
    );
    assert_problems(&cfg, check(&cfg, &[]), &["[reserve]: secret_file is required"]);
}
