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
