//! SIGKILL durability: a separate process writes with many concurrent tasks and prints each
//! key the store acknowledged; the test kills it mid-load with SIGKILL, reopens the store and
//! finds every acknowledged key.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::Harness;

/// Runs the load process until `acks` keys were acknowledged, kills it, returns every key it
/// printed (a line cut off by the kill is not a promise and is dropped).
fn load_then_kill(h: &Harness, acks: usize) -> Vec<String> {
    let url = h.pg.as_ref().map_or("-".to_owned(), |(_, _, url)| url.clone());
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-store-load"))
        .arg(h.dir.path())
        .args([url.as_str(), "64", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start outpost-store-load");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut line = String::new();
        while out.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(key) = line.strip_suffix('\n') {
                let _ = tx.send(key.to_owned());
            }
            line.clear();
        }
    });
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys.len() < acks {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(k) => keys.push(k),
            Err(_) => assert!(
                Instant::now() < deadline,
                "{}: only {} acknowledged writes in 60 s",
                h.name(),
                keys.len()
            ),
        }
    }
    // SAFETY: kill(2) on our unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let status = child.wait().expect("wait");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    reader.join().expect("reader");
    keys.extend(rx.try_iter());
    keys
}

async fn every_acknowledged_key_survives(h: Harness) {
    let keys = load_then_kill(&h, 3000);
    let store = h.open();
    let mut missing = Vec::new();
    for key in &keys {
        match store.get("load", key).await {
            Ok(Some(v)) if v == key.as_bytes() => {}
            other => missing.push(format!("{key}: {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{}: {} of {} acknowledged keys lost after SIGKILL, e.g. {:?}",
        h.name(),
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
    let stored = h.scalar("SELECT count(*) FROM kv WHERE ns = 'load'");
    eprintln!(
        "{}: {} acknowledged before SIGKILL, {stored} stored, all found",
        h.name(),
        keys.len()
    );
    assert!(stored as usize >= keys.len());
}

both!(every_acknowledged_key_survives);

/// PostgreSQL itself SIGKILLed mid-load (postmaster and backends, as a power cut): every key
/// the store acknowledged before is there after the restart, and the same Store recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_load_keeps_every_acknowledged_key() {
    let pg = std::sync::Arc::new(outpost_store::testing::TestPostgres::start());
    let dir = outpost_store::testing::TempDir::new("outpost-store-crash");
    let cfg = outpost_store::StoreConfig {
        url: Some(pg.url()),
        timeout_ms: 1000,
        connect_timeout_ms: 1000,
        ..Default::default()
    };
    let store = outpost_store::Store::open(&cfg, dir.path()).expect("open");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (store, acked, stopped) = (store.clone(), acked.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !*stopped.borrow() {
                n += 1;
                let key = format!("{t}-{n}");
                if store.put("crash", &key, key.as_bytes(), None).await.is_ok() {
                    acked.lock().unwrap().push(key);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 2000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = acked.lock().unwrap().len();
    let restart = pg.clone();
    tokio::task::spawn_blocking(move || {
        restart.kill();
        std::thread::sleep(Duration::from_millis(500));
        restart.start_again();
    })
    .await
    .expect("restart");
    // The same Store recovers: more acknowledgements arrive after the restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < before + 500 {
        assert!(Instant::now() < deadline, "no writes acknowledged after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let keys = acked.lock().unwrap().clone();
    let mut missing = Vec::new();
    for key in &keys {
        match store.get("crash", key).await {
            Ok(Some(v)) if v == key.as_bytes() => {}
            other => missing.push(format!("{key}: {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged keys lost in the crash, e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "postgres crash: {before} acknowledged before SIGKILL, {} in all, all found",
        keys.len()
    );
    drop(store);
    drop(pg);
}
