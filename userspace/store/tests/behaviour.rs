//! The store's behaviour, one suite run against both backends: every test below exists as
//! `<name>::sqlite` and `<name>::postgres`.

mod common;

use std::time::{Duration, SystemTime};

use common::{ms, Harness};
use outpost_store::{
    audit::to_ms, Abort, AuditEvent, AuditQuery, Inserted, Op, StoreConfig, StoreError, TxnOutcome,
    SCHEMA_VERSION,
};

both!(
    put_get_take_delete,
    expired_values_are_never_returned,
    sweeper_deletes_expired_values,
    sweeper_prunes_old_audit_events,
    insert_conflicts_are_typed,
    txn_is_all_or_nothing,
    scan_orders_pages_and_filters,
    outbox_claim_complete_retry,
    outbox_lease_expires,
    audit_filters_newest_last,
    schema_too_new_is_refused_untouched,
    reopen_keeps_data,
    metrics_render_prometheus,
);

async fn put_get_take_delete(h: Harness) {
    let s = h.open();
    assert_eq!(s.get("n", "k").await, Ok(None));
    s.put("n", "k", b"one", None).await.expect("put");
    assert_eq!(s.get("n", "k").await, Ok(Some(b"one".to_vec())));
    assert_eq!(s.get("other", "k").await, Ok(None), "namespaces are separate");
    s.put("n", "k", b"two", None).await.expect("put overwrites");
    assert_eq!(s.get("n", "k").await, Ok(Some(b"two".to_vec())));
    assert_eq!(s.take("n", "k").await, Ok(Some(b"two".to_vec())));
    assert_eq!(s.take("n", "k").await, Ok(None), "a second take gets nothing");
    assert_eq!(s.get("n", "k").await, Ok(None));
    s.put("n", "k", b"", None).await.expect("empty value");
    assert_eq!(s.get("n", "k").await, Ok(Some(Vec::new())));
    assert_eq!(s.delete("n", "k").await, Ok(true));
    assert_eq!(s.delete("n", "k").await, Ok(false));
    let binary: Vec<u8> = (0..=255).collect();
    s.put("n", "bin", &binary, None).await.expect("binary value");
    assert_eq!(s.get("n", "bin").await, Ok(Some(binary)));
}

async fn expired_values_are_never_returned(h: Harness) {
    let s = h.open();
    s.put("n", "short", b"v", Some(ms(900))).await.expect("put ttl");
    s.put("n", "long", b"w", Some(Duration::from_secs(3600))).await.expect("put ttl");
    assert_eq!(s.get("n", "short").await, Ok(Some(b"v".to_vec())));
    tokio::time::sleep(ms(1800)).await;
    assert_eq!(s.get("n", "short").await, Ok(None), "{}: expired value returned", h.name());
    assert_eq!(s.take("n", "short").await, Ok(None), "take of an expired value");
    let keys: Vec<String> =
        s.scan("n", None, 10).await.expect("scan").into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["long"], "scan must skip expired values");
    s.put("n", "short", b"v", Some(ms(600))).await.expect("put ttl");
    tokio::time::sleep(ms(1200)).await;
    assert_eq!(s.delete("n", "short").await, Ok(false), "deleting an expired value");
    let out = s.txn(vec![Op::Take { ns: "n".into(), key: "short".into() }]).await.expect("txn");
    assert_eq!(out, TxnOutcome::Aborted { op: 0, why: Abort::Missing });
    assert_eq!(s.get("n", "long").await, Ok(Some(b"w".to_vec())));
}

async fn sweeper_deletes_expired_values(h: Harness) {
    let s = h.open_with(StoreConfig { sweep_interval_ms: 200, ..h.cfg() });
    for i in 0..20 {
        s.put("sweep", &format!("k{i}"), b"v", Some(ms(100))).await.expect("put");
    }
    s.put("sweep", "keep", b"v", None).await.expect("put");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = h.scalar("SELECT count(*) FROM kv WHERE ns = 'sweep'");
        if left == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}: {left} rows left, want 1", h.name());
        tokio::time::sleep(ms(100)).await;
    }
    assert_eq!(s.get("sweep", "keep").await, Ok(Some(b"v".to_vec())));
}

async fn sweeper_prunes_old_audit_events(h: Harness) {
    let s = h.open_with(StoreConfig { sweep_interval_ms: 200, ..h.cfg() });
    let now = SystemTime::now();
    let days = |d: u64| now - Duration::from_secs(d * 86_400);
    // More old events than one round deletes: the sweep goes on in rounds.
    let old: Vec<AuditEvent> = (0..12_000).map(|i| event(days(40) + ms(i), None, "old")).collect();
    s.append_audit(old).await.expect("append");
    let recent = vec![event(days(2), Some("alice"), "recent"), event(now, None, "recent")];
    s.append_audit(recent.clone()).await.expect("append");
    assert_eq!(h.scalar("SELECT count(*) FROM audit"), 12_002, "{}: nothing pruned yet", h.name());
    s.set_audit_retention(Some(Duration::from_secs(30 * 86_400)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.scalar("SELECT count(*) FROM audit") != 2 {
        assert!(std::time::Instant::now() < deadline, "{}: old events left", h.name());
        tokio::time::sleep(ms(100)).await;
    }
    let q = AuditQuery { limit: 10, ..AuditQuery::default() };
    let left = s.query_audit(&q).await.expect("query");
    assert_eq!(left, recent);
}

async fn insert_conflicts_are_typed(h: Harness) {
    let s = h.open();
    assert_eq!(s.insert("r", "name", b"alice", None).await, Ok(Inserted::Done));
    assert_eq!(
        s.insert("r", "name", b"bob", None).await,
        Ok(Inserted::Conflict { existing: b"alice".to_vec() })
    );
    assert_eq!(s.get("r", "name").await, Ok(Some(b"alice".to_vec())), "conflict wrote");
    // An expired holder does not conflict: it is replaced.
    s.put("r", "lapsed", b"old", Some(ms(600))).await.expect("put");
    assert!(matches!(s.insert("r", "lapsed", b"x", None).await, Ok(Inserted::Conflict { .. })));
    tokio::time::sleep(ms(1200)).await;
    assert_eq!(
        s.insert("r", "lapsed", b"new", Some(Duration::from_secs(60))).await,
        Ok(Inserted::Done)
    );
    assert_eq!(s.get("r", "lapsed").await, Ok(Some(b"new".to_vec())));
    let rec = s.scan("r", Some("l"), 1).await.expect("scan");
    assert_eq!(rec[0].key, "lapsed");
    let left = rec[0].expires_at.expect("ttl kept").duration_since(SystemTime::now());
    assert!(left.as_ref().is_ok_and(|d| *d > Duration::from_secs(50)), "expiry {left:?}");
}

fn kv(ns: &str, key: &str) -> (String, String) {
    (ns.to_owned(), key.to_owned())
}

async fn txn_is_all_or_nothing(h: Harness) {
    let s = h.open();
    let (ns, held) = kv("t", "held");
    s.put(&ns, &held, b"h", None).await.expect("put");
    let pending = || async { s.outbox_stats().await.expect("stats").pending };

    // Conflict: the Put and the Enqueue before the failing Insert are not applied.
    let out = s
        .txn(vec![
            Op::Put { ns: ns.clone(), key: "a".into(), value: b"1".to_vec(), ttl: None },
            Op::Enqueue { topic: "mail".into(), payload: b"m".to_vec() },
            Op::Insert { ns: ns.clone(), key: held.clone(), value: b"x".to_vec(), ttl: None },
        ])
        .await
        .expect("txn");
    assert_eq!(out, TxnOutcome::Aborted { op: 2, why: Abort::Conflict(b"h".to_vec()) });
    assert_eq!(s.get(&ns, "a").await, Ok(None), "{}: aborted put applied", h.name());
    assert_eq!(pending().await, 0, "aborted enqueue applied");

    // Missing: a Take of nothing undoes the Take before it.
    let out = s
        .txn(vec![
            Op::Take { ns: ns.clone(), key: held.clone() },
            Op::Take { ns: ns.clone(), key: "absent".into() },
        ])
        .await
        .expect("txn");
    assert_eq!(out, TxnOutcome::Aborted { op: 1, why: Abort::Missing });
    assert_eq!(s.get(&ns, &held).await, Ok(Some(b"h".to_vec())), "aborted take applied");

    // Mismatch, with the current value and with no row.
    let swap = |key: &str, expect: &[u8]| Op::Swap {
        ns: ns.clone(),
        key: key.into(),
        expect: expect.to_vec(),
        new: Some(b"n".to_vec()),
        ttl: None,
    };
    let out = s
        .txn(vec![Op::Delete { ns: ns.clone(), key: held.clone() }, swap("held", b"wrong")])
        .await
        .expect("txn");
    assert_eq!(out, TxnOutcome::Aborted { op: 1, why: Abort::Mismatch(None) }, "deleted first");
    assert_eq!(s.get(&ns, &held).await, Ok(Some(b"h".to_vec())), "aborted delete applied");
    let out = s.txn(vec![swap("held", b"wrong")]).await.expect("txn");
    assert_eq!(out, TxnOutcome::Aborted { op: 0, why: Abort::Mismatch(Some(b"h".to_vec())) });

    // Everything at once commits, with per-op results.
    let out = s
        .txn(vec![
            Op::Insert { ns: ns.clone(), key: "new".into(), value: b"1".to_vec(), ttl: None },
            Op::Take { ns: ns.clone(), key: "new".into() },
            swap("held", b"h"),
            Op::Swap {
                ns: ns.clone(),
                key: "held".into(),
                expect: b"n".to_vec(),
                new: None,
                ttl: None,
            },
            Op::Enqueue { topic: "mail".into(), payload: b"m".to_vec() },
            Op::Put { ns: ns.clone(), key: "p".into(), value: b"2".to_vec(), ttl: None },
            Op::Delete { ns: ns.clone(), key: "absent".into() },
        ])
        .await
        .expect("txn");
    let TxnOutcome::Committed(results) = out else {
        panic!("{}: not committed: {out:?}", h.name())
    };
    assert_eq!(results.len(), 7);
    assert_eq!(results[1], Some(b"1".to_vec()), "take returns the value");
    let id = results[4].as_ref().expect("enqueue returns the id");
    let id = i64::from_le_bytes(id.as_slice().try_into().expect("8 bytes"));
    assert!(id > 0, "id {id}");
    assert_eq!([&results[0], &results[2], &results[3], &results[5], &results[6]], [&None; 5]);
    assert_eq!(s.get(&ns, "held").await, Ok(None), "swap to None deletes");
    assert_eq!(s.get(&ns, "p").await, Ok(Some(b"2".to_vec())));
    assert_eq!(pending().await, 1);
    let claimed = s.claim("mail", "w", 10, Duration::from_secs(10)).await.expect("claim");
    assert_eq!(claimed.iter().map(|i| i.id).collect::<Vec<_>>(), [id]);
}

async fn scan_orders_pages_and_filters(h: Harness) {
    let s = h.open();
    // Bytewise order on both backends: uppercase before lowercase, "a" before "a-" before "ab".
    for key in ["b", "a", "ab", "B", "a-", "c"] {
        s.put("scan", key, key.as_bytes(), None).await.expect("put");
    }
    s.put("scan", "gone", b"x", Some(ms(1))).await.expect("put");
    s.put("other", "a", b"x", None).await.expect("put");
    tokio::time::sleep(ms(50)).await;
    let keys = |r: Vec<outpost_store::Record>| r.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.scan("scan", None, 100).await.expect("scan")),
        ["B", "a", "a-", "ab", "b", "c"]
    );
    assert_eq!(keys(s.scan("scan", None, 2).await.expect("scan")), ["B", "a"]);
    assert_eq!(keys(s.scan("scan", Some("a"), 2).await.expect("scan")), ["a-", "ab"]);
    assert_eq!(keys(s.scan("scan", Some("c"), 2).await.expect("scan")), Vec::<String>::new());
    assert_eq!(s.scan("scan", None, 0).await, Ok(Vec::new()));
    let first = &s.scan("scan", None, 1).await.expect("scan")[0];
    assert_eq!((first.value.as_slice(), first.expires_at), (&b"B"[..], None));
}

async fn outbox_claim_complete_retry(h: Harness) {
    let s = h.open();
    let lease = Duration::from_secs(30);
    let ids: Vec<i64> = {
        let mut v = Vec::new();
        for p in [b"1", b"2", b"3"] {
            v.push(s.enqueue("mail", p).await.expect("enqueue"));
        }
        v
    };
    s.enqueue("sms", b"x").await.expect("enqueue");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let stats = s.outbox_stats().await.expect("stats");
    assert_eq!(stats.pending, 4);
    assert!(stats.oldest_age.is_some());

    let a = s.claim("mail", "A", 2, lease).await.expect("claim");
    assert_eq!(a.iter().map(|i| i.id).collect::<Vec<_>>(), ids[..2], "oldest first");
    assert_eq!(
        (a[0].payload.as_slice(), a[0].attempts, a[0].topic.as_str()),
        (&b"1"[..], 0, "mail")
    );
    let b = s.claim("mail", "B", 10, lease).await.expect("claim");
    assert_eq!(b.iter().map(|i| i.id).collect::<Vec<_>>(), ids[2..], "leased rows are skipped");
    assert!(s.claim("mail", "D", 10, lease).await.expect("claim").is_empty(), "all leased");
    // B's own leases hold against B too (it claims more while it delivers)...
    assert!(s.claim("mail", "B", 10, lease).await.expect("claim").is_empty(), "B's own lease");
    // ...unless it holds nothing: then it lost the answer to its claim and gets its rows back.
    let b_again = s.reclaim("mail", "B", 10, lease).await.expect("claim");
    assert_eq!(b_again.iter().map(|i| i.id).collect::<Vec<_>>(), ids[2..], "B's own rows");

    assert_eq!(s.complete(ids[0], "B").await, Ok(false), "not B's row");
    assert_eq!(s.complete(ids[0], "A").await, Ok(true));
    assert_eq!(s.complete(ids[0], "A").await, Ok(false), "already done");
    assert_eq!(
        s.retry(ids[0], "A", Duration::ZERO, "late").await,
        Ok(false),
        "done rows stay done"
    );

    // Retry now: due again at once, attempts counted.
    assert_eq!(s.retry(ids[1], "A", Duration::ZERO, "smtp 451").await, Ok(true));
    assert_eq!(s.complete(ids[1], "A").await, Ok(false), "the lease was released");
    let again = s.claim("mail", "C", 10, lease).await.expect("claim");
    assert_eq!(again.iter().map(|i| (i.id, i.attempts)).collect::<Vec<_>>(), [(ids[1], 1)]);
    // Retry later: not due for an hour.
    assert_eq!(s.retry(ids[1], "C", Duration::from_secs(3600), "again").await, Ok(true));
    assert!(s.claim("mail", "C", 10, lease).await.expect("claim").is_empty(), "not due yet");
    assert_eq!(s.outbox_stats().await.expect("stats").pending, 3);
    let last_error = h.scalar(&format!(
        "SELECT count(*) FROM outbox WHERE last_error = 'again' AND id = {}",
        ids[1]
    ));
    assert_eq!(last_error, 1, "the error is kept on the row");
    assert_eq!(
        s.claim("sms", "A", 10, lease).await.expect("claim").len(),
        1,
        "topics are separate"
    );
}

async fn outbox_lease_expires(h: Harness) {
    let s = h.open();
    let id = s.enqueue("mail", b"m").await.expect("enqueue");
    let a = s.claim("mail", "A", 1, ms(900)).await.expect("claim");
    assert_eq!(a.len(), 1);
    assert!(s.claim("mail", "B", 1, ms(900)).await.expect("claim").is_empty(), "lease holds");
    // Renewed past the first lease: still A's.
    tokio::time::sleep(ms(600)).await;
    assert_eq!(s.renew(&[id, id + 100], "A", ms(1800)).await, Ok(1), "{}: renew", h.name());
    assert_eq!(s.renew(&[id], "B", ms(1800)).await, Ok(0), "only the holder renews");
    tokio::time::sleep(ms(900)).await;
    assert!(s.claim("mail", "B", 1, ms(900)).await.expect("claim").is_empty(), "renewed");
    tokio::time::sleep(ms(1500)).await;
    let b = s.claim("mail", "B", 1, Duration::from_secs(30)).await.expect("claim");
    assert_eq!(b.iter().map(|i| i.id).collect::<Vec<_>>(), [id], "{}: expired lease", h.name());
    assert_eq!(s.complete(id, "A").await, Ok(false), "A lost the row to B");
    assert_eq!(s.retry(id, "A", Duration::ZERO, "x").await, Ok(false));
    assert_eq!(s.renew(&[id], "A", ms(1800)).await, Ok(0), "A lost it");
    assert_eq!(s.complete(id, "B").await, Ok(true));
    assert_eq!(s.renew(&[id], "B", ms(1800)).await, Ok(0), "a completed row is not leased again");
    assert_eq!(s.outbox_stats().await.expect("stats").pending, 0);
}

fn event(t: SystemTime, user: Option<&str>, kind: &str) -> AuditEvent {
    AuditEvent {
        time: to_ms(t),
        node: "edge-1".into(),
        client: Some("198.18.0.7".into()),
        host: Some("example.test".into()),
        path: Some("/login".into()),
        user: user.map(str::to_owned),
        kind: kind.into(),
        outcome: "ok".into(),
        reason: None,
    }
}

async fn audit_filters_newest_last(h: Harness) {
    let s = h.open();
    let t0 = SystemTime::now() - Duration::from_secs(100);
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let events = vec![
        event(at(1), Some("alice"), "login"),
        event(at(2), Some("bob"), "login"),
        event(at(3), None, "reserve"),
        AuditEvent {
            reason: Some("taken".into()),
            outcome: "denied".into(),
            ..event(at(4), Some("alice"), "reserve")
        },
        event(at(5), Some("alice"), "login"),
    ];
    s.append_audit(events.clone()).await.expect("append");
    s.append_audit(Vec::new()).await.expect("append nothing");
    let q = |since: Option<u64>, user: Option<&str>, kind: Option<&str>, limit| AuditQuery {
        since: since.map(at),
        user: user.map(str::to_owned),
        kind: kind.map(str::to_owned),
        limit,
    };
    assert_eq!(s.query_audit(&q(None, None, None, 100)).await, Ok(events.clone()), "all, in order");
    assert_eq!(
        s.query_audit(&q(None, None, None, 2)).await,
        Ok(events[3..].to_vec()),
        "newest 2, newest last"
    );
    assert_eq!(
        s.query_audit(&q(Some(3), None, None, 100)).await,
        Ok(events[2..].to_vec()),
        "since is inclusive"
    );
    let alice = s.query_audit(&q(None, Some("alice"), None, 100)).await.expect("query");
    assert_eq!(alice, vec![events[0].clone(), events[3].clone(), events[4].clone()]);
    let alice_logins = s.query_audit(&q(Some(2), Some("alice"), Some("login"), 100)).await;
    assert_eq!(alice_logins, Ok(vec![events[4].clone()]));
    assert_eq!(s.query_audit(&q(None, Some("nobody"), None, 10)).await, Ok(Vec::new()));
    // The serde form round-trips (time as Unix milliseconds).
    let json = serde_json::to_string(&events[3]).expect("serialize");
    let want_ms = events[3].time.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970");
    assert!(json.contains(&format!("\"time\":{},", want_ms.as_millis())), "{json}");
    assert_eq!(serde_json::from_str::<AuditEvent>(&json).expect("deserialize"), events[3]);
}

async fn schema_too_new_is_refused_untouched(h: Harness) {
    let s = h.open();
    s.put("n", "k", b"v", None).await.expect("put");
    s.shutdown();
    drop(s);
    let newer = SCHEMA_VERSION + 1;
    h.execute(&format!("INSERT INTO schema_version (version, applied_at) VALUES ({newer}, 0)"));
    let snapshot = || match &h.pg {
        None => std::fs::read(h.db_path()).expect("read db"),
        Some(_) => {
            let tables = h.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
            let versions = h.scalar("SELECT sum(version) FROM schema_version");
            let rows = h.scalar("SELECT count(*) FROM kv");
            format!("{tables}/{versions}/{rows}").into_bytes()
        }
    };
    let before = snapshot();
    let err = outpost_store::Store::open(&h.cfg(), h.dir.path()).expect_err("newer schema opened");
    assert_eq!(err, StoreError::SchemaTooNew { found: newer, supported: SCHEMA_VERSION });
    assert!(err.to_string().contains("newer"), "{err}");
    assert!(snapshot() == before, "{}: the refused database changed", h.name());
}

async fn reopen_keeps_data(h: Harness) {
    let s = h.open();
    s.put("n", "k", b"v", None).await.expect("put");
    assert_eq!(s.insert("r", "name", b"alice", None).await, Ok(Inserted::Done));
    let id = s.enqueue("mail", b"m").await.expect("enqueue");
    s.append_audit(vec![event(SystemTime::now(), Some("alice"), "login")]).await.expect("audit");
    s.shutdown();
    assert!(
        matches!(s.get("n", "k").await, Err(StoreError::Unavailable(_))),
        "used after shutdown"
    );
    drop(s);
    let s = h.open();
    assert_eq!(s.get("n", "k").await, Ok(Some(b"v".to_vec())));
    assert_eq!(
        s.insert("r", "name", b"bob", None).await,
        Ok(Inserted::Conflict { existing: b"alice".to_vec() })
    );
    let claimed = s.claim("mail", "w", 10, Duration::from_secs(5)).await.expect("claim");
    assert_eq!(claimed.iter().map(|i| i.id).collect::<Vec<_>>(), [id]);
    assert_eq!(s.query_audit(&AuditQuery::default()).await.expect("audit").len(), 1);
    assert_eq!(s.enqueue("mail", b"n").await.map(|n| n > id), Ok(true), "ids are not reused");
}

async fn metrics_render_prometheus(h: Harness) {
    let s = h.open();
    s.put("n", "k", b"v", None).await.expect("put");
    s.insert("n", "k", b"w", None).await.expect("insert");
    s.txn(vec![Op::Take { ns: "n".into(), key: "absent".into() }]).await.expect("txn");
    s.outbox_stats().await.expect("stats");
    let mut out = String::new();
    s.metrics().render(&mut out);
    for want in [
        "# TYPE outpost_store_ops_total counter",
        "outpost_store_ops_total{op=\"put\",outcome=\"ok\"} 1",
        "outpost_store_ops_total{op=\"insert\",outcome=\"conflict\"} 1",
        "outpost_store_ops_total{op=\"txn\",outcome=\"aborted\"} 1",
        "outpost_store_op_duration_seconds{quantile=\"0.999\"}",
        "outpost_store_pool_in_use ",
        "outpost_store_pool_size ",
        "outpost_store_outbox_pending 0",
        "outpost_store_outbox_oldest_age_seconds 0",
        "outpost_store_commit_batch_size_count",
        &format!("outpost_store_info{{backend=\"{}\"}} 1", h.name()),
    ] {
        assert!(out.contains(want), "{}: missing {want:?} in\n{out}", h.name());
    }
    if let Some((pg, _, _)) = &h.pg {
        assert!(!out.contains(pg.password()), "password in metrics");
        assert!(!s.describe().contains(pg.password()), "password in describe");
        assert!(!format!("{s:?}").contains(pg.password()), "password in Debug");
        assert!(s.describe().starts_with("postgres://outpost:***@127.0.0.1:"), "{}", s.describe());
    } else {
        assert_eq!(
            s.describe(),
            format!("sqlite {}", h.db_path().canonicalize().unwrap().display())
        );
        // The database (and the WAL beside it) is for outpost's user only.
        use std::os::unix::fs::PermissionsExt as _;
        for file in ["outpost.db", "outpost.db-wal", "outpost.db-shm", "outpost.db.lock"] {
            let mode = std::fs::metadata(h.dir.path().join(file)).expect(file).permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file} mode {mode:o}");
        }
    }
}

/// PostgreSQL: the statements that find outbox rows by id (complete, renew, retry) look each
/// row up by its primary key. Written with `done_at IS NULL`, the planner served them from the
/// partial index `outbox_due` (topic, next_at, id), a scan of the whole queue per call (a
/// spike's mail completions then cost PostgreSQL as much as its reservations, benches/README).
/// Each statement's text is taken from `pg_stat_activity` as the store sent it, and explained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_by_id_are_found_by_primary_key_on_postgres() {
    let h = Harness::postgres("outbox_rows_by_id");
    let Some((pg, db, _)) = h.pg.clone() else { unreachable!("a PostgreSQL harness") };
    let s = h.open();
    let lease = Duration::from_secs(30);
    for _ in 0..2000 {
        s.enqueue("mail", b"a mail").await.expect("enqueue");
    }
    let ids: Vec<i64> =
        s.claim("mail", "w", 100, lease).await.expect("claim").into_iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 100);
    // A few ids, as a sender's batch holds; the table never analyzed, as during a spike before
    // autovacuum comes round.
    let list = |ids: &[i64]| {
        format!("'{{{}}}'", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
    };
    let cases: [(&str, &str, String); 3] = [
        (
            "UPDATE outbox SET lease_until%WHERE id = ANY",
            "int8[], text, int8",
            format!("{}, 'w', 30000", list(&ids[..5])),
        ),
        (
            "UPDATE outbox SET attempts",
            "int8, text, int8, text",
            format!("{}, 'w', 1000, 'e'", ids[0]),
        ),
        ("UPDATE outbox SET done_at", "int8[], text", format!("{}, 'w'", list(&ids[1..6]))),
    ];
    assert_eq!(s.renew(&ids, "w", lease).await, Ok(100));
    let sent = |prefix: &str| {
        pg.psql(
            &db,
            &format!(
                "SELECT query FROM pg_stat_activity WHERE datname = '{db}' \
                 AND query LIKE '{prefix}%' LIMIT 1"
            ),
        )
    };
    let mut statements = vec![sent(cases[0].0)];
    assert!(s.retry(ids[0], "w", Duration::from_secs(1), "e").await.expect("retry"));
    statements.push(sent(cases[1].0));
    assert_eq!(s.complete_all(&ids[1..], "w").await, Ok(99));
    statements.push(sent(cases[2].0));
    for ((prefix, types, args), sql) in cases.iter().zip(&statements) {
        assert!(
            sql.starts_with("UPDATE outbox"),
            "{prefix}: the store's statement not seen: {sql:?}"
        );
        let plan = pg
            .psql(&db, &format!("PREPARE by_id({types}) AS {sql}; EXPLAIN EXECUTE by_id({args})"));
        assert!(
            plan.contains("outbox_pkey") && !plan.contains("outbox_due"),
            "{prefix}: not by primary key:\n{plan}"
        );
    }
}
