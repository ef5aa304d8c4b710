//! Failover: a store on a multi-host URL carries on when its primary dies and a synchronous
//! standby is promoted, losing nothing it acknowledged; and how it picks a host.

use std::{
    collections::{BTreeMap, HashMap},
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use outpost_store::{
    testing::{Replicated, TempDir, TestPostgres},
    Inserted, Op, Store, StoreConfig, StoreError, TxnOutcome,
};

/// Single-use values seeded before the load; two takers go through them in the same order.
const TOKENS: usize = 4000;
/// Allowed beyond `timeout_ms` for an operation to come back (scheduling on a busy machine:
/// the slowest of thousands of operations, while PostgreSQL restarts beside them). Far below
/// what an unbounded wait on a dead server takes (the kernel's TCP timeouts, minutes).
const MARGIN: Duration = Duration::from_millis(1500);

/// One attempt of one operation, as the load task saw it.
#[derive(Debug)]
struct Attempt {
    started: Instant,
    took: Duration,
    /// "ok", "unavailable" or "timeout" (anything else fails the task).
    kind: &'static str,
}

/// What the load tasks saw, beyond the attempts.
#[derive(Debug, Default)]
struct Seen {
    attempts: Vec<Attempt>,
    /// `names` keys this task inserted (`Inserted::Done`) with its value.
    done: Vec<(String, String)>,
    /// `names` keys this task was refused, with the holder's value the refusal named.
    conflicts: Vec<(String, String)>,
    /// Tokens this task took, with the value it got.
    taken: Vec<(String, String)>,
    /// `orders` keys whose transaction (order + mail) committed, with the mail's outbox id.
    orders: Vec<(String, i64)>,
}

impl Seen {
    /// Logs an attempt; Ok(value) on success, None after an Unavailable or Timeout (outcome
    /// unknown: the caller retries). Any other error fails the test.
    fn log<T>(&mut self, what: &str, started: Instant, r: Result<T, StoreError>) -> Option<T> {
        let took = started.elapsed();
        let (kind, v) = match r {
            Ok(v) => ("ok", Some(v)),
            Err(StoreError::Unavailable(_)) => ("unavailable", None),
            Err(StoreError::Timeout) => ("timeout", None),
            Err(e) => panic!("{what}: {e:?}, expected Unavailable or Timeout"),
        };
        self.attempts.push(Attempt { started, took, kind });
        v
    }
}

fn cfg(url: String) -> StoreConfig {
    StoreConfig {
        url: Some(url),
        timeout_ms: 1000,
        connect_timeout_ms: 1000,
        pool_size: 8,
        ..StoreConfig::default()
    }
}

/// `key|value` rows of a psql query, as a map.
fn rows(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('|').unwrap_or_else(|| panic!("not key|value: {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Two tasks per key sequence race to insert `n<pair>-<seq>`; each retries an attempt whose
/// outcome is unknown until the store answers Done or Conflict.
async fn inserter(store: Store, task: usize, stop: tokio::sync::watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    let mut seq = 0u64;
    'keys: while !*stop.borrow() {
        seq += 1;
        let key = format!("n{}-{seq}", task / 2);
        let value = format!("{task}:{seq}");
        loop {
            let started = Instant::now();
            let r = store.insert("names", &key, value.as_bytes(), None).await;
            match seen.log(&format!("insert {key}"), started, r) {
                Some(Inserted::Done) => seen.done.push((key.clone(), value.clone())),
                Some(Inserted::Conflict { existing }) => {
                    let existing = String::from_utf8(existing).expect("utf-8 value");
                    seen.conflicts.push((key.clone(), existing));
                }
                None if *stop.borrow() => break 'keys,
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
            break;
        }
    }
    seen
}

/// Takes every token in order, each until the store gives a definite answer.
async fn taker(store: Store, stop: tokio::sync::watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    'tokens: for i in 0..TOKENS {
        let key = format!("t{i:05}");
        loop {
            if *stop.borrow() {
                break 'tokens;
            }
            let started = Instant::now();
            let r = store.take("tokens", &key).await;
            match seen.log(&format!("take {key}"), started, r) {
                Some(Some(v)) => {
                    seen.taken.push((key.clone(), String::from_utf8(v).expect("utf-8 token")))
                }
                Some(None) => {}
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    seen
}

/// An order and its mail in one transaction, as the reservation service writes them.
async fn orderer(store: Store, stop: tokio::sync::watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    let mut seq = 0u64;
    while !*stop.borrow() {
        seq += 1;
        let key = format!("o{seq}");
        loop {
            let ops = vec![
                Op::Insert {
                    ns: "orders".into(),
                    key: key.clone(),
                    value: b"o".to_vec(),
                    ttl: None,
                },
                Op::Enqueue { topic: "mail".into(), payload: key.clone().into_bytes() },
            ];
            let started = Instant::now();
            let r = store.txn(ops).await;
            match seen.log(&format!("txn {key}"), started, r) {
                Some(TxnOutcome::Committed(out)) => {
                    let id = out[1].as_deref().expect("enqueue id");
                    let id = i64::from_le_bytes(id.try_into().expect("8-byte id"));
                    seen.orders.push((key.clone(), id));
                }
                // An earlier attempt committed after all (its answer was lost): not acked.
                Some(TxnOutcome::Aborted { .. }) => {}
                None if *stop.borrow() => break,
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

#[test]
fn postgres_failover_to_a_synchronous_standby_loses_nothing() {
    let pair = Replicated::start();
    let (p1, p2) = (pair.primary.port(), pair.standby.port());
    let dir = TempDir::new("outpost-store-failover");
    let timeout = Duration::from_millis(1000);
    let store = Store::open(&cfg(pair.url()), dir.path()).expect("open on the multi-host url");
    assert!(
        store.describe().contains(&format!("@127.0.0.1:{p1},127.0.0.1:{p2}/outpost")),
        "describe names both hosts: {}",
        store.describe()
    );
    assert!(!store.describe().contains(pair.primary.password()), "{}", store.describe());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // The standby first and no target_session_attrs: outpost asks for a server that takes
    // writes by itself, passes the standby over and lands on the primary.
    let reversed = format!(
        "postgres://outpost:{}@127.0.0.1:{p2},127.0.0.1:{p1}/outpost",
        pair.primary.password()
    );
    let shown = cfg(reversed.clone()).ping(Duration::from_secs(2));
    assert!(matches!(&shown, Ok(Some(s)) if s.contains(&format!("127.0.0.1:{p2},"))), "{shown:?}");
    let other = Store::open(&cfg(reversed), dir.path()).expect("open, standby listed first");
    rt.block_on(other.put("probe", "reversed", b"v", None)).expect("write, standby listed first");
    drop(other);
    assert_eq!(
        pair.primary.psql("outpost", "SELECT count(*) FROM kv WHERE ns = 'probe'"),
        "1",
        "the write went to the primary"
    );

    // Single-use values, acknowledged (so on the standby too) before the load starts.
    rt.block_on(async {
        for chunk in (0..TOKENS).collect::<Vec<_>>().chunks(500) {
            let ops = chunk
                .iter()
                .map(|i| Op::Put {
                    ns: "tokens".into(),
                    key: format!("t{i:05}"),
                    value: i.to_string().into_bytes(),
                    ttl: None,
                })
                .collect();
            let r = store.txn(ops).await.expect("seed tokens");
            assert!(matches!(r, TxnOutcome::Committed(_)), "{r:?}");
        }
    });

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(rt.spawn(inserter(store.clone(), t, stopped.clone())));
    }
    for _ in 0..2 {
        tasks.push(rt.spawn(taker(store.clone(), stopped.clone())));
    }
    tasks.push(rt.spawn(orderer(store.clone(), stopped.clone())));

    std::thread::sleep(Duration::from_millis(1500));
    pair.primary.kill();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let promoting = Instant::now();
    pair.promote_standby();
    let promoted = promoting.elapsed();
    // Serving again, by itself, within 5 s of the promotion.
    let back = loop {
        let started = Instant::now();
        let r = rt.block_on(store.put("probe", "after", b"v", None));
        assert!(started.elapsed() <= timeout + MARGIN, "a probe took {:?}", started.elapsed());
        if r.is_ok() {
            break promoting.elapsed();
        }
        assert!(
            promoting.elapsed() < Duration::from_secs(5),
            "the store did not serve within 5 s of the promotion: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let recovered = promoting + back;
    std::thread::sleep(Duration::from_millis(1500));
    stop.send(true).unwrap();
    let seen: Vec<Seen> = tasks
        .into_iter()
        .map(|t| {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), t).await })
                .expect("a load task did not stop within 10 s")
                .expect("load task")
        })
        .collect();
    let attempts: Vec<&Attempt> = seen.iter().flat_map(|s| &s.attempts).collect();

    // Bounded, always.
    let slowest = attempts.iter().map(|a| a.took).max().expect("attempts");
    assert!(slowest <= timeout + MARGIN, "an operation took {slowest:?} (timeout {timeout:?})");
    // Nothing succeeds while there is no primary, and failing is quick enough to be seen many
    // times.
    let outage: Vec<_> =
        attempts.iter().filter(|a| a.started > down && a.started + a.took < promoting).collect();
    assert!(outage.len() > 20, "only {} operations during the outage", outage.len());
    let ok_in_outage = outage.iter().filter(|a| a.kind == "ok").count();
    assert_eq!(ok_in_outage, 0, "operations succeeded with no primary");
    // Once back, everything succeeds.
    let after: Vec<_> =
        attempts.iter().filter(|a| a.started > recovered + Duration::from_millis(200)).collect();
    let failed_after: Vec<_> = after.iter().filter(|a| a.kind != "ok").collect();
    assert!(after.len() > 20, "only {} operations after recovery", after.len());
    assert!(failed_after.is_empty(), "failures after recovery: {failed_after:?}");

    // What the new primary holds.
    let names = rows(
        &pair
            .standby
            .psql("outpost", "SELECT key, convert_from(value, 'UTF8') FROM kv WHERE ns = 'names'"),
    );
    let tokens = rows(&pair.standby.psql("outpost", "SELECT key, '' FROM kv WHERE ns = 'tokens'"));
    let mail = rows(&pair.standby.psql(
        "outpost",
        "SELECT id, convert_from(payload, 'UTF8') FROM outbox WHERE topic = 'mail'",
    ));
    let orders = rows(&pair.standby.psql("outpost", "SELECT key, '' FROM kv WHERE ns = 'orders'"));

    // Every acknowledged insert is there with its value; no name was granted twice, and every
    // refusal named the holder that is there now.
    let mut granted: HashMap<&str, usize> = HashMap::new();
    for (key, value) in seen.iter().flat_map(|s| &s.done) {
        *granted.entry(key).or_default() += 1;
        assert_eq!(names.get(key), Some(value), "acknowledged insert of {key} lost or changed");
    }
    let twice: Vec<_> = granted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "names inserted twice: {twice:?}");
    for (key, holder) in seen.iter().flat_map(|s| &s.conflicts) {
        assert_eq!(names.get(key), Some(holder), "{key}: refused for a holder that is not there");
    }
    // Every token taken at most once, with its own value, and gone.
    let mut takes: HashMap<&str, usize> = HashMap::new();
    for (key, value) in seen.iter().flat_map(|s| &s.taken) {
        *takes.entry(key).or_default() += 1;
        assert_eq!(key[1..].parse::<usize>().unwrap().to_string(), *value, "{key}'s value");
        assert!(!tokens.contains_key(key), "{key} was taken (acknowledged) but is still there");
    }
    let twice: Vec<_> = takes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tokens taken twice: {twice:?}");
    // Every acknowledged order is there, and so is its mail.
    for (key, id) in seen.iter().flat_map(|s| &s.orders) {
        assert!(orders.contains_key(key), "acknowledged order {key} lost");
        assert_eq!(mail.get(&id.to_string()), Some(key), "the mail of order {key} (id {id})");
    }

    let count = |f: fn(&Seen) -> usize| seen.iter().map(f).sum::<usize>();
    let (granted, taken, ordered) =
        (count(|s| s.done.len()), count(|s| s.taken.len()), count(|s| s.orders.len()));
    // The load ran on both sides of the failover.
    let ok_before = attempts.iter().filter(|a| a.kind == "ok" && a.started < down).count();
    assert!(ok_before > 50 && after.len() > 50, "{ok_before} ok before, {} after", after.len());
    assert!(granted > 0 && taken > 0 && ordered > 0, "{granted} names, {taken} tokens, {ordered}");
    eprintln!(
        "failover: {} attempts, {} during the outage ({} unavailable, {} timeout); promotion took \
         {promoted:?}, serving {back:?} after it began; slowest {slowest:?}; {granted} names, \
         {taken} tokens, {ordered} orders acknowledged, all on the new primary",
        attempts.len(),
        outage.len(),
        outage.iter().filter(|a| a.kind == "unavailable").count(),
        outage.iter().filter(|a| a.kind == "timeout").count(),
    );
    drop(store);
}

/// A first host that accepts TCP and never answers (a frozen server, a black hole behind a
/// proxy) costs one walk, not every connection: each new connection starts at the host that
/// answered last, so a burst that needs new connections is served within `timeout_ms` even
/// though a walk through the silent host takes longer than that.
#[test]
fn a_silent_first_host_is_passed_over_once() {
    let pg = TestPostgres::start();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!(
        "postgres://outpost:{}@127.0.0.1:{port},127.0.0.1:{}/outpost",
        pg.password(),
        pg.port()
    );
    let dir = TempDir::new("outpost-store-silent");
    let cfg = StoreConfig {
        url: Some(url),
        timeout_ms: 400,
        connect_timeout_ms: 600,
        pool_size: 8,
        ..StoreConfig::default()
    };
    let started = Instant::now();
    let store = Store::open(&cfg, dir.path()).expect("open past a silent first host");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "the silent host was not tried first: {took:?}");
    assert!(took < Duration::from_secs(3), "open took {took:?}");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Sixteen reads at once (reads are not grouped) on a pool that holds one connection: new
    // connections, each within the 400 ms timeout only if it goes straight to the host that
    // answered.
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16 {
            let s = store.clone();
            set.spawn(async move { s.get("n", &format!("k{i}")).await });
        }
        while let Some(r) = set.join_next().await {
            r.expect("task").expect("a read needing a new connection");
        }
    });
    let open = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outpost'",
    );
    assert!(open.parse::<u32>().unwrap() > 1, "the burst used {open} connection(s)");
    drop(store);
    drop(silent);
}

/// A primary that stops taking writes (demoted, or read-only by hand) while the store holds
/// connections to it: the write that meets it fails as Unavailable (not as a plain error), the
/// connection is dropped, and the next one goes to the host that takes writes.
#[test]
fn a_primary_turned_read_only_is_left_for_the_next_host() {
    let a = Arc::new(TestPostgres::start());
    let b = TestPostgres::start();
    let dir = TempDir::new("outpost-store-readonly");
    // b gets the schema first: it stands in for a standby promoted from a.
    drop(Store::open(&cfg(b.url()), dir.path()).expect("migrate b"));
    let url = format!(
        "postgres://outpost:{}@127.0.0.1:{},127.0.0.1:{}/outpost",
        a.password(),
        a.port(),
        b.port()
    );
    // b has another password: the role exists on both, so give it a's.
    b.psql(
        "postgres",
        &format!("SET password_encryption = 'md5'; ALTER ROLE outpost PASSWORD '{}'", a.password()),
    );
    let store = Store::open(&cfg(url), dir.path()).expect("open");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(store.put("n", "before", b"v", None)).expect("put on a");
    assert_eq!(a.psql("outpost", "SELECT count(*) FROM kv WHERE key = 'before'"), "1");

    a.psql("postgres", "ALTER SYSTEM SET default_transaction_read_only = on");
    a.psql("postgres", "SELECT pg_reload_conf()");
    // pg_reload_conf only signals the postmaster. Once a new session sees the setting, the
    // postmaster has reloaded and signalled every backend, and an idle one applies it before
    // its next command; before that, the next write may still land on a.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.psql("postgres", "SHOW default_transaction_read_only") != "on" {
        assert!(Instant::now() < deadline, "a never turned read-only");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Every pooled connection to a may fail once; then the writes land on b.
    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rt.block_on(store.put("n", "after", b"v", None)) {
            Ok(()) => break,
            Err(e @ StoreError::Unavailable(_)) => errors.push(e.to_string()),
            Err(e) => panic!("a write on a read-only primary: {e:?}, expected Unavailable"),
        }
        assert!(
            Instant::now() < deadline,
            "writes never left the read-only host: {} failures, the first {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(errors.len() <= 8, "more failures than pooled connections: {errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("read-only transaction")),
        "why the writes failed: {errors:?}"
    );
    assert_eq!(b.psql("outpost", "SELECT count(*) FROM kv WHERE key = 'after'"), "1");
    assert_eq!(a.psql("outpost", "SELECT count(*) FROM kv WHERE key = 'after'"), "0");
    drop(store);
}
