//! Test support (feature `testing`): a real PostgreSQL started by the test itself, and
//! temporary directories. Nothing needs to run beforehand: the binaries come from Debian's
//! `postgresql` package (`cargo xtask setup` installs it), the cluster lives in a fresh
//! directory, listens on 127.0.0.1 on a free port, and is stopped by PID and removed on drop.
//!
//! Works as root (CI): initdb and postgres refuse to run as root, so they run as the
//! `postgres` system user (the directory is chowned to it); as any other user they run as
//! that user.
//!
//! [`Replicated`] is a primary with a synchronous standby streaming from it, for failover
//! tests: SIGKILL the primary, promote the standby.

use std::{
    fs::File,
    io::Read as _,
    net::TcpListener,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// A directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Who runs initdb and postgres: the `postgres` user when we are root, else ourselves.
#[derive(Clone, Copy, Debug)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A PostgreSQL server of the test's own. See the module docs.
pub struct TestPostgres {
    bin: PathBuf,
    /// Holds `data/` (the cluster), `sock/` (its Unix socket) and `log`.
    dir: TempDir,
    port: u16,
    password: String,
    run_as: Option<RunAs>,
    /// The network namespace the server runs in (`None`: the test's own) and the address it
    /// listens on there.
    netns: Option<String>,
    listen: String,
    /// More `-c name=value` settings for the server (see [`start_with`](Self::start_with)).
    settings: Vec<String>,
    child: Mutex<Option<Child>>,
}

/// Debug leaves the password out, as everything else does.
impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPostgres")
            .field("bin", &self.bin)
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Why a server did not start.
struct StartError {
    /// Its port was taken meanwhile: another port may do.
    port_taken: bool,
    message: String,
}

/// How long a starting server may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(60);

impl TestPostgres {
    /// initdb, start, wait until it accepts connections, create role and database `outpost`
    /// (the role with a random password). Panics with what went wrong.
    pub fn start() -> TestPostgres {
        TestPostgres::start_on(None, "127.0.0.1", &[])
    }

    /// As [`start`](Self::start), with more server settings (`name=value`, as `postgres -c`
    /// takes them), such as `shared_preload_libraries=pg_stat_statements` for a diagnostic.
    pub fn start_with(settings: &[&str]) -> TestPostgres {
        TestPostgres::start_on(None, "127.0.0.1", settings)
    }

    /// As [`start`](Self::start), but inside network namespace `netns` (through `nsenter`),
    /// listening on `addr` there, for clients in other namespaces (a fleet of edge nodes).
    /// Setup still goes through the Unix socket, which the file system shares.
    pub fn start_in_namespace(netns: &str, addr: &str) -> TestPostgres {
        TestPostgres::start_on(Some(netns.to_owned()), addr, &[])
    }

    fn start_on(netns: Option<String>, listen: &str, settings: &[&str]) -> TestPostgres {
        let bin = find_bin();
        let run_as = run_as();
        let dir = TempDir::new("outpost-pg");
        for sub in ["data", "sock"] {
            std::fs::create_dir(dir.path().join(sub)).expect("create cluster dirs");
        }
        if let Some(u) = run_as {
            chown_tree(dir.path(), u);
        }
        std::fs::set_permissions(dir.path().join("data"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod data dir");
        let password = random_hex(16);
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--auth=trust", "--no-sync"])
            .current_dir(dir.path());
        let out = as_user(&mut initdb, run_as)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("initdb").display()));
        assert!(
            out.status.success(),
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // TCP connections need the password; the Unix socket, for setup, is trusted. md5, not
        // scram-sha-256: SCRAM's 4096 PBKDF2 rounds take ~100 ms per connection in an
        // unoptimized (test) build of the client, on the store's runtime threads, and a burst
        // on a cold pool then times out for reasons production (release) never sees.
        std::fs::write(
            dir.path().join("data/pg_hba.conf"),
            format!(
                "local all all trust\nlocal replication all trust\n\
                 host all all 127.0.0.1/32 md5\nhost all all {listen}/24 md5\n"
            ),
        )
        .expect("write pg_hba.conf");
        if let Some(u) = run_as {
            chown_tree(&dir.path().join("data/pg_hba.conf"), u);
        }
        let mut pg = TestPostgres {
            bin,
            port: free_port(),
            dir,
            password,
            run_as,
            netns,
            listen: listen.to_owned(),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            child: Mutex::new(None),
        };
        // The port was free when the kernel named it; another test starting a server at the
        // same moment may take it first. Then try another.
        for attempt in 1.. {
            match pg.try_spawn_server() {
                Ok(()) => break,
                Err(e) if e.port_taken && attempt < 5 => pg.port = free_port(),
                Err(e) => panic!("{}", e.message),
            }
        }
        pg.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5'; CREATE ROLE outpost LOGIN PASSWORD '{}'",
                pg.password
            ),
        );
        pg.psql("postgres", "CREATE DATABASE outpost OWNER outpost");
        pg
    }

    /// `postgres://outpost:<password>@<address>:<port>/outpost` (127.0.0.1 unless started in a
    /// namespace).
    pub fn url(&self) -> String {
        self.url_for("outpost")
    }

    /// The URL of database `db` (as the `outpost` role).
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://outpost:{}@{}:{}/{db}", self.password, self.listen, self.port)
    }

    /// Creates database `db` owned by `outpost` and returns its URL: tests sharing one server
    /// each get a database of their own.
    pub fn create_database(&self, db: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\" OWNER outpost"));
        self.url_for(db)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The directory of the PostgreSQL binaries (pgbench, psql).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server's Unix socket directory (superuser `postgres` connects there, trusted).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Runs `sql` as superuser in database `db` through psql (several statements run as one
    /// transaction); returns its unaligned output. Panics with psql's error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Fast shutdown (SIGINT to the postmaster) and wait for it to exit.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = child.take() {
            stop_child(c, libc::SIGINT);
        }
    }

    /// SIGKILL to the whole server, postmaster and backends at once, as a power cut would;
    /// returns once every one of them is gone, so [`TestPostgres::start_again`] finds no
    /// leftover holding the old shared memory.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = child.take() else { return };
        let backends = children_of(c.id());
        stop_child(c, libc::SIGKILL);
        for pid in &backends {
            // SAFETY: kill(2); a backend that already exited may have had its PID reused only
            // in theory (we signal within milliseconds of listing it).
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        let started = Instant::now();
        while backends.iter().any(|pid| alive(*pid)) && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn start_again(&self) {
        if let Err(e) = self.try_spawn_server() {
            panic!("{}", e.message);
        }
    }

    fn try_spawn_server(&self) -> Result<(), StartError> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(child.is_none(), "TestPostgres: the server is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .expect("open postgres log");
        let postgres = self.bin.join("postgres");
        let mut cmd = match (&self.netns, self.run_as) {
            // nsenter needs root to enter the namespace; setpriv drops to postgres after it.
            // Both exec: the child's PID is the postmaster's, so signals reach it.
            (Some(ns), run_as) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"));
                if let Some(u) = run_as {
                    c.arg("setpriv")
                        .arg(format!("--reuid={}", u.uid))
                        .arg(format!("--regid={}", u.gid))
                        .args(["--clear-groups", "--"])
                        .env("HOME", "/var/lib/postgresql");
                }
                c.arg(&postgres);
                c
            }
            (None, _) => Command::new(&postgres),
        };
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-h", &self.listen, "-k"])
            .arg(self.socket_dir())
            // Room for two stores' pools, pgbench at 256 clients beside a store holding as
            // many connections, and the tests' psql.
            .args(["-c", "max_connections=600", "-c", "shared_buffers=128MB"])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(self.settings.iter().flat_map(|s| ["-c", s]))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let run_as = if self.netns.is_some() { None } else { self.run_as };
        let mut c = as_user(&mut cmd, run_as).spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", self.bin.join("postgres").display())
        });
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                let log = self.log_tail();
                let port_taken = ["could not bind", "already in use", "another postmaster"]
                    .iter()
                    .any(|m| log.lines().rev().take(10).any(|l| l.contains(m)));
                let message = format!("postgres exited at start ({status}); log:\n{log}");
                return Err(StartError { port_taken, message });
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if started.elapsed() > START_LIMIT {
                stop_child(c, libc::SIGKILL);
                let message = format!(
                    "postgres did not accept connections within {START_LIMIT:?}; log:\n{}",
                    self.log_tail()
                );
                return Err(StartError { port_taken: false, message });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *child = Some(c);
        Ok(())
    }

    /// The last lines of the server's log, for panic messages.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("log")) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A primary and a standby streaming from it, each a [`TestPostgres`] on 127.0.0.1 with a port
/// of its own. The standby is synchronous (`synchronous_standby_names = '*'` on the primary,
/// `synchronous_commit = on` on both): the primary acknowledges a commit only once the standby
/// has flushed it, so whatever a client saw committed survives losing the primary.
pub struct Replicated {
    pub primary: TestPostgres,
    pub standby: TestPostgres,
}

impl Replicated {
    /// Starts the primary (role and database `outpost`, as [`TestPostgres::start`]), clones
    /// it with `pg_basebackup -R`, starts the standby, makes it synchronous and waits until the
    /// primary reports it so. Panics with what went wrong.
    pub fn start() -> Replicated {
        let primary = TestPostgres::start();
        let standby = primary.standby();
        // Only now: with no standby, every commit would wait for one. On the primary alone
        // (postgresql.auto.conf was copied before): once promoted, the standby waits for none.
        primary.psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = '*'");
        primary.psql("postgres", "SELECT pg_reload_conf()");
        let started = Instant::now();
        loop {
            let sync = primary.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            );
            if sync == "1" {
                break;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "the standby did not become synchronous within {START_LIMIT:?} ({sync} sync); \
                 standby log:\n{}",
                standby.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Replicated { primary, standby }
    }

    /// `postgres://outpost:<password>@127.0.0.1:<primary>,127.0.0.1:<standby>/outpost
    /// ?target_session_attrs=read-write`: whichever of the two takes writes.
    pub fn url(&self) -> String {
        format!(
            "postgres://outpost:{}@127.0.0.1:{},127.0.0.1:{}/outpost?target_session_attrs=read-write",
            self.primary.password,
            self.primary.port,
            self.standby.port
        )
    }

    /// `pg_ctl promote -w` on the standby: returns once it takes writes.
    pub fn promote_standby(&self) {
        self.standby.promote();
    }
}

impl TestPostgres {
    /// A hot standby of this server: `pg_basebackup -R -X stream` over the Unix socket, then
    /// started on a port of its own.
    fn standby(&self) -> TestPostgres {
        let dir = TempDir::new("outpost-pg-standby");
        for sub in ["data", "sock"] {
            std::fs::create_dir(dir.path().join(sub)).expect("create standby dirs");
        }
        if let Some(u) = self.run_as {
            chown_tree(dir.path(), u);
        }
        std::fs::set_permissions(dir.path().join("data"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod standby data dir");
        let mut backup = Command::new(self.bin.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(dir.path().join("data"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .current_dir(dir.path());
        let out = as_user(&mut backup, self.run_as).output().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}", self.bin.join("pg_basebackup").display())
        });
        assert!(
            out.status.success(),
            "pg_basebackup failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut standby = TestPostgres {
            bin: self.bin.clone(),
            dir,
            port: free_port(),
            password: self.password.clone(),
            run_as: self.run_as,
            netns: None,
            listen: self.listen.clone(),
            settings: self.settings.clone(),
            child: Mutex::new(None),
        };
        for attempt in 1.. {
            match standby.try_spawn_server() {
                Ok(()) => break,
                Err(e) if e.port_taken && attempt < 5 => standby.port = free_port(),
                Err(e) => panic!("standby: {}", e.message),
            }
        }
        standby
    }

    /// `pg_ctl promote -w`: a standby leaves recovery and takes writes. Panics if it does not
    /// within 30 s.
    pub fn promote(&self) {
        let mut promote = Command::new(self.bin.join("pg_ctl"));
        promote
            .arg("promote")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "30"])
            .current_dir(self.dir.path());
        let out = as_user(&mut promote, self.run_as)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.join("pg_ctl").display()));
        assert!(
            out.status.success(),
            "pg_ctl promote failed ({}): {}{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate shutdown: nothing here needs a checkpoint, and a test should not wait.
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = child.take() {
            stop_child(c, libc::SIGQUIT);
        }
    }
}

/// Signals `c` by PID and waits for it (SIGKILL after 30 s).
fn stop_child(mut c: Child, sig: i32) {
    let pid = c.id() as libc::pid_t;
    // SAFETY: kill(2) on the PID of a child we have not reaped yet, so it cannot be reused.
    unsafe { libc::kill(pid, sig) };
    let started = Instant::now();
    loop {
        match c.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if started.elapsed() > Duration::from_secs(30) => {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// PIDs whose parent is `ppid` (from /proc).
fn children_of(ppid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the command (which may hold spaces): state, then ppid.
            let parent: u32 =
                stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
            (parent == ppid).then_some(pid)
        })
        .collect()
}

/// Running (not gone, not a zombie waiting for whoever adopted it to reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

/// The newest `/usr/lib/postgresql/<major>/bin` that has initdb and postgres.
fn find_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((major, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: install Debian's postgresql \
             (cargo xtask setup does)"
        ),
    }
}

fn run_as() -> Option<RunAs> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = c"postgres";
    // SAFETY: getpwnam with a NUL-terminated name; the result is read at once, before any
    // other getpw* call on this thread could overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, PostgreSQL must run as the `postgres` user, which does not exist: \
         install Debian's postgresql (cargo xtask setup does)"
    );
    // SAFETY: non-null pointer from getpwnam, see above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some(RunAs { uid, gid })
}

fn as_user(cmd: &mut Command, run_as: Option<RunAs>) -> &mut Command {
    match run_as {
        // std drops supplementary groups (setgroups(0)) when a root parent sets the uid.
        Some(u) => cmd.uid(u.uid).gid(u.gid).env("HOME", "/var/lib/postgresql"),
        None => cmd,
    }
}

fn chown_tree(path: &Path, u: RunAs) {
    std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            chown_tree(&entry.path(), u);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1 (the kernel's choice).
/// A port that was free a moment ago, well below the kernel's ephemeral range: a server may
/// be stopped and started again on its port (`start_again`), and a port from `bind(:0)` could
/// be taken meanwhile as the local port of any outgoing connection on the machine. Below the
/// range nothing takes a port unless asked: 8192..16384 with the default range, the quarter
/// below the one the testkit hands to edges and origins, so that the two never meet; a clash
/// with another test process is what the first start's retry is for.
fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (first / 4, first / 2);
    let span = usize::from(high - low);
    // Each process starts elsewhere in the range.
    let start = (std::process::id() as usize).wrapping_mul(104_729);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `sql` (any number of statements) on the embedded store of `data_dir`, straight through
/// SQLite, syncing only at the end: for benchmarks that bulk-load a store no edge has open, as
/// a backup restore would. Ends with a checkpoint that empties the WAL and an fsync of the
/// database, so that what comes next does not wait for the kernel to write the load back.
/// Panics with SQLite's error.
pub fn sqlite_bulk(data_dir: &Path, sql: &str) {
    let path = data_dir.join("outpost.db");
    let conn = rusqlite::Connection::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;")
        .and_then(|()| conn.execute_batch(sql))
        .and_then(|()| conn.execute_batch("PRAGMA synchronous=FULL"))
        .and_then(|()| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
        .unwrap_or_else(|e| panic!("bulk SQL on {} failed: {e}", path.display()));
    drop(conn);
    File::open(&path)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("cannot sync {}: {e}", path.display()));
}

/// The rows of one query on the embedded store of `data_dir` (read-only), each column as text
/// (NULL as an empty string): `EXPLAIN QUERY PLAN`, counts.
pub fn sqlite_rows(data_dir: &Path, sql: &str) -> Vec<Vec<String>> {
    use rusqlite::types::ValueRef;
    let path = data_dir.join("outpost.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => String::new(),
                        ValueRef::Integer(v) => v.to_string(),
                        ValueRef::Real(v) => v.to_string(),
                        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into(),
                    })
                })
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
    rows.unwrap_or_else(|e| panic!("{sql:?}: {e}"))
}
