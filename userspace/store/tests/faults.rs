//! Faults: what opening the store says when it cannot, and what operations do while
//! PostgreSQL restarts under them.

mod common;

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::Harness;
use outpost_store::{
    testing::{TempDir, TestPostgres},
    Store, StoreConfig, StoreError,
};

const SECRET: &str = "hunter2-not-for-logs";

fn pg_cfg(url: String, connect_timeout_ms: u64) -> StoreConfig {
    StoreConfig { url: Some(url), connect_timeout_ms, ..StoreConfig::default() }
}

/// Opening must fail, within `limit`; returns the error.
fn open_fails(cfg: &StoreConfig, dir: &std::path::Path, limit: Duration) -> StoreError {
    let started = Instant::now();
    let err = Store::open(cfg, dir).expect_err("open succeeded");
    let took = started.elapsed();
    eprintln!("open failed after {took:?}: {err}");
    assert!(took <= limit, "open took {took:?} to fail (limit {limit:?}): {err}");
    let shown = err.to_string();
    assert!(!shown.contains(SECRET), "password in error: {shown}");
    assert!(!format!("{err:?}").contains(SECRET), "password in Debug: {err:?}");
    assert!(!shown.contains('\n'), "error is not one line: {shown}");
    err
}

#[test]
fn postgres_refusing_connections_fails_fast_naming_the_url() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = TempDir::new("outpost-store-fault");
    let url = format!("postgres://outpost:{SECRET}@127.0.0.1:{port}/outpost");
    let err = open_fails(&pg_cfg(url, 1000), dir.path(), Duration::from_millis(1500));
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(shown.contains(&format!("postgres://outpost:***@127.0.0.1:{port}/outpost")), "{shown}");
    assert!(shown.to_lowercase().contains("refused"), "says what failed: {shown}");
}

#[test]
fn postgres_silent_server_fails_within_connect_timeout() {
    // Accepts TCP (the kernel's backlog) and never says a word: the startup handshake hangs.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = TempDir::new("outpost-store-fault");
    let url = format!("postgres://outpost:{SECRET}@127.0.0.1:{port}/outpost");
    let err = open_fails(&pg_cfg(url, 800), dir.path(), Duration::from_millis(1800));
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(shown.contains(&format!("postgres://outpost:***@127.0.0.1:{port}/outpost")), "{shown}");
    drop(silent);
}

#[test]
fn postgres_wrong_password_and_url_file() {
    let pg = common::shared_pg();
    let dir = TempDir::new("outpost-store-fault");
    let bad = format!("postgres://outpost:{SECRET}@127.0.0.1:{}/outpost", pg.port());
    let err = open_fails(&pg_cfg(bad, 3000), dir.path(), Duration::from_secs(4));
    assert!(err.to_string().contains("password authentication failed"), "{err}");

    // The URL from a file (the password stays out of outpost.toml).
    let file = dir.path().join("store-url");
    std::fs::write(&file, format!("{}\n", pg.url())).unwrap();
    let cfg = StoreConfig { url_file: Some(file), ..StoreConfig::default() };
    let store = Store::open(&cfg, dir.path()).unwrap_or_else(|e| panic!("url_file: {e}"));
    assert!(!store.describe().contains(pg.password()), "{}", store.describe());
    let missing = StoreConfig { url_file: Some(dir.path().join("nope")), ..StoreConfig::default() };
    let err = open_fails(&missing, dir.path(), Duration::from_secs(1));
    assert!(matches!(err, StoreError::Config(_)) && err.to_string().contains("nope"), "{err}");
}

#[test]
fn sqlite_directory_that_cannot_be_created() {
    // A path under a regular file: no directory can be made there, root or not.
    let dir = TempDir::new("outpost-store-fault");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let data_dir = file.join("data");
    let err = open_fails(&StoreConfig::default(), &data_dir, Duration::from_secs(2));
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&data_dir.display().to_string()), "names the path: {err}");
}

#[test]
fn sqlite_second_open_is_locked() {
    let h = Harness::sqlite();
    let first = h.open();
    let err = open_fails(&StoreConfig::default(), h.dir.path(), Duration::from_secs(2));
    let db = h.db_path().canonicalize().unwrap();
    assert_eq!(
        err,
        StoreError::Locked(format!(
            "the store {} is in use by another outpost process",
            db.display()
        ))
    );
    drop(first);
    drop(h.open());
    // Free again as soon as the drop returns, even when it lands in a sweep: the sweeper's
    // first runs at open, here through 200,000 expired values (rounds of 5,000, each followed
    // by a pause as long).
    h.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) \
         INSERT INTO kv (ns, key, value, expires_at) SELECT 'gone', i, x'00', 1 FROM n",
    );
    let sweeping = h.open();
    std::thread::sleep(Duration::from_millis(100));
    drop(sweeping);
    drop(h.open());
}

#[test]
fn sqlite_held_by_another_process_is_locked() {
    let h = Harness::sqlite();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-store-load"))
        .arg(h.dir.path())
        .args(["-", "1", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start outpost-store-load");
    // Wait for its first acknowledged write: by then it holds the lock.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read");
    assert!(!line.is_empty(), "the load process wrote nothing");
    let err = Store::open(&StoreConfig::default(), h.dir.path()).expect_err("opened a held store");
    assert!(
        matches!(&err, StoreError::Locked(m) if m.contains("in use by another outpost process")),
        "{err:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The lock dies with its process.
    drop(h.open());
}

#[test]
fn sqlite_corrupt_file() {
    let h = Harness::sqlite();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(h.db_path(), garbage).unwrap();
    let err = open_fails(&StoreConfig::default(), h.dir.path(), Duration::from_secs(2));
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let db = h.db_path().canonicalize().unwrap();
    assert!(err.to_string().contains(&db.display().to_string()), "names the path: {err}");
    assert!(err.to_string().contains("not an SQLite database"), "{err}");
}

/// What the load saw: (when, how long, result kind) per operation.
type Log = Vec<(Instant, Duration, &'static str)>;

#[test]
fn postgres_restart_under_load() {
    let pg = Arc::new(TestPostgres::start());
    let dir = TempDir::new("outpost-store-restart");
    let timeout = Duration::from_millis(1000);
    let cfg = StoreConfig {
        url: Some(pg.url()),
        timeout_ms: 1000,
        connect_timeout_ms: 1000,
        pool_size: 8,
        ..StoreConfig::default()
    };
    let store = Store::open(&cfg, dir.path()).expect("open");
    // The load runs on a runtime of its own, as the proxy's would.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (store, stopped) = (store.clone(), stopped.clone());
        tasks.push(rt.spawn(async move {
            let mut log: Log = Vec::new();
            let mut n = 0u64;
            while !*stopped.borrow() {
                n += 1;
                let key = format!("{t}-{n}");
                let started = Instant::now();
                let r = match n % 3 {
                    0 => store.put("load", &key, b"v", None).await.map(|_| ()),
                    1 => store.get("load", &key).await.map(|_| ()),
                    _ => store.insert("load", &key, b"v", None).await.map(|_| ()),
                };
                let kind = match r {
                    Ok(()) => "ok",
                    Err(StoreError::Unavailable(_)) => "unavailable",
                    Err(StoreError::Timeout) => "timeout",
                    Err(e) => panic!("op {key} failed with {e:?}: expected Unavailable or Timeout"),
                };
                log.push((started, started.elapsed(), kind));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            log
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let stopped_at = Instant::now();
    pg.stop();
    let down_from = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let up_at = Instant::now();
    pg.start_again();
    let restarted = Instant::now();
    // Back within a few seconds, with no help from us.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = rt.block_on(store.put("probe", "k", b"v", None));
        if ok.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the store did not recover after the restart: {ok:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.send(true).unwrap();
    let logs: Vec<Log> = tasks.into_iter().map(|t| rt.block_on(t).expect("load task")).collect();
    let all: Vec<_> = logs.iter().flatten().collect();

    let slowest = all.iter().map(|(_, d, _)| *d).max().unwrap();
    assert!(
        // A margin for a loaded machine's scheduling, as in failover.rs.
        slowest <= timeout + Duration::from_millis(1500),
        "an operation took {slowest:?}, beyond the {timeout:?} timeout"
    );
    // Finished before the stop began (one in flight at that moment may fail, rightly).
    let before: Vec<_> = all.iter().filter(|(t, d, _)| *t + *d < stopped_at).collect();
    let failed: Vec<_> = before.iter().filter(|(_, _, k)| *k != "ok").collect();
    assert!(!before.is_empty() && failed.is_empty(), "before the stop: {failed:?}");
    let down: Vec<_> = all.iter().filter(|(t, d, _)| *t > down_from && *t + *d < up_at).collect();
    assert!(down.len() > 20, "too few operations while down: {}", down.len());
    let ok_while_down = down.iter().filter(|(_, _, k)| *k == "ok").count();
    assert_eq!(ok_while_down, 0, "operations succeeded while PostgreSQL was down");
    let after: Vec<_> = all
        .iter()
        .filter(|(t, _, _)| *t > restarted + recovered + Duration::from_millis(200))
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|(_, _, k)| *k == "ok"),
        "after recovery every operation succeeds: {:?}",
        after.iter().filter(|(_, _, k)| *k != "ok").take(5).collect::<Vec<_>>()
    );
    eprintln!(
        "restart under load: {} ops, {} while down ({} unavailable, {} timeout), recovered {recovered:?} after start, slowest {slowest:?}",
        all.len(),
        down.len(),
        down.iter().filter(|(_, _, k)| *k == "unavailable").count(),
        down.iter().filter(|(_, _, k)| *k == "timeout").count(),
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_operation_stuck_behind_a_lock_times_out() {
    let h = Harness::postgres("stuck");
    // A small pool, so that the concurrent writes below queue and go out in batches.
    let cfg = StoreConfig { timeout_ms: 500, pool_size: 2, ..h.cfg() };
    let store = h.open_with(cfg);
    store.put("n", "k", b"v", None).await.expect("put");
    let (pg, db, _) = h.pg.as_ref().expect("postgres");
    // Another session holds the table until the checks are done (it is cancelled then).
    let mut locker = Command::new(pg.bin_dir().join("psql"))
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "-d", db, "-X", "-q"])
        .args(["-c", "BEGIN; LOCK TABLE kv; SELECT pg_sleep(30); COMMIT;"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start psql");
    let asked = Instant::now();
    let holders = "SELECT count(*) FROM pg_locks WHERE relation = 'kv'::regclass \
                   AND mode = 'AccessExclusiveLock' AND granted";
    loop {
        if h.scalar(holders) == 1 {
            break;
        }
        assert!(asked.elapsed() < Duration::from_secs(10), "psql never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Bounds below: the timeout and a margin for a loaded machine, far below what waiting for
    // the lock would take.
    let started = Instant::now();
    let r = store.get("n", "k").await;
    let took = started.elapsed();
    assert_eq!(r, Err(StoreError::Timeout), "a read behind the lock");
    assert!(took < Duration::from_millis(2000), "timed out after {took:?} (timeout 500 ms)");
    // Writes behind the lock, many at once: batched, and bounded all the same.
    let started = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..30 {
        let s = store.clone();
        writes.spawn(async move { s.put("n", &format!("w{i}"), b"v", None).await });
    }
    while let Some(r) = writes.join_next().await {
        assert_eq!(r.expect("task"), Err(StoreError::Timeout), "a write behind the lock");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3000), "writes timed out after {took:?}");
    // The lock is still held, yet the batches stuck behind it gave their connections up: the
    // outbox (another table) is served from the pool of two.
    store.enqueue("mail", b"m").await.expect("enqueue while kv is locked");
    assert_eq!(h.scalar(holders), 1, "the lock was gone before the checks ended");
    // Done: the locker's sleep is cancelled, its transaction fails and lets the table go.
    let cancel = "SELECT coalesce(sum(pg_cancel_backend(pid)::int), 0) FROM pg_stat_activity \
                  WHERE query LIKE '%LOCK TABLE kv%' AND pid <> pg_backend_pid()";
    assert_eq!(h.scalar(cancel), 1, "the locker's session was not found");
    locker.wait().expect("psql");
    // Connections cut off mid-query were dropped, not reused: everything works.
    for i in 0..30 {
        assert_eq!(store.get("n", "k").await, Ok(Some(b"v".to_vec())));
        store.put("n", &format!("w{i}"), b"v", None).await.expect("put after the lock");
    }
    let batches = store.metrics().commit_batch_mean().unwrap_or(0.0);
    assert!(batches > 1.0, "the writes were not batched ({batches:.1} per commit)");
}
