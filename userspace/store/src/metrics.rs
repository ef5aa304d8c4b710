//! The store's Prometheus series. Counters are atomics; the two histograms sit behind a mutex
//! (a record is tens of nanoseconds, far below any store operation).

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Mutex, OnceLock,
    },
    time::Duration,
};

use hdrhistogram::Histogram;

use crate::{ops::OP_NAMES, Backend, StoreError};

/// Outcomes of `outpost_store_ops_total{outcome}`.
const OUTCOMES: [&str; 6] = ["ok", "conflict", "aborted", "timeout", "unavailable", "error"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok = 0,
    Conflict = 1,
    Aborted = 2,
    Timeout = 3,
    Unavailable = 4,
    Error = 5,
}

impl Outcome {
    pub(crate) fn of_error(e: &StoreError) -> Outcome {
        match e {
            StoreError::Timeout => Outcome::Timeout,
            StoreError::Unavailable(_) => Outcome::Unavailable,
            _ => Outcome::Error,
        }
    }
}

/// Counters, latency and gauges of one [`crate::Store`]; [`StoreMetrics::render`] writes them.
pub struct StoreMetrics {
    backend: Backend,
    ops: [[AtomicU64; OUTCOMES.len()]; OP_NAMES.len()],
    /// Microseconds per operation, as the caller saw it (queueing included).
    latency: Mutex<Histogram<u64>>,
    latency_sum_us: AtomicU64,
    /// Requests per group commit (SQLite's writer, PostgreSQL's batches).
    batch: Mutex<Histogram<u64>>,
    batch_sum: AtomicU64,
    /// SQLite: requests handed to the writer or a reader and not answered yet.
    in_flight: AtomicI64,
    sqlite_connections: AtomicI64,
    pool: OnceLock<deadpool_postgres::Pool>,
    outbox_pending: AtomicU64,
    /// Milliseconds; u64::MAX when the outbox has nothing pending.
    outbox_oldest_ms: AtomicU64,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreMetrics").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl StoreMetrics {
    pub(crate) fn new(backend: Backend) -> StoreMetrics {
        // 1 µs .. 10 min at 3 significant digits; batches 1 .. 64 Ki.
        let latency = Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
        let batch = Histogram::new_with_bounds(1, 65_536, 3).expect("static bounds");
        StoreMetrics {
            backend,
            ops: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: Mutex::new(latency),
            latency_sum_us: AtomicU64::new(0),
            batch: Mutex::new(batch),
            batch_sum: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            sqlite_connections: AtomicI64::new(0),
            pool: OnceLock::new(),
            outbox_pending: AtomicU64::new(0),
            outbox_oldest_ms: AtomicU64::new(u64::MAX),
        }
    }

    pub(crate) fn record(&self, op: usize, outcome: Outcome, took: Duration) {
        self.ops[op][outcome as usize].fetch_add(1, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.latency_sum_us.fetch_add(us, Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            h.saturating_record(us);
        }
    }

    pub(crate) fn record_batch(&self, size: usize) {
        let size = size as u64;
        self.batch_sum.fetch_add(size, Relaxed);
        if let Ok(mut h) = self.batch.lock() {
            h.saturating_record(size.max(1));
        }
    }

    pub(crate) fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Relaxed);
    }

    pub(crate) fn set_sqlite_connections(&self, n: i64) {
        self.sqlite_connections.store(n, Relaxed);
    }

    pub(crate) fn set_pool(&self, pool: deadpool_postgres::Pool) {
        let _ = self.pool.set(pool);
    }

    pub(crate) fn set_outbox(&self, pending: u64, oldest: Option<Duration>) {
        self.outbox_pending.store(pending, Relaxed);
        let ms = oldest.map_or(u64::MAX, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1));
        self.outbox_oldest_ms.store(ms, Relaxed);
    }

    /// Operations counted so far with this outcome name (`ok`, `conflict`, ...), all ops.
    pub fn ops_total(&self, outcome: &str) -> u64 {
        let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) else { return 0 };
        self.ops.iter().map(|row| row[i].load(Relaxed)).sum()
    }

    /// Requests per group commit, on average (None before the first).
    pub fn commit_batch_mean(&self) -> Option<f64> {
        let count = self.batch.lock().ok()?.len();
        (count > 0).then(|| self.batch_sum.load(Relaxed) as f64 / count as f64)
    }

    /// Appends every series in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = self.render_inner(out);
    }

    fn render_inner(&self, out: &mut String) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        writeln!(out, "# HELP outpost_store_info The store's backend.")?;
        writeln!(out, "# TYPE outpost_store_info gauge")?;
        writeln!(out, "outpost_store_info{{backend=\"{backend}\"}} 1")?;

        writeln!(out, "# HELP outpost_store_ops_total Store operations by outcome.")?;
        writeln!(out, "# TYPE outpost_store_ops_total counter")?;
        for (op, row) in OP_NAMES.iter().zip(&self.ops) {
            for (outcome, n) in OUTCOMES.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    writeln!(
                        out,
                        "outpost_store_ops_total{{op=\"{op}\",outcome=\"{outcome}\"}} {n}"
                    )?;
                }
            }
        }

        writeln!(
            out,
            "# HELP outpost_store_op_duration_seconds Store operation latency as callers saw it."
        )?;
        writeln!(out, "# TYPE outpost_store_op_duration_seconds summary")?;
        let (qs, count) = match self.latency.lock() {
            Ok(h) => {
                ([0.5, 0.99, 0.999].map(|q| (q, h.value_at_quantile(q) as f64 / 1e6)), h.len())
            }
            Err(_) => ([(0.5, 0.0), (0.99, 0.0), (0.999, 0.0)], 0),
        };
        for (q, v) in qs {
            writeln!(out, "outpost_store_op_duration_seconds{{quantile=\"{q}\"}} {v}")?;
        }
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        writeln!(out, "outpost_store_op_duration_seconds_sum {sum}")?;
        writeln!(out, "outpost_store_op_duration_seconds_count {count}")?;

        let (in_use, size) = match self.pool.get() {
            Some(pool) => {
                let s = pool.status();
                (s.size.saturating_sub(s.available) as i64, s.max_size as i64)
            }
            None => (self.in_flight.load(Relaxed).max(0), self.sqlite_connections.load(Relaxed)),
        };
        writeln!(
            out,
            "# HELP outpost_store_pool_in_use Connections busy (SQLite: requests queued or running)."
        )?;
        writeln!(out, "# TYPE outpost_store_pool_in_use gauge")?;
        writeln!(out, "outpost_store_pool_in_use {in_use}")?;
        writeln!(
            out,
            "# HELP outpost_store_pool_size Connections at most (SQLite: writer and readers)."
        )?;
        writeln!(out, "# TYPE outpost_store_pool_size gauge")?;
        writeln!(out, "outpost_store_pool_size {size}")?;

        writeln!(out, "# HELP outpost_store_outbox_pending Outbox rows not delivered yet.")?;
        writeln!(out, "# TYPE outpost_store_outbox_pending gauge")?;
        writeln!(out, "outpost_store_outbox_pending {}", self.outbox_pending.load(Relaxed))?;
        let oldest = match self.outbox_oldest_ms.load(Relaxed) {
            u64::MAX => 0.0,
            ms => ms as f64 / 1e3,
        };
        writeln!(
            out,
            "# HELP outpost_store_outbox_oldest_age_seconds Age of the oldest undelivered outbox row."
        )?;
        writeln!(out, "# TYPE outpost_store_outbox_oldest_age_seconds gauge")?;
        writeln!(out, "outpost_store_outbox_oldest_age_seconds {oldest}")?;

        writeln!(
            out,
            "# HELP outpost_store_commit_batch_size Requests per group commit (one transaction)."
        )?;
        writeln!(out, "# TYPE outpost_store_commit_batch_size summary")?;
        let (qs, count) = match self.batch.lock() {
            Ok(h) => ([0.5, 0.99].map(|q| (q, h.value_at_quantile(q))), h.len()),
            Err(_) => ([(0.5, 0), (0.99, 0)], 0),
        };
        for (q, v) in qs {
            writeln!(out, "outpost_store_commit_batch_size{{quantile=\"{q}\"}} {v}")?;
        }
        writeln!(out, "outpost_store_commit_batch_size_sum {}", self.batch_sum.load(Relaxed))?;
        writeln!(out, "outpost_store_commit_batch_size_count {count}")?;
        Ok(())
    }
}
