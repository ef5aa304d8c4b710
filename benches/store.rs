//! `store-bench`: durable unique inserts through outpost's store, against the database's own
//! ceiling measured in the same run (`cargo xtask bench store`).
//!
//! At 1, 16 and 256 concurrent callers, each caller inserting fresh keys as fast as it can:
//! - `sqlite (store)`: embedded SQLite, WAL, `synchronous=FULL`, group commit;
//! - `postgres (store)`: a PostgreSQL the bench starts itself (fsync on), through the store's
//!   pool (default size, 16);
//! - `pgbench`: the same `INSERT ... ON CONFLICT` the store sends, straight to that PostgreSQL
//!   with `pgbench -n -M prepared -f insert.sql -c N -j 2 -T secs`, random unique keys: the
//!   engine's own ceiling at that concurrency.
//!
//! Every insert is acknowledged only once durable. Reports inserts/s, p99 and the ratio to
//! pgbench as a markdown table on stdout and JSON under `<results>/<UTC stamp>/store.json`.
//! It reports; it never asserts a number.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use outpost_store::{
    testing::{TempDir, TestPostgres},
    Inserted, Store, StoreConfig,
};
use serde_json::json;

#[derive(Parser)]
#[command(name = "store-bench", about = "Durable unique inserts: the store against pgbench")]
struct Args {
    /// CI size: one second per cell (the numbers mean little).
    #[arg(long)]
    tiny: bool,
    /// Seconds per cell (default 10, 1 with --tiny).
    #[arg(long)]
    seconds: Option<u64>,
    /// Reports go to `<results>/<UTC timestamp>/`.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

const CALLERS: [usize; 3] = [1, 16, 256];
/// Bytes per value: an OIDC nonce record or a reservation is of this order.
const VALUE_LEN: usize = 64;

/// One cell of the table.
struct Cell {
    callers: usize,
    system: &'static str,
    inserts: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.inserts as f64 / self.seconds.max(1e-9)
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let secs = args.seconds.unwrap_or(if args.tiny { 1 } else { 10 });
    let warmup = if args.tiny { Duration::from_millis(200) } else { Duration::from_secs(1) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let work = TempDir::new("outpost-store-bench");
    eprintln!("store-bench: starting PostgreSQL");
    let pg = TestPostgres::start();
    let pg_store =
        Store::open(&StoreConfig { url: Some(pg.url()), ..StoreConfig::default() }, work.path())?;
    let script = work.path().join("insert.sql");
    std::fs::write(&script, pgbench_script())?;

    let mut cells = Vec::new();
    let mut batch_means = Vec::new();
    for &callers in &CALLERS {
        // Each cell starts from an empty table, so no system inherits the others' index.
        let dir = TempDir::new("outpost-store-bench-sqlite");
        let sqlite = Store::open(&StoreConfig::default(), dir.path())?;
        eprintln!("store-bench: {callers} callers: sqlite (store)");
        cells.push(measure(&rt, &sqlite, "sqlite (store)", callers, secs, warmup));
        batch_means.push((callers, sqlite.metrics().commit_batch_mean()));
        drop(sqlite);

        pg.psql("outpost", "TRUNCATE kv");
        eprintln!("store-bench: {callers} callers: postgres (store)");
        cells.push(measure(&rt, &pg_store, "postgres (store)", callers, secs, warmup));

        pg.psql("outpost", "TRUNCATE kv");
        eprintln!("store-bench: {callers} callers: pgbench");
        cells.push(pgbench(&pg, &script, work.path(), callers, secs)?);
    }
    drop(pg_store);

    let stamp = utc_stamp();
    let report = render(&cells, &batch_means, secs, args.tiny, &stamp);
    print!("{report}");
    let dir = args.results.join(&stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = json!({
        "bench": "store",
        "timestamp": stamp,
        "tiny": args.tiny,
        "seconds_per_cell": secs,
        "value_bytes": VALUE_LEN,
        "store_pool_size": StoreConfig::default().pool_size,
        "pgbench": format!("pgbench -n -M prepared -f insert.sql -c N -j 2 -T {secs}"),
        "insert_sql": pgbench_script(),
        "cells": cells.iter().map(|c| json!({
            "callers": c.callers,
            "system": c.system,
            "inserts": c.inserts,
            "seconds": c.seconds,
            "inserts_per_s": c.rate(),
            "p50_ms": c.p50_us as f64 / 1e3,
            "p99_ms": c.p99_us as f64 / 1e3,
            "errors": c.errors,
            "ratio_to_pgbench": ratio(&cells, c),
        })).collect::<Vec<_>>(),
        "sqlite_commit_batch_mean": batch_means.iter()
            .map(|(c, m)| json!({"callers": c, "mean": m})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("store.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(dir.join("store.txt"), &report)?;
    eprintln!("store-bench: wrote {}", dir.join("store.json").display());
    if args.tiny {
        // The smoke run fails when a system could not run at all, so the bench cannot rot.
        if let Some(c) = cells.iter().find(|c| c.inserts == 0) {
            bail!("{} at {} callers inserted nothing", c.system, c.callers);
        }
    }
    Ok(())
}

/// `callers` tasks inserting fresh keys for `secs` after a warm-up (the pool fills, SQLite's
/// caches warm), each insert timed from call to acknowledgement.
fn measure(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    system: &'static str,
    callers: usize,
    secs: u64,
    warmup: Duration,
) -> Cell {
    let value = Arc::new([0x5au8; VALUE_LEN]);
    rt.block_on(async {
        let _ = run_callers(store, &value, callers, warmup, "w").await;
        let started = Instant::now();
        let (hist, errors) =
            run_callers(store, &value, callers, Duration::from_secs(secs), "m").await;
        let seconds = started.elapsed().as_secs_f64();
        Cell {
            callers,
            system,
            inserts: hist.len(),
            seconds,
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            errors,
        }
    })
}

async fn run_callers(
    store: &Store,
    value: &Arc<[u8; VALUE_LEN]>,
    callers: usize,
    length: Duration,
    phase: &str,
) -> (Histogram<u64>, u64) {
    let deadline = Instant::now() + length;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..callers {
        let (store, value, phase) = (store.clone(), value.clone(), phase.to_owned());
        set.spawn(async move {
            let mut hist = new_hist();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = format!("{phase}-{c}-{n}");
                n += 1;
                let t = Instant::now();
                match store.insert("bench", &key, &value[..], None).await {
                    Ok(Inserted::Done) => hist.saturating_record(micros(t.elapsed())),
                    Ok(Inserted::Conflict { .. }) | Err(_) => errors += 1,
                }
            }
            (hist, errors)
        });
    }
    let mut all = new_hist();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        if let Ok((h, e)) = r {
            let _ = all.add(&h);
            errors += e;
        }
    }
    (all, errors)
}

/// The statement the store sends for `insert` (postgres.rs, INSERT), with pgbench making the
/// unique key. Prepared (-M prepared), as the store's statements are.
fn pgbench_script() -> String {
    let value: String = std::iter::repeat_n("5a", VALUE_LEN).collect();
    let now = "(extract(epoch from statement_timestamp()) * 1000)::int8";
    format!(
        "\\set r random(1, 1000000000000)\n\
         INSERT INTO kv (ns, key, value, expires_at) VALUES ('pgbench', \
         :client_id || '-' || :r || '-' || md5(random()::text), '\\x{value}'::bytea, \
         {now} + NULL::int8) ON CONFLICT (ns, key) DO UPDATE \
         SET value = excluded.value, expires_at = excluded.expires_at \
         WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= {now} RETURNING 1;\n"
    )
}

fn pgbench(
    pg: &TestPostgres,
    script: &Path,
    work: &Path,
    callers: usize,
    secs: u64,
) -> Result<Cell> {
    let logs = work.join(format!("pgbench-{callers}"));
    std::fs::create_dir_all(&logs)?;
    let out = Command::new(pg.bin_dir().join("pgbench"))
        .args(["-n", "-M", "prepared", "-f"])
        .arg(script)
        .args(["-c", &callers.to_string(), "-j", &2.min(callers).to_string()])
        .args(["-T", &secs.to_string(), "-l", "--log-prefix"])
        .arg(logs.join("tx"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "outpost", "outpost"])
        .env("PGPASSWORD", pg.password())
        .current_dir(&logs)
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Per-transaction log lines: client_id transaction_no latency_us script_no epoch epoch_us.
    let mut hist = new_hist();
    for entry in std::fs::read_dir(&logs)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|f| f.parse::<u64>().ok()) {
                hist.saturating_record(us.max(1));
            }
        }
    }
    // pgbench's own rate leaves out its connection setup (256 connections take a while).
    let tps: Option<f64> = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    let failed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions: "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let inserts = hist.len();
    let seconds = match tps {
        Some(tps) if tps > 0.0 => inserts as f64 / tps,
        _ => secs as f64,
    };
    Ok(Cell {
        callers,
        system: "pgbench",
        inserts,
        seconds,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        errors: failed,
    })
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// This cell's inserts/s over pgbench's at the same concurrency.
fn ratio(cells: &[Cell], c: &Cell) -> Option<f64> {
    let base = cells.iter().find(|b| b.callers == c.callers && b.system == "pgbench")?;
    (base.rate() > 0.0).then(|| c.rate() / base.rate())
}

fn render(
    cells: &[Cell],
    batch_means: &[(usize, Option<f64>)],
    secs: u64,
    tiny: bool,
    stamp: &str,
) -> String {
    let mut s = String::new();
    let size = if tiny { " (tiny: numbers mean little)" } else { "" };
    let _ = writeln!(
        s,
        "\nstore-bench {stamp}{size}: durable unique inserts, {secs} s per cell, {VALUE_LEN}-byte \
         values; 2-core machine, PostgreSQL, pgbench and the store on the same cores\n"
    );
    let _ = writeln!(s, "| callers | system | inserts/s | p50 | p99 | ratio to pgbench |");
    let _ = writeln!(s, "| ---: | --- | ---: | ---: | ---: | ---: |");
    for c in cells {
        let errors = if c.errors > 0 { format!(" ({} errors)", c.errors) } else { String::new() };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0}{errors} | {} | {} | {} |",
            c.callers,
            c.system,
            c.rate(),
            ms(c.p50_us),
            ms(c.p99_us),
            ratio(cells, c).map_or("-".to_owned(), |r| format!("{r:.2}x")),
        );
    }
    let _ = writeln!(s);
    for (callers, mean) in batch_means {
        if let Some(m) = mean {
            let _ =
                writeln!(s, "sqlite group commit at {callers} callers: {m:.1} inserts per fsync");
        }
    }
    let _ = writeln!(
        s,
        "targets: embedded >= 5,000 inserts/s at 256 callers; postgres (store) >= 0.8x pgbench"
    );
    s
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
}

/// `YYYYMMDD-HHMMSS`, UTC (as outpost-load names its reports).
fn utc_stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
