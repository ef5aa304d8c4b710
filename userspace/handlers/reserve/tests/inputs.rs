//! What the edge refuses and how: the bad-input table (each row a 4xx with a code and a
//! sentence, nothing written), rate limits (429 + Retry-After), CSRF on the form, the body
//! limit, 503 with nothing half-written when the store is down; and the operator's tools
//! (admin API, `outpost reservations` commands).

mod support;

use std::time::Duration;

use outpost_reserve::{
    cli::{self, Command},
    model::Reservations,
};
use outpost_store::{testing::TestPostgres, Store, StoreConfig};
use support::*;

/// Every row: (what, content type, body, status, code).
fn table() -> Vec<(&'static str, &'static str, Vec<u8>, u16, &'static str)> {
    let json = |name: &str, email: &str| {
        serde_json::json!({ "name": name, "email": email }).to_string().into_bytes()
    };
    let ok_email = "someone@example.com";
    vec![
        ("empty name", "application/json", json("", ok_email), 400, "name_empty"),
        (
            "64 characters",
            "application/json",
            json(&"a".repeat(64), ok_email),
            400,
            "name_too_long",
        ),
        ("leading hyphen", "application/json", json("-lead", ok_email), 400, "name_hyphen"),
        ("trailing hyphen", "application/json", json("trail-", ok_email), 400, "name_hyphen"),
        (
            "xn-- garbage",
            "application/json",
            json("xn--zz-zzzzzzzzzz", ok_email),
            400,
            "name_bad_punycode",
        ),
        (
            "reserved hyphens",
            "application/json",
            json("ab--cd", ok_email),
            400,
            "name_reserved_hyphens",
        ),
        ("dot", "application/json", json("a.b", ok_email), 400, "name_dot"),
        ("blocked name", "application/json", json("www", ok_email), 403, "blocked"),
        (
            "blocked by a default pattern",
            "application/json",
            json("paypal-login", ok_email),
            403,
            "blocked",
        ),
        (
            "blocked by a configured pattern",
            "application/json",
            json("acme-shop", ok_email),
            403,
            "blocked",
        ),
        ("blocked, mixed case", "application/json", json("LogIn", ok_email), 403, "blocked"),
        (
            "SQL in the name",
            "application/json",
            json("x'; DROP TABLE kv; --", ok_email),
            400,
            "name_invalid_character",
        ),
        (
            "SQL in the email",
            "application/json",
            json("bobby", "bob@example.com'; DROP TABLE kv; --"),
            400,
            "email_invalid",
        ),
        (
            "email without a domain",
            "application/json",
            json("nodomain", "alice@"),
            400,
            "email_no_domain",
        ),
        ("email without an @", "application/json", json("noat", "alice"), 400, "email_no_domain"),
        (
            "email header injection",
            "application/json",
            json("inject", "a@example.com\r\nBcc: x@example.org"),
            400,
            "email_invalid",
        ),
        ("1 MB body", "application/json", vec![b' '; 1 << 20], 413, "body_too_large"),
        (
            "wrong content type",
            "text/plain",
            b"name=a&email=b@example.com".to_vec(),
            415,
            "unsupported_media_type",
        ),
        ("no content type", "", json("nocontent", ok_email), 415, "unsupported_media_type"),
        ("malformed JSON", "application/json", b"{\"name\": ".to_vec(), 400, "bad_json"),
        ("JSON without email", "application/json", b"{\"name\": \"x\"}".to_vec(), 400, "bad_json"),
        (
            "a JSON array in the fields' order",
            "application/json",
            b"[\"arrayname\", \"a@example.com\"]".to_vec(),
            400,
            "bad_json",
        ),
        ("a JSON string", "application/json", b"\"arrayname\"".to_vec(), 400, "bad_json"),
        ("a JSON number", "application/json", b"42".to_vec(), 400, "bad_json"),
        ("JSON null", "application/json", b"null".to_vec(), 400, "bad_json"),
        (
            "JSON with a null field",
            "application/json",
            b"{\"name\":\"nullname\",\"email\":null}".to_vec(),
            400,
            "bad_json",
        ),
        (
            "JSON with a field twice",
            "application/json",
            b"{\"name\":\"x\",\"email\":\"a@b.co\",\"name\":\"y\"}".to_vec(),
            400,
            "bad_json",
        ),
        (
            "JSON with an unknown field",
            "application/json",
            b"{\"name\":\"x\",\"email\":\"a@b.co\",\"admin\":true}".to_vec(),
            400,
            "bad_json",
        ),
        (
            "form without the CSRF pair",
            "application/x-www-form-urlencoded",
            b"name=formy&email=f%40example.com".to_vec(),
            403,
            "csrf",
        ),
    ]
}

#[test]
fn bad_input_table_gets_4xx_with_a_reason_and_writes_nothing() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-i1");
    let extra = format!("blocked = [\"acme-*\"]\n{NO_LIMITS}");
    let edge = start_edge(smtp.port, &secret_file(&dir), &extra, "");
    let c = Client::new(edge.https);
    let rt = runtime();
    for (what, ctype, body, status, code) in table() {
        let headers: Vec<(&str, &str)> = if ctype.is_empty() {
            vec![]
        } else {
            vec![("Content-Type", ctype), ("Accept", "application/json")]
        };
        let r = rt
            .block_on(c.request("POST", "/reserve", &headers, &body))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let j = r.json();
        assert_eq!(j["code"], code, "{what}: {}", r.body);
        let msg = j["message"].as_str().unwrap_or("");
        assert!(msg.len() > 8 && msg.ends_with('.'), "{what}: a sentence, got {msg:?}");
    }
    // Nothing was written: no reservation, no mail.
    let (status, list) = edge.admin_get("/reservations").unwrap();
    assert_eq!((status, list.trim()), (200, "[]"), "nothing reserved");
    std::thread::sleep(Duration::from_millis(800));
    assert!(smtp.mails().is_empty(), "no mail queued: {:?}", smtp.mails());

    // What is allowed still works: an internationalised name becomes punycode.
    let r = rt.block_on(c.reserve("Bücher", "ulla@example.com")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["name"], "xn--bcher-kva");
    let r = rt.block_on(c.get("/api/availability?name=xn--bcher-kva")).unwrap();
    assert_eq!(
        (r.json()["available"].clone(), r.json()["reason"].clone()),
        (false.into(), "taken".into())
    );
    let r = rt.block_on(c.get("/api/availability?name=-x")).unwrap();
    assert_eq!(
        (r.json()["reason"].as_str(), r.json()["code"].as_str()),
        (Some("invalid"), Some("name_hyphen"))
    );
    let r = rt.block_on(c.get("/api/availability?name=ssh")).unwrap();
    assert_eq!(r.json()["reason"], "blocked");
    let r = rt.block_on(c.get("/api/availability?name=free-one")).unwrap();
    assert_eq!(
        (r.json()["available"].clone(), r.json()["reason"].clone()),
        (true.into(), serde_json::Value::Null)
    );
}

#[test]
fn rate_limits_answer_429_with_retry_after() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-i2");
    let extra = "[reserve.limits]\nreserve_per_ip_per_minute = 4\nreserve_per_email_per_hour = 2\n\
                 availability_per_ip_per_minute = 5\nconfirm_per_ip_per_minute = 3\n";
    let edge = start_edge(smtp.port, &secret_file(&dir), extra, "");
    let c = Client::new(edge.https);
    let rt = runtime();
    // Per email: two attempts an hour, whatever the names.
    let s: Vec<u16> = ["e-1", "e-2", "e-3"]
        .iter()
        .map(|n| rt.block_on(c.reserve(n, "hasty@example.com")).unwrap().status)
        .collect();
    assert_eq!(s, [201, 409, 429], "per email");
    // Per address: the fourth request of the minute passes, the fifth does not.
    let r = rt.block_on(c.reserve("ip-4", "other@example.com")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = rt.block_on(c.reserve("ip-5", "third@example.com")).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (429, Some("rate_limited")), "{}", r.body);
    let wait: u64 = r.header("Retry-After").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Availability and confirm have their own buckets.
    let s: Vec<u16> =
        (0..6).map(|_| rt.block_on(c.get("/api/availability?name=abc")).unwrap().status).collect();
    assert_eq!(s, [200, 200, 200, 200, 200, 429]);
    let s: Vec<u16> =
        (0..4).map(|_| rt.block_on(c.get("/confirm?token=00")).unwrap().status).collect();
    assert_eq!(s, [404, 404, 404, 429], "confirm attempts are bounded (no token guessing)");
}

/// The form's value of the hidden CSRF field.
fn hidden_csrf(page: &str) -> String {
    let at =
        page.find("name=\"csrf\" value=\"").expect("csrf field") + "name=\"csrf\" value=\"".len();
    page[at..].chars().take_while(|c| *c != '"').collect()
}

#[test]
fn the_form_needs_its_cookie_token_pair_and_this_site() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-i3");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "");
    let c = Client::new(edge.https);
    let rt = runtime();
    let page = rt.block_on(c.get("/")).unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&format!("<name>.{ZONE}").replace('<', "&lt;").replace('>', "&gt;"))
            || page.body.contains(ZONE),
        "shows the zone: {}",
        page.body
    );
    let set_cookie = page.header("Set-Cookie").expect("a CSRF cookie").to_owned();
    assert!(
        set_cookie.contains("SameSite=Strict")
            && set_cookie.contains("Secure")
            && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = hidden_csrf(&page.body);
    let origin = format!("https://{HOST}:{}", edge.https);
    let form =
        |name: &str, token: &str| format!("name={name}&email=form%40example.com&csrf={token}");
    let post = |body: String, headers: Vec<(&str, &str)>| {
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        h.extend(headers);
        rt.block_on(c.request("POST", "/reserve", &h, body.as_bytes())).unwrap()
    };
    // Refused: no cookie; wrong token; another site.
    let r = post(form("f1", &csrf), vec![("Origin", &origin)]);
    assert_eq!(r.status, 403, "no cookie: {}", r.body);
    assert!(r.body.contains("did not come from this site"), "an HTML page: {}", r.body);
    let r = post(form("f1", &"0".repeat(64)), vec![("Cookie", &cookie), ("Origin", &origin)]);
    assert_eq!(r.status, 403, "wrong token: {}", r.body);
    let r = post(form("f1", &csrf), vec![("Cookie", &cookie), ("Origin", "https://evil.example")]);
    assert_eq!(r.status, 403, "another origin: {}", r.body);
    let r =
        post(form("f1", &csrf), vec![("Cookie", &cookie), ("Referer", "https://evil.example/x")]);
    assert_eq!(r.status, 403, "another referer: {}", r.body);
    let r = rt
        .block_on(c.request(
            "POST",
            "/reserve",
            &[("Content-Type", "application/json"), ("Origin", "https://evil.example")],
            br#"{"name":"f1","email":"form@example.com"}"#,
        ))
        .unwrap();
    assert_eq!(r.status, 403, "JSON from another origin: {}", r.body);
    // Accepted: the pair, from this site; the result page shows the full name.
    let r = post(form("F1", &csrf), vec![("Cookie", &cookie), ("Origin", &origin)]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    assert!(
        r.body.contains("Check your mail") && r.body.contains(&format!("f1.{ZONE}")),
        "{}",
        r.body
    );
    // Taken, as a page.
    let other = format!("name=f1&email=someone-else%40example.com&csrf={csrf}");
    let r = post(other, vec![("Cookie", &cookie), ("Origin", &origin)]);
    assert_eq!(r.status, 409, "{}", r.body);
    // The form comes back as typed, with what to change.
    assert!(r.body.contains("id=\"error\"") && r.body.contains("already taken"), "{}", r.body);
    assert!(r.body.contains("value=\"someone-else@example.com\""), "{}", r.body);
    let r = post(form("-bad", &csrf), vec![("Cookie", &cookie), ("Origin", &origin)]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("cannot start or end with a hyphen") && r.body.contains("value=\"-bad\""),
        "{}",
        r.body
    );
    // Every page forbids framing and caching.
    assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    // Methods.
    let r = rt.block_on(c.get("/reserve")).unwrap();
    assert_eq!(r.status, 405);
    let r = rt.block_on(c.get("/nope")).unwrap();
    assert_eq!(r.status, 404);
    let r = rt.block_on(c.get("/app.js")).unwrap();
    assert!(r.status == 200 && r.body.contains("/api/availability"), "{}", r.body);
}

#[test]
fn store_down_answers_503_and_writes_nothing() {
    let pg = TestPostgres::start();
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-i4");
    let store =
        format!("[store]\nurl = \"{}\"\ntimeout_ms = 3000\nconnect_timeout_ms = 1000\n", pg.url());
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, &store);
    let c = Client::new(edge.https);
    let rt = runtime();
    let r = rt.block_on(c.reserve("before", "before@example.com")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    pg.kill();
    let r = rt.block_on(c.reserve("during", "during@example.com")).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (503, Some("unavailable")), "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    let r = rt.block_on(c.get("/api/availability?name=during")).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    pg.start_again();
    // Back: the failed reservation left nothing (name and email free), the earlier one stands.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = rt.block_on(c.get("/api/availability?name=during")).unwrap();
        if r.status == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.json()["available"], true, "{}", r.body);
    let r = rt.block_on(c.get("/api/availability?name=before")).unwrap();
    assert_eq!(r.json()["available"], false, "{}", r.body);
    let r = rt.block_on(c.reserve("during-2", "during@example.com")).unwrap();
    assert_eq!(r.status, 201, "the email was not half-held: {}", r.body);
    let rows =
        pg.psql("outpost", "SELECT count(*) FROM kv WHERE ns = 'reserve.name' AND key = 'during'");
    assert_eq!(rows, "0");

    // A shared store without a shared secret is refused at start, with the reason.
    let cfg = dir.0.join("no-secret.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\
             [store]\nurl = \"{}\"\n[reserve]\nhost = \"{HOST}\"\n",
            free_port(),
            free_port(),
            dir.0.join("data2").display(),
            pg.url()
        ),
    )
    .unwrap();
    let out = outpost_testkit::run_client(
        std::process::Command::new(outpost_testkit::outpost_bin())
            .args(["run", "--no-xdp", "--config"])
            .arg(&cfg),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("secret_file is required"), "{err}");
}

#[test]
fn operator_tools_list_show_release_export() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-i5");
    let mut edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "");
    let c = Client::new(edge.https);
    let rt = runtime();
    for (n, e) in
        [("alpha", "a@example.com"), ("beta", "b@example.com"), ("gamma", "g@example.com")]
    {
        assert_eq!(rt.block_on(c.reserve(n, e)).unwrap().status, 201);
    }
    let mail = smtp.wait_for("b@example.com", 1, Duration::from_secs(20));
    let (_, path) = confirm_link(&mail[0]);
    assert_eq!(rt.block_on(c.get(&path)).unwrap().status, 200);

    // Admin API.
    let (s, list) = edge.admin_get("/reservations").unwrap();
    assert_eq!(s, 200, "{list}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let names: Vec<_> = list.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert_eq!(list[1]["state"], "confirmed");
    let (s, page) = edge.admin_get("/reservations?after=alpha&limit=1").unwrap();
    assert_eq!(s, 200);
    assert!(page.contains("\"beta\"") && !page.contains("gamma"), "{page}");
    let (s, show) = edge.admin_get("/reservations/show?name=gamma").unwrap();
    assert!(s == 200 && show.contains("g@example.com") && show.contains("pending"), "{show}");
    let (s, _) = edge.admin_get("/reservations/show?name=nobody").unwrap();
    assert_eq!(s, 404);
    let (s, csv) = edge.admin_get("/reservations/export").unwrap();
    assert_eq!(s, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "name,email,state,created_utc,expires_utc,confirmed_utc");
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[2].starts_with("beta,b@example.com,confirmed,"), "{csv}");
    let (s, body) = edge.admin_post("/reservations/release?name=beta").unwrap();
    assert_eq!(s, 200, "{body}");
    let (s, _) = edge.admin_post("/reservations/release?name=beta").unwrap();
    assert_eq!(s, 404);
    // Released: name and email are free on the public side at once.
    let r = rt.block_on(c.reserve("beta", "b2@example.com")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = rt.block_on(c.reserve("beta-two", "b@example.com")).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, ev) = edge.admin_get("/audit?kind=reserve.release").unwrap();
        if ev.contains("b@example.com") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no release audit event: {ev}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The real command, beside the running edge (it shares the embedded store).
    let config = edge.dir.0.join("outpost.toml");
    let cmd = |args: &[&str]| {
        let out = outpost_testkit::run_client(
            std::process::Command::new(outpost_testkit::outpost_bin())
                .arg("reservations")
                .args(args)
                .arg("--config")
                .arg(&config),
            Duration::from_secs(30),
        );
        let text =
            format!("{}{}", outpost_testkit::stdout(&out), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = cmd(&["list"]);
    assert!(
        ok && text.contains("alpha") && text.contains("gamma") && text.contains("pending"),
        "{text}"
    );
    let (ok, text) = cmd(&["show", "gamma"]);
    assert!(ok && text.contains("g@example.com"), "{text}");
    let (ok, text) = cmd(&["export", "--csv"]);
    assert!(ok && text.starts_with("name,email,state,"), "{text}");
    let (_, listed) = cmd(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("list --json");
    assert_eq!(text.lines().count(), 1 + listed.as_array().unwrap().len(), "{text}");
    let (ok, text) = cmd(&["release", "gamma"]);
    assert!(ok && text.contains("released gamma"), "{text}");
    let (ok, text) = cmd(&["show", "gamma"]);
    assert!(!ok && text.contains("gamma is not reserved"), "{text}");
    let r = rt.block_on(c.get("/api/availability?name=gamma")).unwrap();
    assert_eq!(
        r.json()["available"],
        true,
        "released by the command, seen by the edge: {}",
        r.body
    );

    // The library's commands, on the store of the stopped edge.
    edge.signal(libc::SIGTERM);
    assert!(edge.wait_exit(Duration::from_secs(15)).is_some(), "edge did not stop");
    let store = Store::open(&StoreConfig::default(), &edge.dir.0.join("data")).unwrap();
    cli::run(Command::List { after: None, limit: 10, json: false }, &store).unwrap();
    cli::run(Command::List { after: None, limit: 10, json: true }, &store).unwrap();
    cli::run(Command::Show { name: "alpha".into(), json: false }, &store).unwrap();
    cli::run(Command::Export { csv: true }, &store).unwrap();
    let err = cli::run(Command::Show { name: "nobody".into(), json: false }, &store).unwrap_err();
    assert!(err.to_string().contains("nobody is not reserved"), "{err}");
    cli::run(Command::Release { name: "alpha".into() }, &store).unwrap();
    let err = cli::run(Command::Release { name: "alpha".into() }, &store).unwrap_err();
    assert!(err.to_string().contains("not reserved"), "{err}");
    let res =
        Reservations { store: store.clone(), hold: Duration::from_secs(60), mails_per_hour: 1 };
    let check = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(check.block_on(res.holder("alpha")).unwrap().is_none(), "released by the CLI");
    assert!(check.block_on(res.holder("beta")).unwrap().is_some());
    let events = check
        .block_on(store.query_audit(&outpost_store::AuditQuery {
            kind: Some("reserve.release".into()),
            ..Default::default()
        }))
        .unwrap();
    assert!(events.iter().any(|e| e.user.as_deref() == Some("a@example.com")), "{events:?}");
    store.shutdown();
}
