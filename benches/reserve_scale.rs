//! `reserve-bench --preload N`: the spike again against a store that already holds N
//! reservations and their audit log, loaded in bulk (SQL inside the database: no edge, no
//! client), beside the same spike on an empty store in the same run. Then, on that store, what
//! an operator and a user touch at that size: `outpost reservations list` pages, `export
//! --csv` (time to the first row, memory), `outpost audit --since 1h` on a log grown to
//! `--audit-events` (with the plans), the availability check (client and server side), and
//! writers' p99 while `[audit] keep_days` prunes half of that log.

use super::*;

/// What `--preload` measured on one store.
pub(super) struct Scale {
    pub preload: u64,
    pub preload_secs: f64,
    pub list: Vec<(String, f64)>,
    pub export_first_row_ms: f64,
    pub export_secs: f64,
    pub export_rows: u64,
    pub export_max_rss_kb: u64,
    pub audit_events: u64,
    pub audit_load_secs: f64,
    /// (filters, wall ms of `outpost audit` each time, query plan).
    pub audit: Vec<(String, Vec<f64>, String)>,
    pub avail_client_p50_us: u64,
    pub avail_client_p99_us: u64,
    pub avail_server_p99_us: Option<f64>,
    pub prune_rate: u64,
    pub p99_without_prune_us: u64,
    pub p99_with_prune_us: u64,
    pub pruned: u64,
}

impl Scale {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "preloaded_reservations": self.preload,
            "preload_secs": self.preload_secs,
            "list_ms": self.list.iter().map(|(k, v)| json!({"page": k, "ms": v})).collect::<Vec<_>>(),
            "export_first_row_ms": self.export_first_row_ms,
            "export_secs": self.export_secs,
            "export_rows": self.export_rows,
            "export_max_rss_kb": self.export_max_rss_kb,
            "audit_events": self.audit_events,
            "audit_load_secs": self.audit_load_secs,
            "audit_query_ms": self.audit.iter().map(|(k, v, plan)| json!({"filters": k, "ms": v, "plan": plan})).collect::<Vec<_>>(),
            "availability_client_p50_us": self.avail_client_p50_us,
            "availability_client_p99_us": self.avail_client_p99_us,
            "availability_server_p99_us": self.avail_server_p99_us,
            "prune_rate": self.prune_rate,
            "p99_without_prune_us": self.p99_without_prune_us,
            "p99_with_prune_us": self.p99_with_prune_us,
            "pruned_during_run": self.pruned,
        })
    }
}

const DAY_MS: i64 = 86_400_000;
/// Preloaded reservations spread over this many days before now.
const SPREAD_DAYS: i64 = 30;
/// `[audit] keep_days` of the prune run: the grown log spans twice that.
const KEEP_DAYS: i64 = 30;

/// The two dialects' differences in the bulk SQL.
struct Dialect {
    pg: bool,
}

impl Dialect {
    fn blob(&self, text: &str) -> String {
        if self.pg {
            format!("convert_to({text}, 'UTF8')")
        } else {
            format!("CAST({text} AS BLOB)")
        }
    }
    /// A table `pre(i, t, pending)` of `n` reservations.
    fn series(&self, n: u64, now: i64) -> String {
        let step = SPREAD_DAYS * DAY_MS / n.max(1) as i64;
        if self.pg {
            format!(
                "CREATE TEMP TABLE pre AS SELECT i, {now} - ({n} - i) * {step} AS t, \
                 i % 10 = 0 AS pending FROM generate_series(0::int8, {n} - 1) AS i;"
            )
        } else {
            format!(
                "CREATE TEMP TABLE pre AS WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL \
                 SELECT i + 1 FROM s WHERE i + 1 < {n}) \
                 SELECT i, {now} - ({n} - i) * {step} AS t, i % 10 = 0 AS pending FROM s;"
            )
        }
    }
    fn token(&self) -> &'static str {
        if self.pg {
            "md5(i::text) || md5((-1 - i)::text)"
        } else {
            "lower(hex(randomblob(32)))"
        }
    }
    fn expiry_key(&self, until: &str) -> String {
        if self.pg {
            format!("lpad(({until})::text, 20, '0') || '/pre' || i")
        } else {
            format!("printf('%020d/pre%d', {until}, i)")
        }
    }
    /// `n` rows of `pre` as i over [0, n).
    fn numbers(&self, n: u64) -> String {
        if self.pg {
            format!("(SELECT i FROM generate_series(0::int8, {n} - 1) AS i) AS s")
        } else {
            format!(
                "(WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {n}) \
                 SELECT i FROM s) AS s"
            )
        }
    }
}

/// N reservations as the reserve handler writes them (name, email, token rows; an expiry
/// marker for the pending tenth), and their audit events (a reservation each, a confirmation
/// for the confirmed ones), spread over the last [`SPREAD_DAYS`]. Names `pre<i>`, emails
/// `q<i>@preload.example`: none is a name or an email the spike sends (`e<n>`, `p<n>`,
/// `hot-<n>`, `b<n>@bench.example`), so the spike's reservations are all new ones.
fn reservations_sql(d: &Dialect, n: u64, now: i64) -> String {
    let hold_left = 12 * 3_600_000;
    let until = format!("CASE WHEN pending THEN {now} + {hold_left} ELSE t + {DAY_MS} END");
    let state = "CASE WHEN pending THEN 'pending' ELSE 'confirmed' END";
    let live = format!("CASE WHEN pending THEN {now} + {hold_left} END");
    let name = d.blob(&format!(
        "'{{\"email\":\"q' || i || '@preload.example\",\"state\":\"' || {state} || \
         '\",\"created_ms\":' || t || ',\"hold_until_ms\":' || ({until}) || \
         CASE WHEN pending THEN ',\"mails\":[' || t || ']}}' ELSE ',\"confirmed_ms\":' || t || '}}' END"
    ));
    let email = d.blob(&format!(
        "'{{\"name\":\"pre' || i || '\",\"state\":\"' || {state} || '\",\"created_ms\":' || t || '}}'"
    ));
    let token = d.blob(&format!(
        "'{{\"name\":\"pre' || i || '\",\"email\":\"q' || i || '@preload.example\",\"created_ms\":' \
         || t || ',\"hold_until_ms\":' || ({until}) || ',\"used\":' || \
         CASE WHEN pending THEN 'false' ELSE 'true' END || '}}'"
    ));
    let marker = d.blob(
        "'{\"name\":\"pre' || i || '\",\"email\":\"q' || i || '@preload.example\",\"created_ms\":' || t || '}'",
    );
    let grace = 30 * DAY_MS;
    format!(
        "{series}
         INSERT INTO kv (ns, key, value, expires_at)
           SELECT 'reserve.name', 'pre' || i, {name}, {live} FROM pre;
         INSERT INTO kv (ns, key, value, expires_at)
           SELECT 'reserve.email', 'q' || i || '@preload.example', {email}, {live} FROM pre;
         INSERT INTO kv (ns, key, value, expires_at)
           SELECT 'reserve.token', {tok}, {token}, ({until}) + {grace} FROM pre;
         INSERT INTO kv (ns, key, value, expires_at)
           SELECT 'reserve.expiry', {ekey}, {marker}, {now} + {hold_left} + {grace}
           FROM pre WHERE pending;
         INSERT INTO audit (time_ms, node, client, host, path, user_name, kind, outcome, reason)
           SELECT t, 'preload', '127.0.0.1', '{HOST}', '/reserve', 'q' || i || '@preload.example',
                  'reserve.reserve', 'success', 'pending pre' || i FROM pre;
         INSERT INTO audit (time_ms, node, client, host, path, user_name, kind, outcome, reason)
           SELECT t + 60000, 'preload', '127.0.0.1', '{HOST}', '/confirm',
                  'q' || i || '@preload.example', 'reserve.confirm', 'success', 'pre' || i
           FROM pre WHERE NOT pending;
         DROP TABLE pre;",
        series = d.series(n, now),
        tok = d.token(),
        ekey = d.expiry_key(&format!("{now} + {hold_left}")),
    )
}

/// `n` more audit events (Access logins of 100,000 users), spread over twice [`KEEP_DAYS`].
fn audit_sql(d: &Dialect, n: u64, now: i64) -> String {
    let step = (2 * KEEP_DAYS * DAY_MS / n.max(1) as i64).max(1);
    format!(
        "INSERT INTO audit (time_ms, node, client, host, path, user_name, kind, outcome, reason)
           SELECT {now} - ({n} - i) * {step}, 'preload', '10.0.' || (i % 250) || '.1', \
                  'app.example.test', '/callback', 'u' || (i % 100000) || '@preload.example', \
                  'access.login', 'success', NULL FROM {nums};",
        nums = d.numbers(n)
    )
}

/// Bulk-loads `n` reservations into the store of `work` (its schema made first by opening it).
pub(super) fn preload(work: &Path, pg: Option<&TestPostgres>, n: u64) -> Result<f64> {
    migrate(work, pg)?;
    let started = Instant::now();
    let now = now_ms();
    match pg {
        Some(pg) => {
            pg.psql("outpost", &reservations_sql(&Dialect { pg: true }, n, now));
            // One statement each: psql runs several as one transaction, VACUUM runs in none.
            pg.psql("outpost", "VACUUM ANALYZE kv");
            pg.psql("outpost", "VACUUM ANALYZE audit");
            // The load's pages on disk now, not in a checkpoint during the spike.
            pg.psql("outpost", "CHECKPOINT");
        }
        None => outpost_store::testing::sqlite_bulk(
            &work.join("data"),
            &format!(
                "BEGIN; {} COMMIT; ANALYZE;",
                reservations_sql(&Dialect { pg: false }, n, now)
            ),
        ),
    }
    Ok(started.elapsed().as_secs_f64())
}

fn migrate(work: &Path, pg: Option<&TestPostgres>) -> Result<()> {
    let cfg = outpost_store::StoreConfig {
        url: pg.map(|p| p.url()),
        ..outpost_store::StoreConfig::default()
    };
    let store = outpost_store::Store::open(&cfg, &work.join("data"))?;
    store.shutdown();
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(super) fn count(work: &Path, pg: Option<&TestPostgres>, sql: &str) -> u64 {
    let text = match pg {
        Some(pg) => pg.psql("outpost", sql),
        None => outpost_store::testing::sqlite_rows(&work.join("data"), sql)
            .first()
            .and_then(|r| r.first().cloned())
            .unwrap_or_default(),
    };
    text.trim().parse().unwrap_or(0)
}

/// Runs `outpost <args> --config <work>/outpost.toml`: (wall ms, stdout).
fn cli(outpost: &Path, work: &Path, args: &[&str]) -> Result<(f64, String)> {
    let started = Instant::now();
    let out = Command::new(outpost)
        .args(args)
        .arg("--config")
        .arg(work.join("outpost.toml"))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running outpost {args:?}"))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!("outpost {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((ms, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `outpost reservations export --csv` under GNU time: (first data row ms, total s, rows,
/// max RSS in KiB). The rows are read as they come and thrown away.
pub(super) fn export(outpost: &Path, work: &Path) -> Result<(f64, f64, u64, u64)> {
    use std::io::BufRead as _;
    let rss = work.join("export.rss");
    let started = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&rss)
        .args(["-f", "%M"])
        .arg(outpost)
        .args(["reservations", "export", "--csv", "--config"])
        .arg(work.join("outpost.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running outpost reservations export under /usr/bin/time")?;
    let out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let (mut first, mut rows) = (None, 0u64);
    for line in out.lines() {
        line?;
        rows += 1;
        if rows == 2 {
            first = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let status = child.wait()?;
    let total = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("export failed: {status}");
    }
    let kb = std::fs::read_to_string(&rss)?.trim().lines().last().unwrap_or("0").parse()?;
    Ok((first.unwrap_or(f64::NAN), total, rows.saturating_sub(1), kb))
}

/// Sequential availability checks over one keep-alive TLS connection, half for held names,
/// half for free ones: client (p50, p99) in µs.
async fn availability(client: &Client, n: u64, checks: u64) -> Result<(u64, u64)> {
    let mut conn = client.connect().await?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for k in 0..checks {
        if Instant::now() > deadline {
            break;
        }
        let name =
            if k % 2 == 0 { format!("pre{}", (k * 7919) % n.max(1)) } else { format!("free{k}") };
        let started = Instant::now();
        let status = conn.get(&format!("/api/availability?name={name}")).await?;
        if status != 200 {
            bail!("availability of {name} answered {status}");
        }
        hist.saturating_record(started.elapsed().as_micros().max(1) as u64);
    }
    Ok((hist.value_at_quantile(0.5), hist.value_at_quantile(0.99)))
}

/// The edge's own p99 over every request it served, from its summary on /metrics.
fn server_p99_us(edge: &Edge) -> Option<f64> {
    let (_, text) = admin_get(edge.admin, "/metrics", None)?;
    text.lines()
        .find(|l| l.starts_with("outpost_request_duration_seconds{quantile=\"0.99\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
}

/// Everything after the spike on the preloaded store: the edge of the spike is gone.
#[allow(clippy::too_many_arguments)]
pub(super) fn after_spike(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    outpost: &Path,
    work: &Path,
    pg: Option<&TestPostgres>,
    smtp: &Smtp,
    n: u64,
    preload_secs: f64,
    knee_rate: u64,
    seq: &mut u64,
    store: &str,
) -> Result<Scale> {
    let url = pg.map(|p| p.url());
    // Paging: the first page, one from the middle, the last.
    let mut list = Vec::new();
    for (label, after) in [("first", None), ("middle", Some(n / 2)), ("end", Some(n - n / 1000))] {
        let after_arg = after.map(|a| format!("pre{a}"));
        let mut a = vec!["reservations", "list", "--limit", "100"];
        if let Some(x) = &after_arg {
            a.extend(["--after", x]);
        }
        let (ms, out) = cli(outpost, work, &a)?;
        if !out.contains("(100 shown)") {
            bail!("list {label}: {out}");
        }
        list.push((label.to_owned(), ms));
    }
    eprintln!("  list pages (ms): {list:?}");
    let (first_row, export_secs, export_rows, rss) = export(outpost, work)?;
    eprintln!(
        "  export: first row {first_row:.1} ms, {export_rows} rows in {export_secs:.1} s, max RSS {rss} KiB"
    );

    // The audit log grown to --audit-events.
    let have = count(work, pg, "SELECT count(*) FROM audit");
    let more = args.audit_events.saturating_sub(have);
    let started = Instant::now();
    let d = Dialect { pg: pg.is_some() };
    match pg {
        Some(pg) => {
            pg.psql("outpost", &audit_sql(&d, more, now_ms()));
            pg.psql("outpost", "VACUUM ANALYZE audit");
            pg.psql("outpost", "CHECKPOINT");
        }
        None => outpost_store::testing::sqlite_bulk(
            &work.join("data"),
            &format!("BEGIN; {} COMMIT; ANALYZE;", audit_sql(&d, more, now_ms())),
        ),
    }
    let audit_load_secs = started.elapsed().as_secs_f64();
    let audit_events = have + more;
    eprintln!("  audit log: {audit_events} events ({more} loaded in {audit_load_secs:.0} s)");
    let since = now_ms() - 3_600_000;
    let mut audit = Vec::new();
    for (label, flags, filter) in [
        ("--since 1h", vec!["--since", "1h"], format!("time_ms >= {since}")),
        (
            "--since 1h --kind reserve.confirm",
            vec!["--since", "1h", "--kind", "reserve.confirm"],
            format!("time_ms >= {since} AND kind = 'reserve.confirm'"),
        ),
        (
            "--since 1h --user u7@preload.example",
            vec!["--since", "1h", "--user", "u7@preload.example"],
            format!("time_ms >= {since} AND user_name = 'u7@preload.example'"),
        ),
    ] {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut a = vec!["audit", "--admin", admin.as_str(), "--json"];
        a.extend(flags.iter().copied());
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(cli(outpost, work, &a)?.0);
        }
        let sql = format!(
            "SELECT time_ms, node, client, host, path, user_name, kind, outcome, reason FROM audit \
             WHERE {filter} ORDER BY time_ms DESC, id DESC LIMIT 1000"
        );
        let plan = match pg {
            Some(pg) => pg.psql("outpost", &format!("EXPLAIN ANALYZE {sql}")),
            None => outpost_store::testing::sqlite_rows(
                &work.join("data"),
                &format!("EXPLAIN QUERY PLAN {sql}"),
            )
            .into_iter()
            .map(|r| r.last().cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n"),
        };
        eprintln!("  audit {label}: {times:.0?} ms\n{plan}");
        audit.push((label.to_owned(), times, plan));
    }

    // Availability on a fresh edge (its latency summary then holds only these checks).
    let edge = Edge::start(outpost, work, smtp.port, url.clone(), "", "")?;
    let client = Arc::new(Client::new(edge.https));
    let (p50, p99) = rt.block_on(availability(&client, n, 5000))?;
    let server = server_p99_us(&edge);
    eprintln!("  availability: client p50 {p50} us, p99 {p99} us; server p99 {server:?} us");
    // Writers without a prune, then with one (keep_days: half the log is past it).
    let rate = (knee_rate / 2).max(100);
    let len = Duration::from_secs(if args.tiny { 2 } else { 15 });
    let (quiet, _, _) = rt.block_on(run_step(&client, args.connections, rate, len, seq, store));
    drop(edge);
    let old =
        format!("SELECT count(*) FROM audit WHERE time_ms < {}", now_ms() - KEEP_DAYS * DAY_MS);
    let before = count(work, pg, &old);
    // A sweep every second, so the prune goes on for the whole run.
    let edge = Edge::start(
        outpost,
        work,
        smtp.port,
        url,
        "sweep_interval_ms = 1000\n",
        &format!("[audit]\nkeep_days = {KEEP_DAYS}\n"),
    )?;
    let client = Arc::new(Client::new(edge.https));
    // The sweeper's first round starts with the store; the load meets it under way.
    let (pruning, _, _) = rt.block_on(run_step(&client, args.connections, rate, len, seq, store));
    drop(edge);
    let pruned = before.saturating_sub(count(work, pg, &old));
    eprintln!(
        "  {rate}/s: p99 {:.1} ms without a prune, {:.1} ms during one ({pruned} events pruned)",
        quiet.p99_us as f64 / 1000.0,
        pruning.p99_us as f64 / 1000.0
    );
    Ok(Scale {
        preload: n,
        preload_secs,
        list,
        export_first_row_ms: first_row,
        export_secs,
        export_rows,
        export_max_rss_kb: rss,
        audit_events,
        audit_load_secs,
        audit,
        avail_client_p50_us: p50,
        avail_client_p99_us: p99,
        avail_server_p99_us: server,
        prune_rate: rate,
        p99_without_prune_us: quiet.p99_us,
        p99_with_prune_us: pruning.p99_us,
        pruned,
    })
}

/// The preloaded store against the empty one of the same run, and what was measured at size.
pub(super) fn render(r: &Report, sc: &Scale, all: &[Report]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let empty = all.iter().find(|e| e.store == r.store && e.scale.is_none());
    let rate = |x: &Report| x.knee.as_ref().map(|k| k.created_per_sec());
    let p99 = |x: Option<&Step>| x.map(|k| k.p99_us as f64);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    let _ = writeln!(
        s,
        "\n{}, {} reservations preloaded in {:.0} s: knee throughput {} the empty store's \
         (target >= 0.9x), p99 at the empty store's 80 % rate ({}/s) {} (target <= 1.2x); \
         p99 at each store's own knee {}",
        r.store,
        sc.preload,
        sc.preload_secs,
        ratio(rate(r), empty.and_then(rate)),
        r.at_empty_80.as_ref().map_or("-".into(), |s| s.rate.to_string()),
        ratio(p99(r.at_empty_80.as_ref()), p99(empty.and_then(|e| e.at_80.as_ref()))),
        ratio(p99(r.knee.as_ref()), p99(empty.and_then(|e| e.knee.as_ref()))),
    );
    let _ = writeln!(s, "- reservations list, 100 a page (CLI wall time): {:?} ms", sc.list);
    let _ = writeln!(
        s,
        "- reservations export --csv: first row {:.1} ms, {} rows in {:.1} s, max RSS {} KiB",
        sc.export_first_row_ms, sc.export_rows, sc.export_secs, sc.export_max_rss_kb
    );
    for (k, v, _) in &sc.audit {
        let _ = writeln!(
            s,
            "- outpost audit {k} on {} events (CLI wall time, 5 runs): {v:.0?} ms",
            sc.audit_events
        );
    }
    let _ = writeln!(
        s,
        "- availability: client p50 {} us, p99 {} us; the edge's own p99 {} us (target <= 1 ms)",
        sc.avail_client_p50_us,
        sc.avail_client_p99_us,
        sc.avail_server_p99_us.map_or("-".into(), |v| format!("{v:.0}"))
    );
    let _ = writeln!(
        s,
        "- writers at {}/s: p99 {:.1} ms without a prune, {:.1} ms while keep_days pruned {} events",
        sc.prune_rate,
        sc.p99_without_prune_us as f64 / 1000.0,
        sc.p99_with_prune_us as f64 / 1000.0,
        sc.pruned
    );
    s
}
