//! `reserve-bench`: a launch spike on the reservation page, through the real edge over TLS
//! (`cargo xtask bench reserve`). It reports; it never asserts a number.
//!
//! For each store (embedded SQLite, then a PostgreSQL the bench starts itself), an edge
//! (`outpost run`, `[reserve]`, mail to an SMTP sink in the bench) takes an open-loop load
//! of `POST /reserve` (JSON) over keep-alive TLS connections: requests are sent at their
//! scheduled times whatever the answers, and latency runs from the scheduled time (no
//! coordinated omission). The rate starts at 100/s and grows by half each step until p99
//! passes 100 ms, errors pass 1 %, or the edge falls behind the schedule, twice in a row at
//! the same rate (a machine shared with others stalls now and then). Once the mail queued by
//! then is out, steps 15 % apart climb from the last rate under that to the rate over it, and
//! up to two more halve what is left between the highest rate held and the lowest over it, so
//! that the knee, the highest rate held, is known to within 5 % rather than the ramp's 50 %.
//! Then a run at 80 % of the knee.
//!
//! Traffic: mostly distinct names and emails; 2 % go to a hot set of 20 names, contended
//! from distinct emails. Reported per store: durable reservations/s (201s) at the knee, p50
//! and p99, p99 at 80 % of the knee, and names held twice: a hot name answered 201 for two
//! emails, or a 201 the store does not hold afterwards (must be 0). For PostgreSQL, pgbench
//! runs the reservation's own transaction (the statements the store sends for it: two unique
//! inserts, two upserts, the outbox row) straight against the same database with 16 clients
//! (the store's pool), statement by statement and in pipeline mode, and the ratios are
//! reported. Mail: the SMTP sink counts mails per recipient; every reservation acknowledged
//! must get exactly one (duplicates and missing mails are reported). `--preload N` adds the
//! same spike on a store preloaded with N reservations (`reserve_scale.rs`). Markdown on
//! stdout, JSON under `<results>/<UTC stamp>/reserve.json`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::Read as _,
    net::TcpStream as StdTcp,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use outpost_store::testing::{TempDir, TestPostgres};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, Mutex},
};

#[derive(Parser)]
#[command(name = "reserve-bench", about = "A launch spike on the reservation page")]
struct Args {
    /// CI size: one second per step, at most 4 steps (the numbers mean little).
    #[arg(long)]
    tiny: bool,
    /// Seconds per step (default 5; 1 with --tiny).
    #[arg(long)]
    step_secs: Option<u64>,
    /// Stop growing past this rate.
    #[arg(long, default_value_t = 40_000)]
    max_rate: u64,
    /// Keep-alive TLS connections of the load generator.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// `embedded`, `postgres` or both (comma separated).
    #[arg(long, default_value = "embedded,postgres")]
    stores: String,
    /// The outpost binary (default $OUTPOST_BIN, else target/release/outpost).
    #[arg(long)]
    outpost: Option<PathBuf>,
    /// Reports go to `<results>/<UTC timestamp>/`.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Also run each store preloaded in bulk with this many reservations and their audit log
    /// (`reserve_scale.rs`): the spike against the empty store's, then list, export, audit
    /// queries, availability and a prune at that size.
    #[arg(long)]
    preload: Option<u64>,
    /// With --preload: the audit log is grown to this many events before the audit queries
    /// and the prune.
    #[arg(long, default_value_t = 10_000_000)]
    audit_events: u64,
    /// Diagnostics: PostgreSQL runs with `pg_stat_statements`, and the statements that took
    /// the most of its time during the spike (calls, total and mean time, rows) are printed
    /// before pgbench runs.
    #[arg(long)]
    pg_statements: bool,
    /// More PostgreSQL server settings, `name=value` as `postgres -c` takes them (repeatable),
    /// for the edge and pgbench alike.
    #[arg(long = "pg-setting")]
    pg_settings: Vec<String>,
}

#[path = "reserve_scale.rs"]
mod scale;
// The load bench's /proc readings (the edge's CPU time); the rest of it is not used here.
#[allow(dead_code)]
#[path = "load/procs.rs"]
mod procs;

const HOST: &str = "reserve.example.test";
const HOT_NAMES: usize = 20;
const P99_KNEE: Duration = Duration::from_millis(100);
/// The finer steps between the ramp's last rate under the knee and the rate over it: +15 %.
const REFINE_PERCENT: u64 = 115;
/// Halvings of the gap the finer steps leave between the knee and the rate over it.
const BISECTIONS: usize = 2;
/// How long a queued mail backlog may take to go out before the next phase starts anyway.
const MAIL_DRAIN_LIMIT: Duration = Duration::from_secs(120);

fn main() -> Result<()> {
    let args = Args::parse();
    let step = Duration::from_secs(args.step_secs.unwrap_or(if args.tiny { 1 } else { 5 }));
    let outpost = args
        .outpost
        .clone()
        .or_else(|| std::env::var_os("OUTPOST_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release/outpost"));
    if !outpost.is_file() {
        bail!("no outpost binary at {} (cargo build --release -p outpost)", outpost.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut reports = Vec::new();
    for store in args.stores.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        eprintln!("reserve-bench: {store}");
        let empty = run_store(&rt, &args, &outpost, store, step, None)?;
        // The preloaded store also runs at the empty one's 80 % rate: p99 compared at one load.
        let same_rate = empty.at_80.as_ref().map(|a| a.rate);
        reports.push(empty);
        if let Some(n) = args.preload {
            eprintln!("reserve-bench: {store}, preloaded with {n} reservations");
            let size = Some((n, same_rate));
            reports.push(run_store(&rt, &args, &outpost, store, step, size)?);
        }
    }
    let stamp = stamp();
    let text = render(&reports, step, args.tiny, &stamp);
    println!("{text}");
    let dir = args.results.join(&stamp);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("reserve.txt"), &text)?;
    std::fs::write(
        dir.join("reserve.json"),
        serde_json::to_string_pretty(&json!({
            "stamp": stamp,
            "step_secs": step.as_secs(),
            "tiny": args.tiny,
            "stores": reports.iter().map(Report::json).collect::<Vec<_>>(),
        }))?,
    )?;
    eprintln!("reserve-bench: wrote {}", dir.join("reserve.json").display());
    if args.tiny {
        if let Some(r) = reports.iter().find(|r| r.steps.iter().all(|s| s.created == 0)) {
            bail!("{}: no reservation succeeded", r.store);
        }
    }
    Ok(())
}

/// One step of the ramp (or the 80 % run).
#[derive(Clone, Debug)]
struct Step {
    rate: u64,
    secs: f64,
    sent: u64,
    answered: u64,
    created: u64,
    conflicts: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
}

impl Step {
    fn created_per_sec(&self) -> f64 {
        self.created as f64 / self.secs
    }
    fn over_knee(&self) -> bool {
        self.p99_us > P99_KNEE.as_micros() as u64
            || self.errors * 100 > self.sent.max(1)
            || (self.answered as f64) < 0.9 * self.sent as f64
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "rate": self.rate, "secs": self.secs, "sent": self.sent, "answered": self.answered,
            "created": self.created, "conflicts": self.conflicts, "errors": self.errors,
            "created_per_sec": self.created_per_sec(), "p50_us": self.p50_us, "p99_us": self.p99_us,
        })
    }
}

struct Report {
    store: String,
    steps: Vec<Step>,
    knee: Option<Step>,
    at_80: Option<Step>,
    /// Preloaded: a run at the empty store's 80 % rate (its own `at_80` when the knees match).
    at_empty_80: Option<Step>,
    /// PostgreSQL: WAL bytes and full-page images a reservation, over the spike.
    wal: Option<(f64, f64)>,
    held_twice: u64,
    missing_201: u64,
    /// Mails beyond the first to one reservation's email (a healthy run sends one each).
    duplicate_mails: u64,
    /// Acknowledged reservations whose mail had not arrived when the run ended.
    missing_mails: u64,
    /// Mails still in the outbox when the edge stopped (queued, not lost).
    queued_mails: u64,
    /// Mails delivered a second while the edge, idle after the ramp, sent its backlog.
    mail_drain_per_sec: Option<f64>,
    pgbench_tps: Option<f64>,
    /// The same transaction with pgbench's pipeline mode: one round trip per transaction.
    pgbench_pipelined_tps: Option<f64>,
    /// What --preload measured (this report is then the preloaded store's).
    scale: Option<scale::Scale>,
}

impl Report {
    fn json(&self) -> serde_json::Value {
        json!({
            "store": self.store,
            "steps": self.steps.iter().map(Step::json).collect::<Vec<_>>(),
            "knee": self.knee.as_ref().map(Step::json),
            "at_80_percent": self.at_80.as_ref().map(Step::json),
            "at_the_empty_stores_80_percent": self.at_empty_80.as_ref().map(Step::json),
            "wal_bytes_per_reservation": self.wal.map(|w| w.0),
            "wal_full_page_images_per_reservation": self.wal.map(|w| w.1),
            "names_held_twice": self.held_twice,
            "acknowledged_but_missing": self.missing_201,
            "duplicate_mails": self.duplicate_mails,
            "missing_mails": self.missing_mails,
            "queued_mails": self.queued_mails,
            "mail_drain_per_sec": self.mail_drain_per_sec,
            "pgbench_reservation_txn_tps": self.pgbench_tps,
            "pgbench_pipelined_txn_tps": self.pgbench_pipelined_tps,
            "ratio_to_pgbench": self.ratio(),
            "ratio_to_pgbench_pipelined": self.ratio_pipelined(),
            "preloaded": self.scale.as_ref().map(scale::Scale::json),
        })
    }
    /// The store, and how many reservations it held before the spike.
    fn label(&self) -> String {
        match &self.scale {
            Some(sc) => format!("{}, {} preloaded", self.store, sc.preload),
            None => self.store.clone(),
        }
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.knee.as_ref()?.created_per_sec() / self.pgbench_tps.filter(|t| *t > 0.0)?)
    }
    fn ratio_pipelined(&self) -> Option<f64> {
        Some(
            self.knee.as_ref()?.created_per_sec()
                / self.pgbench_pipelined_tps.filter(|t| *t > 0.0)?,
        )
    }
}

fn run_store(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    outpost: &Path,
    store: &str,
    step: Duration,
    // Preloaded: how many reservations, and the empty store's 80 % rate.
    size: Option<(u64, Option<u64>)>,
) -> Result<Report> {
    let preload = size.map(|(n, _)| n);
    let work = TempDir::new("reserve-bench");
    let pg = match store {
        "embedded" => None,
        "postgres" => {
            let mut settings: Vec<&str> = args.pg_settings.iter().map(String::as_str).collect();
            if args.pg_statements {
                settings.extend([
                    "shared_preload_libraries=pg_stat_statements",
                    "pg_stat_statements.track=all",
                ]);
            }
            let pg = TestPostgres::start_with(&settings);
            if args.pg_statements {
                pg.psql("outpost", "CREATE EXTENSION pg_stat_statements");
            }
            warm_wal(&pg);
            Some(pg)
        }
        other => bail!("unknown store {other:?}: embedded or postgres"),
    };
    let preload_secs = match preload {
        Some(n) => {
            let secs = scale::preload(work.path(), pg.as_ref(), n)?;
            eprintln!("  preloaded {n} reservations in {secs:.1} s");
            secs
        }
        None => 0.0,
    };
    let smtp = Smtp::start(rt)?;
    let edge = Edge::start(outpost, work.path(), smtp.port, pg.as_ref().map(|p| p.url()), "", "")?;
    let mut spike = Spike {
        rt,
        client: Arc::new(Client::new(edge.https)),
        conns: args.connections,
        store,
        seq: 0,
        steps: Vec::new(),
        hot: BTreeMap::new(),
        acked: Vec::new(),
    };
    // Warm-up: connections, the pool, the caches. Its reservations count like the others'.
    spike.run(100, Duration::from_secs(1));
    let wal_before = pg.as_ref().map(wal_written);
    let max_steps = if args.tiny { 4 } else { 40 };
    let max_rate = args.max_rate;
    let over = spike
        .climb(100, "", step, max_steps, |r| (r < max_rate).then(|| (r * 3 / 2).min(max_rate)));
    // The ramp's last steps leave mail queued; what follows measures a settled edge.
    let total_created = spike.acked.len() as u64;
    let (drain_start, drained_before) = (Instant::now(), smtp.delivered());
    smtp.wait_for(total_created, MAIL_DRAIN_LIMIT);
    let drained = smtp.delivered() - drained_before;
    // The sender's own pace, measured only over a backlog worth a second or more.
    let mail_drain_per_sec = (drain_start.elapsed() >= Duration::from_secs(1))
        .then(|| drained as f64 / drain_start.elapsed().as_secs_f64());
    eprintln!(
        "  mail: {} of {total_created} delivered ({})",
        smtp.delivered(),
        mail_drain_per_sec.map_or("no backlog".into(), |r| format!("backlog sent at {r:.0}/s")),
    );
    // The ramp's steps are x1.5 apart, so its knee is known to within half of itself: finer
    // steps between the last rate under it and the rate over it place it closer.
    let under = spike.steps.iter().rev().find(|s| !s.over_knee()).map(|s| s.rate);
    let finer = |r: u64| Some(r * REFINE_PERCENT / 100).filter(|&n| n < over);
    if let (Some(first), true) =
        (under.and_then(finer), spike.steps.last().is_some_and(Step::over_knee))
    {
        spike.climb(first, " (refining)", step, usize::MAX, finer);
        // Then the middle of what is left between the highest rate held and the lowest one
        // over it, while they are more than 5 % apart, each from a settled edge once the mail
        // the last step queued is out: 15 % becomes 7.5 %, then 3.75 %.
        for _ in 0..if args.tiny { 0 } else { BISECTIONS } {
            let Some((held, failed)) = spike.bracket() else { break };
            if failed * 100 <= held * 105 {
                break;
            }
            smtp.wait_for(spike.acked.len() as u64, MAIL_DRAIN_LIMIT);
            edge.settle();
            spike.climb((held + failed) / 2, " (bisecting)", step, usize::MAX, |_| None);
        }
        smtp.wait_for(spike.acked.len() as u64, MAIL_DRAIN_LIMIT);
        // The steps over the knee leave the edge work to finish after their mail is out (the
        // store's checkpoints and sweeps): the 80 % run measures a settled edge, as after the
        // ramp.
        let (waited, busy) = edge.settle();
        eprintln!("  settled after {:.1} s ({busy:.0} % of a CPU in its last second)", waited);
    }
    // The highest rate held: the ramp's, or a finer step's above it.
    let knee = spike.steps.iter().filter(|s| !s.over_knee()).max_by_key(|s| s.rate).cloned();
    let at_80 = knee.as_ref().map(|k| {
        let r = (k.rate * 4 / 5).max(1);
        let s = spike.run(r, step * 2);
        eprintln!("  80 % of the knee ({r}/s): p99 {:.1} ms", s.p99_us as f64 / 1000.0);
        s
    });
    // Each store's knee is the highest step it held, and p99 there lies anywhere under the
    // 100 ms bound: a knee one step higher is read near it. The same offered load compares.
    let at_empty_80 = match (size.and_then(|(_, r)| r), &at_80) {
        (Some(r), Some(own)) if own.rate == r => Some(own.clone()),
        (Some(r), _) => {
            let s = spike.run(r, step * 2);
            let p99 = s.p99_us as f64 / 1000.0;
            eprintln!("  the empty store's 80 % rate ({r}/s): p99 {p99:.1} ms");
            Some(s)
        }
        (None, _) => None,
    };
    // What PostgreSQL's log took a reservation over the spike: full-page images (a page's first
    // change after a checkpoint) grow with the pages a write touches, and so with the store.
    let wal = pg.as_ref().zip(wal_before).map(|(pg, (bytes, fpi))| {
        let (b, f) = wal_written(pg);
        let n = spike.acked.len().max(1) as f64;
        let per = ((b - bytes) / n, (f - fpi) / n);
        eprintln!("  WAL a reservation: {:.0} bytes, {:.2} full-page images", per.0, per.1);
        per
    });
    let Spike { mut seq, steps, hot, acked, .. } = spike;
    // Every acknowledged reservation's mail, then: exactly one each.
    let total_created = acked.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while smtp.duplicates_and_missing(&acked).1 > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    // Time for a second (wrong) delivery to land, were one under way.
    std::thread::sleep(Duration::from_secs(2));
    let (duplicate_mails, missing_mails) = smtp.duplicates_and_missing(&acked);
    eprintln!(
        "  mail: {} delivered for {total_created} reservations, {duplicate_mails} duplicates, \
         {missing_mails} missing",
        smtp.delivered()
    );
    // Names held twice: a hot name acknowledged for two emails, or an acknowledged
    // reservation the store does not hold.
    let held_twice = hot.values().filter(|emails| emails.len() > 1).count() as u64;
    let held = edge.export()?;
    let missing_201 =
        acked.iter().filter(|(n, e)| held.get(n).map(String::as_str) != Some(e.as_str())).count()
            as u64;
    drop(edge);
    // Counted again now that the sender is gone, to compare with what the outbox still holds.
    std::thread::sleep(Duration::from_millis(500));
    let (duplicate_mails, missing_mails) = smtp.duplicates_and_missing(&acked);
    // A mail not delivered by now is either still queued in the outbox (the sender is behind:
    // slow, not lost) or lost; the outbox tells which.
    let queued_mails = scale::count(
        work.path(),
        pg.as_ref(),
        "SELECT count(*) FROM outbox WHERE topic = 'reserve.mail' AND done_at IS NULL",
    );
    if missing_mails > 0 {
        eprintln!("  mail: {queued_mails} still queued in the outbox when the edge stopped");
    }
    let scale = match preload {
        Some(n) => Some(scale::after_spike(
            rt,
            args,
            outpost,
            work.path(),
            pg.as_ref(),
            &smtp,
            n,
            preload_secs,
            knee.as_ref().map_or(100, |k| k.rate),
            &mut seq,
            store,
        )?),
        None => None,
    };
    if let Some(pg) = pg.as_ref().filter(|_| args.pg_statements) {
        eprintln!("  statements by PostgreSQL time (calls | total ms | mean us | rows | query):");
        let top = pg.psql(
            "outpost",
            "SELECT calls, round(total_exec_time), round(mean_exec_time * 1000), rows, \
             left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 20",
        );
        for line in top.lines() {
            eprintln!("    {line}");
        }
    }
    // Against the same database the edge used, once the edge is gone.
    let (pgbench_tps, pgbench_pipelined_tps) = match &pg {
        Some(pg) => (
            Some(pgbench(pg, work.path(), step, false)?),
            Some(pgbench(pg, work.path(), step, true)?),
        ),
        None => (None, None),
    };
    Ok(Report {
        store: store.into(),
        steps,
        knee,
        at_80,
        at_empty_80,
        wal,
        held_twice,
        missing_201,
        duplicate_mails,
        missing_mails,
        queued_mails,
        mail_drain_per_sec,
        pgbench_tps,
        pgbench_pipelined_tps,
        scale,
    })
}

/// Leaves a new server's log as one that has run a while leaves it: segments to recycle. A new
/// server has one, and makes (and zero-fills) every next one while commits wait, where one in
/// service renames a used one; pgbench, run after the edge, would otherwise find the recycled
/// segments the edge's spike paid for. About 600 MB of log, then a checkpoint recycles them.
fn warm_wal(pg: &TestPostgres) {
    let started = Instant::now();
    pg.psql(
        "outpost",
        "CREATE TABLE wal_warm AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 600000)",
    );
    pg.psql("outpost", "DROP TABLE wal_warm");
    pg.psql("outpost", "CHECKPOINT");
    let segments = pg.psql("outpost", "SELECT count(*) FROM pg_ls_waldir()");
    eprintln!("  WAL warmed in {:.1} s: {segments} segments", started.elapsed().as_secs_f64());
}

/// PostgreSQL's WAL written since it started: (bytes, full-page images).
fn wal_written(pg: &TestPostgres) -> (f64, f64) {
    let row = pg.psql("outpost", "SELECT wal_bytes || ' ' || wal_fpi FROM pg_stat_wal");
    let mut v = row.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    (v.next().unwrap_or(0.0), v.next().unwrap_or(0.0))
}

fn merge(into: &mut BTreeMap<String, BTreeSet<String>>, from: BTreeMap<String, BTreeSet<String>>) {
    for (k, v) in from {
        into.entry(k).or_default().extend(v);
    }
}

struct Job {
    at: Instant,
    name: String,
    email: String,
}

/// The spike on one edge: its steps so far, and every reservation they were answered 201 for.
struct Spike<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: Arc<Client>,
    conns: usize,
    store: &'a str,
    /// Numbers the names and emails, never one twice.
    seq: u64,
    steps: Vec<Step>,
    /// Hot names and the emails each was answered 201 for.
    hot: BTreeMap<String, BTreeSet<String>>,
    /// (name, email) of every 201.
    acked: Vec<(String, String)>,
}

impl Spike<'_> {
    /// One step, its answers counted (not added to `steps`).
    fn run(&mut self, rate: u64, len: Duration) -> Step {
        let (s, hot, acked) = self.rt.block_on(run_step(
            &self.client,
            self.conns,
            rate,
            len,
            &mut self.seq,
            self.store,
        ));
        merge(&mut self.hot, hot);
        self.acked.extend(acked);
        s
    }

    /// The highest rate held and the lowest rate above it that was not, once there is one.
    fn bracket(&self) -> Option<(u64, u64)> {
        let held = self.steps.iter().filter(|s| !s.over_knee()).map(|s| s.rate).max()?;
        let failed =
            self.steps.iter().filter(|s| s.over_knee() && s.rate > held).map(|s| s.rate).min()?;
        Some((held, failed))
    }

    /// Steps of `len` from `rate`, each next one at `next(rate)`, until one is past the knee
    /// twice in a row at the same rate (on a shared machine one stall of someone else's, a
    /// build's fsync, can push a step over; a real knee is over twice), `next` gives none, or
    /// `max_steps` have run. The rate it stopped at.
    fn climb(
        &mut self,
        mut rate: u64,
        label: &str,
        len: Duration,
        max_steps: usize,
        next: impl Fn(u64) -> Option<u64>,
    ) -> u64 {
        let mut retried = false;
        for _ in 0..max_steps {
            let s = self.run(rate, len);
            eprintln!(
                "  {rate:>6}/s{label}: {} created/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
                s.created_per_sec() as u64,
                s.p50_us as f64 / 1000.0,
                s.p99_us as f64 / 1000.0,
                s.errors
            );
            let over = s.over_knee();
            self.steps.push(s);
            if over && !retried {
                retried = true;
                continue;
            }
            match next(rate) {
                Some(n) if !over => rate = n,
                _ => break,
            }
            retried = false;
        }
        rate
    }
}

/// One open-loop step at `rate` for `len`: (summary, hot names' 201 emails, every 201).
async fn run_step(
    client: &Arc<Client>,
    conns: usize,
    rate: u64,
    len: Duration,
    seq: &mut u64,
    store: &str,
) -> (Step, BTreeMap<String, BTreeSet<String>>, Vec<(String, String)>) {
    let (tx, rx) = mpsc::channel::<Job>(1 << 16);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (client, rx) = (client.clone(), rx.clone());
        workers.spawn(async move {
            let mut out = Outcome::default();
            let mut conn: Option<Conn> = None;
            loop {
                let job = { rx.lock().await.recv().await };
                let Some(job) = job else { break };
                if conn.is_none() {
                    conn = client.connect().await.ok();
                }
                let status = match conn.as_mut() {
                    Some(c) => c.reserve(&job.name, &job.email).await.ok(),
                    None => None,
                };
                let us = job.at.elapsed().as_micros().max(1) as u64;
                out.hist.saturating_record(us);
                match status {
                    Some(201) => {
                        out.created += 1;
                        if job.name.starts_with("hot-") {
                            out.hot.entry(job.name.clone()).or_default().insert(job.email.clone());
                        }
                        out.acked.push((job.name, job.email));
                    }
                    Some(409) => out.conflicts += 1,
                    Some(_) => out.errors += 1,
                    None => {
                        out.errors += 1;
                        conn = None;
                    }
                }
                out.answered += u64::from(status.is_some());
            }
            out
        });
    }
    let started = Instant::now();
    let total = (rate as f64 * len.as_secs_f64()) as u64;
    let tag = &store[..1];
    for i in 0..total {
        let at = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let n = *seq;
        *seq += 1;
        let name = if n.is_multiple_of(50) {
            format!("hot-{}", (n / 50) % HOT_NAMES as u64)
        } else {
            format!("{tag}{n}")
        };
        let _ = tx.send(Job { at, name, email: format!("b{n}@bench.example") }).await;
    }
    drop(tx);
    let mut all = Outcome::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(Some(Ok(o))) = tokio::time::timeout_at(deadline.into(), workers.join_next()).await
    {
        all.add(o);
    }
    workers.abort_all();
    let secs = started.elapsed().as_secs_f64().max(len.as_secs_f64());
    let step = Step {
        rate,
        secs,
        sent: total,
        answered: all.answered,
        created: all.created,
        conflicts: all.conflicts,
        errors: all.errors + total.saturating_sub(all.answered + all.errors),
        p50_us: all.hist.value_at_quantile(0.5),
        p99_us: all.hist.value_at_quantile(0.99),
    };
    (step, all.hot, all.acked)
}

struct Outcome {
    hist: Histogram<u64>,
    answered: u64,
    created: u64,
    conflicts: u64,
    errors: u64,
    hot: BTreeMap<String, BTreeSet<String>>,
    acked: Vec<(String, String)>,
}

impl Default for Outcome {
    fn default() -> Outcome {
        Outcome {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("static bounds"),
            answered: 0,
            created: 0,
            conflicts: 0,
            errors: 0,
            hot: BTreeMap::new(),
            acked: Vec::new(),
        }
    }
}

impl Outcome {
    fn add(&mut self, o: Outcome) {
        let _ = self.hist.add(&o.hist);
        self.answered += o.answered;
        self.created += o.created;
        self.conflicts += o.conflicts;
        self.errors += o.errors;
        merge(&mut self.hot, o.hot);
        self.acked.extend(o.acked);
    }
}

// ---------------------------------------------------------------------------------------------
// The edge, the SMTP sink, pgbench.

struct Edge {
    child: Child,
    https: u16,
    admin: u16,
    /// The admin token the edge created in its data directory.
    token: String,
}

impl Edge {
    /// Waits until the edge has spent under 5 % of a CPU over a second (at most 30 s):
    /// (seconds waited, its CPU share in the last second, in %).
    fn settle(&self) -> (f64, f64) {
        let start = Instant::now();
        let mut busy = 100.0;
        while start.elapsed() < Duration::from_secs(30) {
            let before = procs::tree_cpu_seconds(self.child.id());
            std::thread::sleep(Duration::from_secs(1));
            busy = (procs::tree_cpu_seconds(self.child.id()) - before) * 100.0;
            if busy < 5.0 {
                break;
            }
        }
        (start.elapsed().as_secs_f64(), busy)
    }

    /// `store`: more keys of `[store]`; `extra`: more configuration, after the rest (whole
    /// sections).
    fn start(
        bin: &Path,
        dir: &Path,
        smtp: u16,
        pg: Option<String>,
        store: &str,
        extra: &str,
    ) -> Result<Edge> {
        let (https, admin) = (free_port()?, free_port()?);
        let secret = dir.join("reserve.secret");
        std::fs::write(&secret, b"reserve-bench secret, one node")?;
        let store = match pg {
            Some(url) => format!("[store]\nurl = \"{url}\"\n{store}"),
            None => format!("[store]\n{store}"),
        };
        let config = format!(
            "listen = [\"127.0.0.1:{https}\"]\nadmin = \"127.0.0.1:{admin}\"\n\
             data_dir = \"{}\"\nworkers = 2\n{store}\
             [reserve]\nhost = \"{HOST}\"\nzone = \"workers.example.test\"\n\
             public_url = \"https://{HOST}:{https}\"\nsecret_file = \"{}\"\n\
             [reserve.smtp]\nhost = \"127.0.0.1\"\nport = {smtp}\n\
             [reserve.limits]\nreserve_per_ip_per_minute = 100000000\n\
             reserve_per_email_per_hour = 100000000\n\
             availability_per_ip_per_minute = 100000000\n{extra}",
            dir.join("data").display(),
            secret.display()
        );
        let path = dir.join("outpost.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join("outpost.log"))?;
        let child = Command::new(bin)
            .args(["run", "--no-xdp", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut edge = Edge { child, https, admin, token: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin_get(admin, "/healthz", None).map(|(s, _)| s) != Some(200) {
            if let Some(st) = edge.child.try_wait()? {
                bail!(
                    "outpost exited with {st}: {}",
                    std::fs::read_to_string(dir.join("outpost.log"))?
                );
            }
            if Instant::now() > deadline {
                bail!("outpost did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = dir.join("data").join("admin-token");
        edge.token = std::fs::read_to_string(&token)
            .with_context(|| format!("reading {}", token.display()))?
            .trim()
            .to_owned();
        Ok(edge)
    }

    /// name → email of every reservation held.
    fn export(&self) -> Result<BTreeMap<String, String>> {
        let (status, csv) =
            admin_get(self.admin, "/reservations/export", Some(&self.token)).context("export")?;
        if status != 200 {
            bail!("export answered {status}: {csv}");
        }
        let mut out = BTreeMap::new();
        for line in csv.lines().skip(1) {
            let mut c = line.split(',');
            if let (Some(n), Some(e)) = (c.next(), c.next()) {
                out.insert(n.to_owned(), e.to_owned());
            }
        }
        Ok(out)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut s = StdTcp::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_owned()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An SMTP sink in this process: speaks enough SMTP for lettre (no STARTTLS offered) and
/// counts the mails it accepts. In production the SMTP server is another machine; a Python
/// server on these same two cores would mostly measure itself.
struct Smtp {
    port: u16,
    delivered: Arc<AtomicU64>,
    /// Mails accepted per recipient (each bench reservation has an email of its own).
    to: Arc<std::sync::Mutex<HashMap<String, u32>>>,
}

impl Smtp {
    fn start(rt: &tokio::runtime::Runtime) -> Result<Smtp> {
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let delivered = Arc::new(AtomicU64::new(0));
        let to = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (count, seen) = (delivered.clone(), to.clone());
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (count, seen) = (count.clone(), seen.clone());
                tokio::spawn(async move {
                    let _ = smtp_session(sock, &count, &seen).await;
                });
            }
        });
        Ok(Smtp { port, delivered, to })
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Until `total` mails are delivered, or `limit` has passed.
    fn wait_for(&self, total: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.delivered() < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (mails beyond the first to one recipient, acknowledged reservations with no mail).
    fn duplicates_and_missing(&self, acked: &[(String, String)]) -> (u64, u64) {
        let to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        let dup = to.values().map(|n| u64::from(n.saturating_sub(1))).sum();
        let missing = acked.iter().filter(|(_, e)| !to.contains_key(e)).count() as u64;
        (dup, missing)
    }
}

async fn smtp_session(
    sock: tokio::net::TcpStream,
    count: &AtomicU64,
    seen: &std::sync::Mutex<HashMap<String, u32>>,
) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let (r, mut w) = sock.into_split();
    let mut r = tokio::io::BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = String::new();
    let mut rcpt = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        if verb == "MAIL" || verb == "RSET" {
            rcpt.clear();
        }
        if verb == "RCPT" {
            // RCPT TO:<addr>
            let addr = line.split(['<', '>']).nth(1).unwrap_or("").to_ascii_lowercase();
            rcpt.push(addr);
        }
        match verb.as_str() {
            "EHLO" => w.write_all(b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").await?,
            "DATA" => {
                w.write_all(b"354 go on\r\n").await?;
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    for a in rcpt.drain(..) {
                        *seen.entry(a).or_insert(0) += 1;
                    }
                }
                w.write_all(b"250 queued\r\n").await?;
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => w.write_all(b"250 ok\r\n").await?,
        }
    }
}

/// The reservation's transaction as the store sends it to PostgreSQL (postgres.rs: INSERT
/// twice, PUT twice, ENQUEUE), fresh names and emails, 16 clients (the store's pool size).
fn pgbench(pg: &TestPostgres, dir: &Path, step: Duration, pipelined: bool) -> Result<f64> {
    let now = "(extract(epoch from statement_timestamp()) * 1000)::int8";
    let insert = |ns: &str, key: &str| {
        format!(
            "INSERT INTO kv (ns, key, value, expires_at) VALUES ('{ns}', {key}, \
             '\\x7b7d'::bytea, {now} + 86400000) ON CONFLICT (ns, key) DO UPDATE \
             SET value = excluded.value, expires_at = excluded.expires_at \
             WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= {now} RETURNING 1;\n"
        )
    };
    let put = |ns: &str, key: &str| {
        format!(
            "INSERT INTO kv (ns, key, value, expires_at) VALUES ('{ns}', {key}, \
             '\\x7b7d'::bytea, {now} + 86400000) ON CONFLICT (ns, key) DO UPDATE \
             SET value = excluded.value, expires_at = excluded.expires_at;\n"
        )
    };
    let key = ":client_id || '-' || :r || '-' || md5(random()::text)";
    let (start, end) = if pipelined { ("\\startpipeline\n", "\\endpipeline\n") } else { ("", "") };
    let script = format!(
        "\\set r random(1, 1000000000000)\n{start}BEGIN;\n{}{}{}{}\
         INSERT INTO outbox (topic, payload, attempts, created_at, next_at) VALUES \
         ('pgbench', '\\x7b7d'::bytea, 0, {now}, {now}) RETURNING id;\nCOMMIT;\n{end}",
        insert("pgbench.name", key),
        insert("pgbench.email", key),
        put("pgbench.token", key),
        put("pgbench.expiry", key),
    );
    let path = dir.join(if pipelined { "reservation-pipelined.sql" } else { "reservation.sql" });
    std::fs::write(&path, script)?;
    let out = Command::new(pg.bin_dir().join("pgbench"))
        .args(["-n", "-M", "prepared", "-f"])
        .arg(&path)
        .args(["-c", "16", "-j", "2", "-T", &step.as_secs().max(1).to_string()])
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "outpost", "outpost"])
        .env("PGPASSWORD", pg.password())
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no tps in pgbench's output")
}

// ---------------------------------------------------------------------------------------------
// Keep-alive TLS client.

struct Client {
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

struct Conn {
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn new(port: u16) -> Client {
        let cfg = outpost_testkit::tls::client_config();
        Client { port, tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)) }
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let s = self.tls.connect(ServerName::try_from(HOST).expect("valid name"), tcp).await?;
        Ok(Conn { s, buf: Vec::with_capacity(4096) })
    }
}

impl Conn {
    /// One `POST /reserve` on this keep-alive connection; its status.
    async fn reserve(&mut self, name: &str, email: &str) -> std::io::Result<u16> {
        let body = format!("{{\"name\":\"{name}\",\"email\":\"{email}\"}}");
        let req = format!(
            "POST /reserve HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.request(&req).await
    }

    /// One `GET target` on this keep-alive connection; its status.
    async fn get(&mut self, target: &str) -> std::io::Result<u16> {
        self.request(&format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")).await
    }

    async fn request(&mut self, req: &str) -> std::io::Result<u16> {
        self.s.write_all(req.as_bytes()).await?;
        self.s.flush().await?;
        self.buf.clear();
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.s.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 =
            head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status"))?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad("no content-length"))?;
        while self.buf.len() < head_end + len {
            let n = self.s.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("closed mid-body"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        if head.contains("connection: close") {
            return Err(bad("server closed the connection"));
        }
        Ok(status)
    }
}

// ---------------------------------------------------------------------------------------------
// Report.

fn stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("reserve-{secs}")
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn render(reports: &[Report], step: Duration, tiny: bool, stamp: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let size = if tiny { " (tiny: numbers mean little)" } else { "" };
    let _ = writeln!(
        s,
        "\nreserve-bench {stamp}{size}: open-loop POST /reserve over keep-alive TLS, {} s steps \
         from 100/s (x1.5) until p99 > 100 ms, then x1.15 from the last rate under that and up \
         to two halvings of the gap left (the knee: the highest rate held, within 5 %); 2 % of \
         requests on {HOT_NAMES} hot names. Load generator, edge, database and SMTP sink \
         share the machine's cores; the finer steps and the 80 % run start once the mail \
         queued before them is delivered.\n",
        step.as_secs()
    );
    let _ = writeln!(
        s,
        "| store | knee (offered/s) | durable reservations/s | p50 | p99 | p99 at 80 % | names held twice | duplicate / missing mails | pgbench (same txn) | ratio | pgbench pipelined | ratio |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in reports {
        let k = r.knee.as_ref();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            r.label(),
            k.map_or("-".into(), |k| k.rate.to_string()),
            k.map_or("-".into(), |k| format!("{:.0}", k.created_per_sec())),
            k.map_or("-".into(), |k| ms(k.p50_us)),
            k.map_or("-".into(), |k| ms(k.p99_us)),
            r.at_80.as_ref().map_or("-".into(), |a| ms(a.p99_us)),
            r.held_twice + r.missing_201,
            r.duplicate_mails,
            r.missing_mails,
            r.pgbench_tps.map_or("-".into(), |t| format!("{t:.0} tps")),
            r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
            r.pgbench_pipelined_tps.map_or("-".into(), |t| format!("{t:.0} tps")),
            r.ratio_pipelined().map_or("-".into(), |x| format!("{x:.2}")),
        );
    }
    let _ = writeln!(s, "\nTargets:");
    for r in reports {
        let k = r.knee.as_ref();
        let rate = k.map_or(0.0, Step::created_per_sec);
        if r.store == "embedded" {
            let _ = writeln!(
                s,
                "- {} >= 8,000 reservations/s: {} ({rate:.0}/s)",
                r.label(),
                if rate >= 8000.0 { "met" } else { "not met" }
            );
        }
        if let Some(x) = r.ratio() {
            let _ = writeln!(
                s,
                "- {} >= 0.8x pgbench: {} ({x:.2}x)",
                r.label(),
                if x >= 0.8 { "met" } else { "not met" }
            );
        }
        if let Some(a) = &r.at_80 {
            let _ = writeln!(
                s,
                "- {} p99 <= 50 ms at 80 % of the knee: {} ({})",
                r.label(),
                if a.p99_us <= 50_000 { "met" } else { "not met" },
                ms(a.p99_us)
            );
        }
        let _ = writeln!(
            s,
            "- {} names held twice = 0: {}",
            r.label(),
            if r.held_twice + r.missing_201 == 0 { "met" } else { "NOT MET" }
        );
        let lost = r.missing_mails.saturating_sub(r.queued_mails);
        let _ = writeln!(
            s,
            "- {} one mail per reservation: {} ({} duplicates, {} not delivered when the run \
             ended, of which {} still queued in the outbox and {lost} lost)",
            r.label(),
            if r.duplicate_mails + lost == 0 { "met" } else { "NOT MET" },
            r.duplicate_mails,
            r.missing_mails,
            r.queued_mails.min(r.missing_mails),
        );
    }
    for r in reports {
        if let Some(sc) = &r.scale {
            s.push_str(&scale::render(r, sc, reports));
        }
    }
    s
}
