//! Mail over real SMTP (Debian's aiosmtpd, started here): the link in the delivered mail is
//! parsed and followed; SMTP down at reserve time; expiry; the hourly bound on mails; audit.

mod support;

use std::time::Duration;

use support::*;

fn audit(edge: &Outpost, kind: &str) -> Vec<serde_json::Value> {
    let (status, body) = edge.admin_get(&format!("/audit?kind={kind}&limit=1000")).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
}

/// Waits until the audit log has `n` events of `kind` (events are written after the response).
fn wait_audit(edge: &Outpost, kind: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = audit(edge, kind);
        if ev.len() >= n {
            return ev;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} {kind} events, wanted {n}: {ev:?}",
            ev.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_link_in_the_mail_confirms_once() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-m1");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "");
    let c = Client::new(edge.https);
    let rt = runtime();

    let r = rt.block_on(c.reserve("Alice", "alice@Example.COM")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], "pending");
    assert_eq!(r.json()["fqdn"], format!("alice.{ZONE}"));

    let mails = smtp.wait_for("alice@example.com", 1, Duration::from_secs(20));
    let mail = &mails[0];
    assert!(mail.contains("From: Reservations <reserve@example.test>"), "{mail}");
    assert!(mail.contains(&format!("Subject: Confirm your reservation of alice.{ZONE}")), "{mail}");
    assert!(mail.contains("text/plain") && mail.contains("text/html"), "both parts: {mail}");
    let (url, path) = confirm_link(mail);
    assert!(url.starts_with(&format!("https://{HOST}:{}/confirm?token=", edge.https)), "{url}");

    // Pending: the name is taken, not yet confirmed.
    let (_, show) = edge.admin_get("/reservations/show?name=alice").unwrap();
    assert!(show.contains("\"state\": \"pending\""), "{show}");

    // A link checker's HEAD does not use the token up.
    let r = rt.block_on(c.request("HEAD", &path, &[], b"")).unwrap();
    assert_eq!(r.status, 405, "{}", r.body);
    let r = rt.block_on(c.get(&path)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("Confirmed") && r.body.contains(&format!("alice.{ZONE}")),
        "{}",
        r.body
    );
    assert_eq!(r.header("Referrer-Policy"), Some("same-origin"));
    let (_, show) = edge.admin_get("/reservations/show?name=alice").unwrap();
    assert!(
        show.contains("\"state\": \"confirmed\"") && show.contains("\"expires\": null"),
        "{show}"
    );

    // Second use.
    let r = rt.block_on(c.get(&path)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Already confirmed"), "{}", r.body);

    // Forged: well-formed but unknown; malformed; missing.
    let forged = format!("/confirm?token={}", "ab".repeat(32));
    for p in [forged.as_str(), "/confirm?token=abc", "/confirm"] {
        let r = rt.block_on(c.get(p)).unwrap();
        assert_eq!(r.status, 404, "{p}: {}", r.body);
        assert!(r.body.contains("Invalid link"), "{p}: {}", r.body);
    }
    // JSON when asked.
    let r = rt.block_on(c.request("GET", &path, &[("Accept", "application/json")], b"")).unwrap();
    assert_eq!(r.json()["status"], "already_confirmed", "{}", r.body);

    // Confirmed holds are not expired, and the same email cannot take a second name.
    let r = rt.block_on(c.reserve("alice-two", "alice@example.com")).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("email_taken")), "{}", r.body);
    let r = rt.block_on(c.reserve("alice", "alice@example.com")).unwrap();
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (409, Some("already_confirmed")),
        "{}",
        r.body
    );

    let ev = wait_audit(&edge, "reserve.confirm", 2);
    assert!(
        ev.iter().any(|e| e["outcome"] == "success" && e["user"] == "alice@example.com"),
        "{ev:?}"
    );
    let ev = wait_audit(&edge, "reserve.reserve", 1);
    assert!(
        ev.iter().any(|e| e["outcome"] == "success" && e["user"] == "alice@example.com"),
        "{ev:?}"
    );
}

#[test]
fn smtp_down_at_reserve_time_mail_arrives_when_it_is_back() {
    let mut smtp = Smtp::start();
    smtp.down();
    let dir = TempDir::new("reserve-m2");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "");
    let c = Client::new(edge.https);
    let rt = runtime();
    let r = rt.block_on(c.reserve("offline", "dana@example.org")).unwrap();
    assert_eq!(r.status, 201, "the reservation stands without SMTP: {}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !edge.log().contains("sending the mail failed; will retry") {
        assert!(std::time::Instant::now() < deadline, "no retry logged:\n{}", edge.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(smtp.mails().is_empty());

    smtp.up();
    let mails = smtp.wait_for("dana@example.org", 1, Duration::from_secs(60));
    let (_, path) = confirm_link(&mails[0]);
    let r = rt.block_on(c.get(&path)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Confirmed"), "{}", r.body);
}

#[test]
fn a_pending_hold_expires_and_frees_name_and_email() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-m3");
    let extra = format!("hold_secs = 2\n{NO_LIMITS}");
    let edge = start_edge(smtp.port, &secret_file(&dir), &extra, "");
    let c = Client::new(edge.https);
    let rt = runtime();
    let r = rt.block_on(c.reserve("fleeting", "erin@example.net")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    // Straight away, well inside the 2 s hold (the mail may take longer than that to come).
    let r = rt.block_on(c.reserve("fleeting", "frank@example.net")).unwrap();
    assert_eq!(r.status, 409, "held while pending: {}", r.body);
    let mails = smtp.wait_for("erin@example.net", 1, Duration::from_secs(20));
    let (_, path) = confirm_link(&mails[0]);

    std::thread::sleep(Duration::from_millis(2300));
    let r = rt.block_on(c.get("/api/availability?name=fleeting")).unwrap();
    assert_eq!(r.json()["available"], true, "freed: {}", r.body);
    // The expired link gets its page; the name stays free.
    let r = rt.block_on(c.get(&path)).unwrap();
    assert_eq!(r.status, 410, "{}", r.body);
    assert!(r.body.contains("Link expired"), "{}", r.body);
    // The email is free too, and the name can go to someone else.
    let r = rt.block_on(c.reserve("erin-again", "erin@example.net")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = rt.block_on(c.reserve("fleeting", "frank@example.net")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    // Still expired for the old link, though the name is held again (by another reservation).
    let r = rt.block_on(c.get(&path)).unwrap();
    assert_eq!(r.status, 410, "{}", r.body);

    let ev = wait_audit(&edge, "reserve.expiry", 1);
    assert_eq!(ev.len(), 1, "one expiry, reported once: {ev:?}");
    assert_eq!(ev[0]["user"], "erin@example.net");
}

#[test]
fn repeating_a_pending_reservation_resends_within_the_hourly_bound() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-m4");
    let extra = format!("mails_per_hour = 3\n{NO_LIMITS}");
    let edge = start_edge(smtp.port, &secret_file(&dir), &extra, "");
    let c = Client::new(edge.https);
    let rt = runtime();
    for _ in 0..3 {
        let r = rt.block_on(c.reserve("again", "gina@example.com")).unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = rt.block_on(c.reserve("again", "gina@example.com")).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (429, Some("mail_limit")), "{}", r.body);
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!(wait > 3000 && wait <= 3600, "{wait}");
    let mails = smtp.wait_for("gina@example.com", 3, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(smtp.mails_to("gina@example.com").len(), 3);
    // Every link sent is valid until one confirms; the others then say "already confirmed".
    let paths: Vec<String> = mails.iter().map(|m| confirm_link(m).1).collect();
    let r = rt.block_on(c.get(&paths[2])).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Confirmed"), "{}", r.body);
    let r = rt.block_on(c.get(&paths[0])).unwrap();
    assert!(r.body.contains("Already confirmed"), "{}", r.body);
}
