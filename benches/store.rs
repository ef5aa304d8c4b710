//! `store-bench`: durable unique inserts through outpost's store, against the database's own
//! ceiling measured in the same run (`cargo xtask bench store`).
//!
//! At 1, 16 and 256 concurrent callers, each caller inserting fresh keys as fast as it can:
//! - `sqlite (store)`: embedded SQLite, WAL, `synchronous=FULL`, group commit;
//! - `postgres (store, pool 16)`: a PostgreSQL the bench starts itself (fsync on), through
//!   the store with its default pool; with more callers than that, also
//!   `postgres (store, pool N)` with as many connections as callers, as pgbench has;
//! - `pgbench`: the same `INSERT ... ON CONFLICT` the store sends, straight to that PostgreSQL
//!   with `pgbench -n -M prepared -f insert.sql -c N -j 2 -T secs`, random unique keys: the
//!   engine's own ceiling at that concurrency.
//!
//! Every insert is acknowledged only once durable. The systems take turns in rounds (5 of
//! 2 s per cell), so interference from elsewhere on the machine falls on all of them alike, and
//! each row says how much CPU other processes took meanwhile. Reports inserts/s, p50, p99 and
//! the ratio to pgbench as a markdown table on stdout and in `<results>/<UTC stamp>/store.txt`,
//! everything as JSON in `store.json`. It reports; it never asserts a number.

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
    /// Concurrent callers, one group of rows each.
    #[arg(long, value_delimiter = ',', default_values_t = CALLERS)]
    callers: Vec<usize>,
    /// PostgreSQL connections of the store (its `pool_size`; default: the store's default).
    #[arg(long)]
    pool: Option<usize>,
    /// Reports go to `<results>/<UTC timestamp>/`.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

const CALLERS: [usize; 3] = [1, 16, 256];
/// Rounds each cell is split into (full size).
const ROUNDS: usize = 5;
/// Bytes per value: an OIDC nonce record or a reservation is of this order.
const VALUE_LEN: usize = 64;

/// One cell of the table, accumulated over the rounds.
struct Cell {
    callers: usize,
    system: String,
    seconds: f64,
    hist: Histogram<u64>,
    errors: u64,
    /// CPU that processes outside this bench took while the cell ran, in cores.
    foreign_cores: f64,
}

impl Cell {
    fn new(callers: usize, system: String) -> Cell {
        Cell { callers, system, seconds: 0.0, hist: new_hist(), errors: 0, foreign_cores: 0.0 }
    }

    fn add(&mut self, run: Run, cpu: f64) {
        // Weighted by time, so foreign_cores stays an average over the cell.
        let total = self.seconds + run.seconds;
        self.foreign_cores =
            (self.foreign_cores * self.seconds + cpu * run.seconds) / total.max(1e-9);
        self.seconds = total;
        let _ = self.hist.add(&run.hist);
        self.errors += run.errors;
    }

    fn inserts(&self) -> u64 {
        self.hist.len()
    }

    fn rate(&self) -> f64 {
        self.inserts() as f64 / self.seconds.max(1e-9)
    }
}

/// One timed run of one system.
struct Run {
    seconds: f64,
    hist: Histogram<u64>,
    errors: u64,
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
    let pool_size = args.pool.unwrap_or(StoreConfig::default().pool_size);
    let pg_cfg = StoreConfig { url: Some(pg.url()), pool_size, ..StoreConfig::default() };
    let script = work.path().join("insert.sql");
    std::fs::write(&script, pgbench_script())?;

    // Systems take turns in short rounds, so that whatever else the machine does (a build,
    // a checkpoint) falls on all of them alike.
    let rounds = if args.tiny { 1 } else { ROUNDS };
    let slice = Duration::from_secs_f64(secs as f64 / rounds as f64);
    let mut cells = Vec::new();
    let mut batch_means = Vec::new();
    for &callers in &args.callers {
        // Every PostgreSQL run starts from an empty table and SQLite from a new file per
        // caller count, so no system inherits a larger index from another.
        let dir = TempDir::new("outpost-store-bench-sqlite");
        let sqlite = Store::open(&StoreConfig::default(), dir.path())?;
        // A store per caller count, so its group-commit mean is this row's.
        let pg_store = Store::open(&pg_cfg, work.path())?;
        // With more callers than connections, also a store with a connection per caller, as
        // pgbench has: its batches stay small, which shows what the store's group commit
        // brings beside what more connections bring.
        let wide = if callers > pool_size {
            let cfg = StoreConfig { pool_size: callers, ..pg_cfg.clone() };
            Some(Store::open(&cfg, work.path())?)
        } else {
            None
        };
        let mut row = vec![
            Cell::new(callers, "sqlite (store)".into()),
            Cell::new(callers, format!("postgres (store, pool {pool_size})")),
        ];
        if wide.is_some() {
            row.push(Cell::new(callers, format!("postgres (store, pool {callers})")));
        }
        row.push(Cell::new(callers, "pgbench".into()));
        for round in 0..rounds {
            eprintln!("store-bench: {callers} callers, round {}/{rounds}", round + 1);
            let mut stores = vec![&sqlite, &pg_store];
            stores.extend(wide.as_ref());
            for (cell, store) in row.iter_mut().zip(stores) {
                if !std::ptr::eq(store, &sqlite) {
                    pg.psql("outpost", "TRUNCATE kv");
                }
                let cpu = CpuProbe::now();
                let run = measure(&rt, store, callers, slice, warmup, round);
                cell.add(run, cpu.foreign_cores());
            }
            pg.psql("outpost", "TRUNCATE kv");
            let cpu = CpuProbe::now();
            let run = pgbench(&pg, &script, work.path(), callers, slice)?;
            if let Some(cell) = row.last_mut() {
                cell.add(run, cpu.foreign_cores());
            }
        }
        drop(wide);
        batch_means.push((
            callers,
            sqlite.metrics().commit_batch_mean(),
            pg_store.metrics().commit_batch_mean(),
        ));
        drop(sqlite);
        cells.extend(row);
    }

    let stamp = utc_stamp();
    let report = render(&cells, &batch_means, secs, rounds, args.tiny, &stamp);
    print!("{report}");
    let dir = args.results.join(&stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = json!({
        "bench": "store",
        "timestamp": stamp,
        "tiny": args.tiny,
        "seconds_per_cell": secs,
        "rounds": rounds,
        "value_bytes": VALUE_LEN,
        "store_pool_size": pool_size,
        "pgbench": format!(
            "pgbench -n -M prepared -f insert.sql -c N -j 2 -T {}",
            slice.as_secs_f64()
        ),
        "insert_sql": pgbench_script(),
        "cells": cells.iter().map(|c| json!({
            "callers": c.callers,
            "system": c.system,
            "inserts": c.inserts(),
            "seconds": c.seconds,
            "inserts_per_s": c.rate(),
            "p50_ms": c.hist.value_at_quantile(0.5) as f64 / 1e3,
            "p99_ms": c.hist.value_at_quantile(0.99) as f64 / 1e3,
            "errors": c.errors,
            "foreign_cpu_cores": c.foreign_cores,
            "ratio_to_pgbench": ratio(&cells, c),
        })).collect::<Vec<_>>(),
        "commit_batch_mean": batch_means.iter()
            .map(|(c, sq, pg)| json!({"callers": c, "sqlite": sq, "postgres": pg}))
            .collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("store.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(dir.join("store.txt"), &report)?;
    eprintln!("store-bench: wrote {}", dir.join("store.json").display());
    if args.tiny {
        // The smoke run fails when a system could not run at all, so the bench cannot rot.
        if let Some(c) = cells.iter().find(|c| c.inserts() == 0) {
            bail!("{} at {} callers inserted nothing", c.system, c.callers);
        }
    }
    Ok(())
}

/// `callers` tasks inserting fresh keys for `length` after a warm-up (the pool fills,
/// SQLite's caches warm), each insert timed from call to acknowledgement.
fn measure(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    callers: usize,
    length: Duration,
    warmup: Duration,
    round: usize,
) -> Run {
    let value = Arc::new([0x5au8; VALUE_LEN]);
    rt.block_on(async {
        let _ = run_callers(store, &value, callers, warmup, &format!("w{round}")).await;
        let started = Instant::now();
        let (hist, errors) =
            run_callers(store, &value, callers, length, &format!("m{round}")).await;
        Run { seconds: started.elapsed().as_secs_f64(), hist, errors }
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
    length: Duration,
) -> Result<Run> {
    // pgbench's clock starts before its connections are up, and 256 of them take a while on
    // a busy machine: at least 3 s, or a short run measures nothing. Its rate excludes the
    // connection time either way. A run that still logged nothing (the machine was that busy)
    // is run once more, four times as long; only then is it the bench's failure.
    let secs = length.as_secs().max(3);
    match pgbench_once(pg, script, work, callers, secs)? {
        (run, _) if !run.hist.is_empty() => Ok(run),
        (_, stdout) => {
            eprintln!(
                "store-bench: pgbench at {callers} callers logged no transaction in {secs} s \
                 ({}); once more for {} s",
                stdout
                    .lines()
                    .filter(|l| l.contains("tps") || l.contains("failed"))
                    .collect::<Vec<_>>()
                    .join("; "),
                secs * 4
            );
            let (run, stdout) = pgbench_once(pg, script, work, callers, secs * 4)?;
            if run.hist.is_empty() {
                bail!("pgbench at {callers} callers logged no transaction twice: {stdout}");
            }
            Ok(run)
        }
    }
}

/// One pgbench run of `secs`; the run and pgbench's report.
fn pgbench_once(
    pg: &TestPostgres,
    script: &Path,
    work: &Path,
    callers: usize,
    secs: u64,
) -> Result<(Run, String)> {
    let logs = work.join(format!("pgbench-{callers}"));
    // Fresh per run: pgbench names its logs by PID and thread, and we read them all.
    let _ = std::fs::remove_dir_all(&logs);
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
    let seconds = match tps {
        Some(tps) if tps > 0.0 => hist.len() as f64 / tps,
        _ => secs as f64,
    };
    Ok((Run { seconds, hist, errors: failed }, stdout.into_owned()))
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
    batch_means: &[(usize, Option<f64>, Option<f64>)],
    secs: u64,
    rounds: usize,
    tiny: bool,
    stamp: &str,
) -> String {
    let mut s = String::new();
    let size = if tiny { " (tiny: numbers mean little)" } else { "" };
    let _ = writeln!(
        s,
        "\nstore-bench {stamp}{size}: durable unique inserts, {secs} s per cell in {rounds} \
         interleaved rounds, {VALUE_LEN}-byte values; {} cores shared by PostgreSQL, pgbench and \
         the store\n",
        cores()
    );
    let _ =
        writeln!(s, "| callers | system | inserts/s | p50 | p99 | ratio to pgbench | other CPU |");
    let _ = writeln!(s, "| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for c in cells {
        let errors = if c.errors > 0 { format!(" ({} errors)", c.errors) } else { String::new() };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0}{errors} | {} | {} | {} | {:.2} cores |",
            c.callers,
            c.system,
            c.rate(),
            ms(c.hist.value_at_quantile(0.5)),
            ms(c.hist.value_at_quantile(0.99)),
            ratio(cells, c).map_or("-".to_owned(), |r| format!("{r:.2}x")),
            c.foreign_cores,
        );
    }
    let _ = writeln!(s);
    for (callers, sqlite, pg) in batch_means {
        let mean = |m: &Option<f64>| m.map_or("-".to_owned(), |m| format!("{m:.1}"));
        let _ = writeln!(
            s,
            "group commit at {callers} callers, inserts per commit: sqlite {}, postgres (store, \
             default pool) {}",
            mean(sqlite),
            mean(pg)
        );
    }
    let _ = writeln!(
        s,
        "other CPU: what processes outside this bench used meanwhile (a build, say); near 0 for \
         numbers to trust"
    );
    let _ = writeln!(
        s,
        "targets: embedded >= 5,000 inserts/s at 256 callers; postgres (store) >= 0.8x pgbench"
    );
    s
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
}

/// Busy CPU of the whole machine and of this bench's process tree (itself, PostgreSQL and its
/// backends, pgbench; children that exited count through their parent's cumulative times).
struct CpuProbe {
    at: Instant,
    machine: u64,
    ours: u64,
}

impl CpuProbe {
    fn now() -> CpuProbe {
        CpuProbe { at: Instant::now(), machine: machine_ticks(), ours: tree_ticks() }
    }

    /// Cores' worth of CPU used by other processes since `self`.
    fn foreign_cores(&self) -> f64 {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let machine = machine_ticks().saturating_sub(self.machine);
        let ours = tree_ticks().saturating_sub(self.ours);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        machine.saturating_sub(ours) as f64 / hz / secs
    }
}

fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else { return 0 };
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let f: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

fn tree_ticks() -> u64 {
    let me = std::process::id();
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command may hold spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
        procs.push((pid, num(1) as u32, num(11) + num(12) + num(13) + num(14)));
    }
    let mut tree = vec![me];
    let mut total = 0;
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, ticks) in &procs {
            if pid == parent {
                total += ticks;
            }
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    total
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
