//! SIGKILL the edge during a reservation load, start it again on the same data directory:
//! every 201 given is in the store, no name or email is held twice, and every queued mail is
//! delivered (the outbox survives; at least once). Mail rows the killed sender had claimed go
//! out once their lease (the store's WORKER_LEASE, 60 s) runs out: the test takes that long.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use support::*;

#[test]
fn sigkill_during_load_then_restart_keeps_every_201_and_sends_every_mail() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-k1");
    let mut edge =
        start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "[store]\ntimeout_ms = 30000\n");
    let client = Client::new(edge.https);
    let created: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let pid = edge.pid();

    // The killer: SIGKILL once 300 reservations were acknowledged, mid-load.
    let killer = {
        let created = created.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while created.lock().unwrap().len() < 300 {
                assert!(std::time::Instant::now() < deadline, "the load made no progress");
                std::thread::sleep(Duration::from_millis(5));
            }
            // SAFETY: the edge process this test started; not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let rt = runtime();
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(48));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..4000usize {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (c, created, answered) = (client.clone(), created.clone(), answered.clone());
            // Mostly distinct names, a hot set of 20 contended ones; distinct emails.
            let name = if i % 10 == 0 { format!("hot-{}", i % 20) } else { format!("n{i}") };
            let email = format!("u{i}@example.com");
            set.spawn(async move {
                if let Ok(r) = c.reserve(&name, &email).await {
                    answered.fetch_add(1, Ordering::Relaxed);
                    if r.status == 201 {
                        created.lock().unwrap().push((name, email));
                    }
                }
                drop(permit);
            });
        }
        while set.join_next().await.is_some() {}
    });
    killer.join().unwrap();
    let status = edge.wait_exit(Duration::from_secs(10)).expect("the edge is dead");
    assert!(!status.success(), "killed, not exited: {status}");
    let created = created.lock().unwrap().clone();
    assert!(created.len() >= 300 && answered.load(Ordering::Relaxed) < 4000, "killed mid-load");

    edge.restart(&["--no-xdp"]);
    let (s, csv) = edge.admin_get("/reservations/export").unwrap();
    assert_eq!(s, 200, "{csv}");
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    let mut emails = BTreeSet::new();
    for line in csv.lines().skip(1) {
        let mut cells = line.split(',');
        let (name, email) = (cells.next().unwrap().to_owned(), cells.next().unwrap().to_owned());
        assert!(emails.insert(email.clone()), "email {email} holds two names:\n{csv}");
        assert!(held.insert(name.clone(), email).is_none(), "name {name} held twice:\n{csv}");
    }
    for (name, email) in &created {
        assert_eq!(
            held.get(name),
            Some(email),
            "acknowledged {name} for {email} is gone after SIGKILL"
        );
    }
    // Every reservation in the store, acknowledged or not, gets its mail.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = smtp.recipients();
        let missing: Vec<&String> = held.values().filter(|e| !got.contains(*e)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} mails never delivered, e.g. {:?}",
            missing.len(),
            held.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{} acknowledged before SIGKILL, {} held after restart, {} mails delivered",
        created.len(),
        held.len(),
        smtp.mails().len()
    );
}
