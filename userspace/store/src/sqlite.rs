//! Embedded SQLite: `<data_dir>/outpost.db`, WAL; nothing is acknowledged before the WAL
//! holding it is fsynced.
//!
//! One writer thread owns the read-write connection and commits in groups: it takes a request,
//! drains whatever else is queued (up to [`MAX_BATCH`]), runs them all in one `BEGIN IMMEDIATE`
//! transaction with each request inside its own SAVEPOINT, and commits once. A request that
//! aborts or fails rolls back to its savepoint and leaves the others alone. Every decision
//! (take, unique insert, compare-and-set, claim) is made inside that single writer, so
//! check-then-write within a request is atomic by construction.
//!
//! The writer never waits for the disk: it commits with `synchronous=NORMAL` (COMMIT returns
//! once the WAL frames are written) and hands the batch's answers to the syncer thread, which
//! fdatasyncs the WAL and only then answers them, one fsync for every batch committed since
//! its last. Meanwhile the writer runs the next batch, so the fsync of one group overlaps the
//! work of the next instead of sitting in front of it. An acknowledged write is on disk
//! exactly as with `synchronous=FULL` (an fsync of the WAL covers every frame written before
//! it, whichever connection wrote it, and recovery replays every complete committed
//! transaction in it); a crash before the sync loses only writes nobody was told of. The
//! WAL checkpoints (`PASSIVE`, which never blocks the writer) run on a thread of their own, so
//! neither a commit nor an answer waits for one, and that thread also syncs the database file
//! after each pass; the writer finishes each checkpoint between two batches, copying only the
//! last few frames, so that the WAL starts over instead of growing (see `checkpoint_loop`).
//!
//! Reads go to [`READERS`] reader threads with read-only connections: WAL lets them run beside
//! the writer and see every commit that has been acknowledged.
//!
//! The directory is held with an exclusive `flock` on `outpost.db.lock` for the life of the
//! store: two processes writing one file would each believe they are the only writer.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::{
    audit::{AuditEvent, AuditQuery},
    metrics::StoreMetrics,
    ops::{
        from_unix_ms, now_ms, Abort, Inserted, Op, Record, Reply, Request, TxnOutcome,
        AUDIT_SWEEP_CHUNK, OUTBOX_KEEP_DONE_MS, SWEEP_CHUNK,
    },
    outbox::{OutboxItem, OutboxStats},
    schema, StoreError,
};

/// Requests per group commit at most: bounds the time one batch holds callers.
pub(crate) const MAX_BATCH: usize = 512;
/// Reader threads (read-only connections).
const READERS: usize = 2;
/// Batches the writer may commit before the syncer has synced the previous ones.
const AHEAD: u64 = 1;
/// Page cache of the writer's connection, KiB (grown as used; SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// Writer commits between two checkpoint passes: each copies what the WAL holds into the
/// database file and syncs it, so that one sync writes little beside the syncer's.
const COPY_EVERY: u32 = 64;
/// Every this many rounds of passes, the checkpoint is finished and the WAL starts over (about
/// every 256 commits: a login is about seven commits of a few pages, so the WAL stays around
/// SQLite's own 1000-page default).
const FINISH_EVERY: u32 = 4;
/// A checkpoint pass this short leaves the writer little to copy (see `checkpoint_loop`).
const CATCH_UP_PASS: Duration = Duration::from_millis(10);
/// Passes before a finish at most: each copies what was written during the one before.
const CATCH_UP_PASSES: usize = 4;

pub(crate) type ReplyTx = oneshot::Sender<Result<Reply, StoreError>>;

struct Job {
    req: Request,
    reply: ReplyTx,
}

/// Answers of a committed batch, sent by the syncer once the WAL is on disk.
type Answers = Vec<(ReplyTx, Result<Reply, StoreError>)>;

/// How many batches the syncer has synced, so that the writer stays at most one batch ahead
/// of the disk: it runs and commits a batch while the previous one is being synced, then
/// waits for that sync before taking the next. Left to run ahead it would commit many small
/// batches, each rewriting the same hot pages into the WAL; paced, a batch is whatever queued
/// during one fsync, as when the writer synced itself, and the fsync overlaps the next
/// batch's work instead of adding to it.
#[derive(Default)]
struct Synced {
    upto: Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Synced {
    fn set(&self, generation: u64) {
        let mut upto = self.upto.lock().unwrap_or_else(|e| e.into_inner());
        *upto = (*upto).max(generation);
        self.changed.notify_all();
    }

    /// Waits until `generation` is synced. Pacing only (every answer waits for its own sync
    /// regardless), so a syncer that stopped answering holds the writer back a second at most.
    fn wait(&self, generation: u64) {
        let upto = self.upto.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout_while(upto, Duration::from_secs(1), |u| *u < generation);
    }
}

pub(crate) struct Sqlite {
    path: PathBuf,
    writer: RwLock<Option<mpsc::Sender<Job>>>,
    readers: RwLock<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<StoreMetrics>,
    /// Holds the flock until the store shuts down (`None` for an operator tool's store).
    lock: Mutex<Option<File>>,
}

impl Sqlite {
    /// `exclusive`: take the directory's lock (an edge). An operator tool beside a running edge
    /// does not: SQLite's own file locking keeps the two processes' transactions apart.
    pub(crate) fn open(
        data_dir: &Path,
        busy: Duration,
        metrics: Arc<StoreMetrics>,
        exclusive: bool,
    ) -> Result<Sqlite, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the store directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let dir = data_dir.canonicalize().map_err(|e| {
            StoreError::Unavailable(format!("cannot resolve {}: {e}", data_dir.display()))
        })?;
        let path = dir.join("outpost.db");
        let lock = if exclusive { Some(lock_dir(&dir, &path)?) } else { None };
        // Created owner-only before SQLite sees it: SQLite gives its -wal and -shm files the
        // database file's mode, so they follow.
        private_file(&path)?;

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| classify(e, &path))?;
        conn.busy_timeout(busy).map_err(|e| classify(e, &path))?;
        // The version is read before any PRAGMA that writes (journal_mode changes the header):
        // a database from a newer outpost is refused untouched.
        let found = schema_version(&conn).map_err(|e| classify(e, &path))?;
        let pending: Vec<_> = schema::pending(schema::SQLITE, found)?.collect();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| classify(e, &path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{}: the filesystem does not support WAL (journal_mode stayed {mode})",
                path.display()
            )));
        }
        // FULL while migrating (its commit is durable when open returns). No automatic
        // checkpoint: it would run inside a COMMIT, with that batch's callers waiting; a
        // thread of its own runs them instead.
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA wal_autocheckpoint=0;",
        )
        .map_err(|e| classify(e, &path))?;
        migrate(&conn, &pending).map_err(|e| classify(e, &path))?;
        // From here on the syncer makes commits durable before anyone is told (module docs).
        conn.execute_batch("PRAGMA synchronous=NORMAL").map_err(|e| classify(e, &path))?;
        // The pages a write walks (interior pages of every index, the leaves random keys such
        // as token hashes land on) stay in the writer's own cache instead of being read back
        // from the kernel's at each write once the store outgrows SQLite's 2 MiB default.
        conn.execute_batch(&format!("PRAGMA cache_size=-{WRITER_CACHE_KIB}"))
            .map_err(|e| classify(e, &path))?;

        let (wtx, wrx) = mpsc::channel::<Job>();
        let (rtx, rrx) = mpsc::channel::<Job>();
        let (stx, srx) = mpsc::channel::<(u64, Answers)>();
        let synced = Arc::new(Synced::default());
        // One checkpoint asked for at a time: a request while one is pending is dropped.
        let (ctx, crx) = mpsc::sync_channel::<()>(1);
        let rrx = Arc::new(Mutex::new(rrx));
        let mut threads = Vec::with_capacity(3 + READERS);
        for i in 0..READERS {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let rconn =
                Connection::open_with_flags(&path, flags).map_err(|e| classify(e, &path))?;
            rconn.busy_timeout(busy).map_err(|e| classify(e, &path))?;
            let (rrx, metrics, path) = (rrx.clone(), metrics.clone(), path.clone());
            threads.push(spawn(&format!("outpost-store-r{i}"), move || {
                reader_loop(rconn, &rrx, &metrics, &path)
            })?);
        }
        // Read-write, for checkpoints only.
        let cconn = Connection::open_with_flags(&path, flags).map_err(|e| classify(e, &path))?;
        cconn.busy_timeout(busy).map_err(|e| classify(e, &path))?;
        let caught_up = Arc::new(AtomicBool::new(false));
        let ccaught = caught_up.clone();
        // The checkpoint thread's own handle of the file, for the syncs after its passes.
        let db = File::open(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        threads
            .push(spawn("outpost-store-ckpt", move || checkpoint_loop(cconn, db, crx, &ccaught))?);
        let wal = wal_path(&path);
        let (smetrics, spath, ssynced) = (metrics.clone(), path.clone(), synced.clone());
        threads.push(spawn("outpost-store-sync", move || {
            syncer_loop(&wal, srx, &ssynced, &smetrics, &spath)
        })?);
        let (wmetrics, wpath) = (metrics.clone(), path.clone());
        threads.push(spawn("outpost-store-w", move || {
            writer_loop(conn, wrx, &stx, &synced, (&ctx, &caught_up), &wmetrics, &wpath)
        })?);
        metrics.set_sqlite_connections(2 + READERS as i64);
        Ok(Sqlite {
            path,
            writer: RwLock::new(Some(wtx)),
            readers: RwLock::new(Some(rtx)),
            threads: Mutex::new(threads),
            metrics,
            lock: Mutex::new(lock),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `req` for the writer (or a reader); the answer comes on the returned channel.
    pub(crate) fn submit(
        &self,
        req: Request,
    ) -> Result<oneshot::Receiver<Result<Reply, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let queue = if req.is_read() { &self.readers } else { &self.writer };
        let guard = queue.read().map_err(|_| shut())?;
        let sender = guard.as_ref().ok_or_else(shut)?;
        self.metrics.in_flight(1);
        if sender.send(Job { req, reply }).is_err() {
            self.metrics.in_flight(-1);
            return Err(shut());
        }
        Ok(rx)
    }

    /// Closes the queues; the writer commits what was queued before it stops, and the syncer
    /// answers what it holds once the writer is gone. Joins the threads (each finishes within
    /// one batch).
    pub(crate) fn shutdown(&self) {
        for q in [&self.writer, &self.readers] {
            if let Ok(mut q) = q.write() {
                q.take();
            }
        }
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        for t in threads {
            let _ = t.join();
        }
        // Nothing writes any more: the directory is free for the next process.
        drop(self.lock.lock().map(|mut l| l.take()));
    }
}

fn shut() -> StoreError {
    StoreError::Unavailable("the store is shut down".into())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StoreError::Other(format!("cannot start the store's {name} thread: {e}")))
}

/// Takes the directory's exclusive lock once its holder (the edge this process succeeds)
/// lets go, and holds it for the life of the process, on a thread of its own.
pub(crate) fn lock_when_free(data_dir: &Path) -> Result<(), StoreError> {
    let file = open_lock(&data_dir.join("outpost.db.lock"))?;
    std::thread::Builder::new()
        .name("outpost-store-lock".into())
        .spawn(move || {
            // SAFETY: flock on a file descriptor this thread owns for as long as it runs.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the lock thread: {e}")))?;
    Ok(())
}

fn open_lock(lock_path: &Path) -> Result<File, StoreError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(lock_path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display())))
}

/// Takes the directory's exclusive lock, without waiting.
fn lock_dir(dir: &Path, db: &Path) -> Result<File, StoreError> {
    let lock_path = dir.join("outpost.db.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display()))
        })?;
    // SAFETY: flock on a file descriptor we own for as long as `file` lives.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(format!(
                "the store {} is in use by another outpost process",
                db.display()
            )));
        }
        return Err(StoreError::Unavailable(format!("cannot lock {}: {err}", lock_path.display())));
    }
    Ok(file)
}

/// SQLite's name for the WAL of the database `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Creates `path` readable and writable by its owner only, if it does not exist yet.
fn private_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))),
    }
}

/// Turns a SQLite error into the store's, naming the file.
fn classify(e: rusqlite::Error, path: &Path) -> StoreError {
    let p = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            StoreError::Corrupt(format!("{p} is not an SQLite database: {e}"))
        }
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt(format!("{p}: {e}")),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Timeout,
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::NoLargeFileSupport,
        ) => StoreError::Unavailable(format!("{p}: {e}")),
        _ => StoreError::Other(format!("{p}: {e}")),
    }
}

/// 0 for a new (empty) database.
fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(0);
    }
    conn.query_row("SELECT coalesce(max(version), 0) FROM schema_version", [], |r| r.get(0))
}

fn migrate(conn: &Connection, pending: &[&(i64, &str)]) -> rusqlite::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS schema_version (
             version INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         );",
    )?;
    let run = || -> rusqlite::Result<()> {
        for (version, sql) in pending {
            conn.execute_batch(sql)?;
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
                params![version, now_ms()],
            )?;
        }
        conn.execute_batch("COMMIT")
    };
    run().inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    syncer: &mpsc::Sender<(u64, Answers)>,
    synced: &Synced,
    (checkpointer, caught_up): (&mpsc::SyncSender<()>, &AtomicBool),
    metrics: &StoreMetrics,
    path: &Path,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut since_pass = 0u32;
    let mut generation = 0u64;
    while let Ok(job) = rx.recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if commit_batch(&conn, &mut batch, generation + 1, syncer, metrics, path) {
            generation += 1;
            synced.wait(generation - AHEAD);
        }
        if caught_up.swap(false, Ordering::AcqRel) {
            // No transaction is open between batches: the rest of the WAL is copied and the
            // next commit starts it over (see checkpoint_loop).
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        since_pass += 1;
        if since_pass >= COPY_EVERY {
            // Full: one is pending already, which will cover these commits too.
            let _ = checkpointer.try_send(());
            since_pass = 0;
        }
    }
    // Every sender is gone: queued work was drained above. What is left in the WAL is copied
    // by whichever connection closes last, or recovered by the next open.
    let _ = conn.close();
}

/// Runs `batch` in one transaction, one savepoint per request, one COMMIT; then has the syncer
/// answer once the WAL is on disk. True when it handed the commit to the syncer as
/// `generation`.
fn commit_batch(
    conn: &Connection,
    batch: &mut Vec<Job>,
    generation: u64,
    syncer: &mpsc::Sender<(u64, Answers)>,
    metrics: &StoreMetrics,
    path: &Path,
) -> bool {
    // A caller that gave up (timed out) would never learn the outcome, and a `take` done for
    // it would lose the value: such requests are dropped unexecuted.
    let before = batch.len();
    batch.retain(|j| !j.reply.is_closed());
    metrics.in_flight(-((before - batch.len()) as i64));
    if batch.is_empty() {
        return false;
    }
    let now = now_ms();
    let mut results = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<(), StoreError> {
        exec(conn, "BEGIN IMMEDIATE").map_err(|e| classify(e, path))?;
        for job in batch.iter() {
            exec(conn, "SAVEPOINT req").map_err(|e| classify(e, path))?;
            let r = apply_write(conn, &job.req, now).map_err(|e| match e {
                Failure::Sql(e) => classify(e, path),
                Failure::Store(e) => e,
            });
            let keep = matches!(&r, Ok(reply) if !is_abort(reply));
            if !conn.is_autocommit() {
                if !keep {
                    exec(conn, "ROLLBACK TO req").map_err(|e| classify(e, path))?;
                }
                exec(conn, "RELEASE req").map_err(|e| classify(e, path))?;
            }
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (I/O error, disk full): what the
                // batch applied so far is gone, so nobody in it may be told "done".
                return Err(r.err().unwrap_or_else(|| {
                    StoreError::Unavailable(format!("{}: transaction lost", path.display()))
                }));
            }
            results.push(r);
        }
        exec(conn, "COMMIT").map_err(|e| classify(e, path))
    })();
    metrics.record_batch(batch.len());
    match outcome {
        Ok(()) => {
            let answers = batch.drain(..).map(|j| j.reply).zip(results).collect();
            match syncer.send((generation, answers)) {
                Ok(()) => true,
                Err(mpsc::SendError((_, answers))) => {
                    // The syncer is gone (it outlives the writer, so only by a panic): sync
                    // here.
                    answer_synced(answers, &wal_path(path), metrics, path);
                    false
                }
            }
        }
        Err(e) => {
            metrics.in_flight(-(batch.len() as i64));
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(e.clone()));
            }
            false
        }
    }
}

/// Syncs the WAL for batches the writer committed, then answers them: one fsync for every
/// batch queued meanwhile. Stops once the writer is gone and everything it handed over is
/// answered.
fn syncer_loop(
    wal: &Path,
    rx: mpsc::Receiver<(u64, Answers)>,
    synced: &Synced,
    metrics: &StoreMetrics,
    path: &Path,
) {
    while let Ok((mut generation, mut answers)) = rx.recv() {
        while let Ok((g, more)) = rx.try_recv() {
            generation = g;
            answers.extend(more);
        }
        answer_synced(answers, wal, metrics, path);
        synced.set(generation);
    }
}

/// Runs a WAL checkpoint each time the writer asks. PASSIVE: copies what no reader still needs
/// and never waits for the writer; what it leaves is copied next time. A failure (another
/// process checkpointing) only lets the WAL grow until the next one. Stops with the writer.
///
/// A checkpoint running beside a busy writer never catches up with it, and SQLite starts the
/// WAL over only once everything in it is copied: left alone, the WAL grew by gigabytes under
/// a steady load, and every page lookup and the recovery after a crash with it. So once this
/// thread has copied the bulk, it tells the writer (`caught_up`), which copies the few frames
/// written meanwhile itself, between two batches; the WAL then starts over at its next commit.
///
/// SQLite syncs the database file only in the checkpoint that reaches the end of the WAL: that
/// is the writer's, which would then write out every page this thread copied, with commits
/// waiting behind it (40-90 ms at 10,000 reservations/s, benches/README). So this thread syncs
/// the file after each pass itself, one pass every [`COPY_EVERY`] commits so that each sync is
/// small (a large one slows the syncer's WAL syncs beside it). Every [`FINISH_EVERY`]th round
/// finishes: it passes again over what was written meanwhile until a pass is short
/// ([`CATCH_UP_PASS`], at most [`CATCH_UP_PASSES`]), so that the writer's share is a few
/// milliseconds of frames. SQLite's own sync in the writer's step still comes before the WAL
/// can start over, so these syncs only move work off the writer.
fn checkpoint_loop(conn: Connection, db: File, rx: mpsc::Receiver<()>, caught_up: &AtomicBool) {
    let mut rounds = 0u32;
    while rx.recv().is_ok() {
        rounds = rounds.wrapping_add(1);
        let finish = rounds.is_multiple_of(FINISH_EVERY);
        let passes = if finish { CATCH_UP_PASSES } else { 1 };
        let mut copied = false;
        for _ in 0..passes {
            let started = Instant::now();
            copied = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).is_ok();
            // A failed sync is left to SQLite's, which reports it.
            let _ = db.sync_data();
            if !copied || started.elapsed() < CATCH_UP_PASS {
                break;
            }
        }
        if copied && finish {
            caught_up.store(true, Ordering::Release);
        }
    }
    let _ = conn.close();
}

/// fdatasync of the WAL file: every commit written to it so far is then on disk, whichever
/// connection wrote it. Then the answers go out.
fn answer_synced(answers: Answers, wal: &Path, metrics: &StoreMetrics, path: &Path) {
    let synced = File::open(wal).and_then(|f| f.sync_data()).map_err(|e| {
        StoreError::Unavailable(format!("{}: cannot sync the WAL: {e}", path.display()))
    });
    metrics.in_flight(-(answers.len() as i64));
    for (reply, r) in answers {
        let _ = reply.send(match &synced {
            Ok(()) => r,
            Err(e) => Err(e.clone()),
        });
    }
}

fn reader_loop(conn: Connection, rx: &Mutex<mpsc::Receiver<Job>>, m: &StoreMetrics, p: &Path) {
    loop {
        // The lock is held only while waiting: whichever reader is idle takes the next job.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        m.in_flight(-1);
        if job.reply.is_closed() {
            continue;
        }
        let r = apply_read(&conn, &job.req, now_ms()).map_err(|e| match e {
            Failure::Sql(e) => classify(e, p),
            Failure::Store(e) => e,
        });
        let _ = job.reply.send(r);
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn is_abort(reply: &Reply) -> bool {
    matches!(reply, Reply::Txn(TxnOutcome::Aborted { .. }))
}

/// A request failed: SQLite said so, or what it returned made no sense.
enum Failure {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Failure {
        Failure::Sql(e)
    }
}

type Res<T> = Result<T, Failure>;

fn expiry(now: i64, ttl_ms: Option<i64>) -> Option<i64> {
    ttl_ms.map(|t| now.saturating_add(t))
}

fn live(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_none_or(|e| e > now)
}

fn apply_write(conn: &Connection, req: &Request, now: i64) -> Res<Reply> {
    Ok(match req {
        Request::Put { ns, key, value, ttl_ms } => {
            put(conn, ns, key, value, expiry(now, *ttl_ms))?;
            Reply::Done
        }
        Request::Take { ns, key } => Reply::Value(take(conn, ns, key, now)?),
        Request::Delete { ns, key } => Reply::Flag(delete(conn, ns, key, now)?),
        Request::Insert { ns, key, value, ttl_ms } => {
            Reply::Inserted(match insert(conn, ns, key, value, expiry(now, *ttl_ms), now)? {
                None => Inserted::Done,
                Some(existing) => Inserted::Conflict { existing },
            })
        }
        Request::Txn(ops) => Reply::Txn(txn(conn, ops, now)?),
        Request::Enqueue { topic, payload } => Reply::Id(enqueue(conn, topic, payload, now)?),
        Request::Claim { topic, owner, limit, lease_ms, own } => {
            let mut stmt = conn.prepare_cached(
                "UPDATE outbox SET lease_until = ?1, owner = ?2
                 WHERE id IN (
                     SELECT id FROM outbox
                     WHERE topic = ?3 AND done_at IS NULL AND next_at <= ?4
                       AND (lease_until IS NULL OR (?6 AND owner = ?2) OR lease_until <= ?4)
                     ORDER BY next_at, id LIMIT ?5)
                 RETURNING id, topic, payload, attempts, created_at",
            )?;
            let rows = stmt.query_map(
                params![now.saturating_add(*lease_ms), owner, topic, now, limit, own],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?, r.get(4)?)),
            )?;
            let mut items = Vec::new();
            for row in rows {
                let (id, topic, payload, attempts, created): (i64, String, Vec<u8>, i64, i64) =
                    row?;
                items.push(OutboxItem {
                    id,
                    topic,
                    payload,
                    attempts: u32::try_from(attempts).map_err(|_| {
                        Failure::Store(StoreError::Other(format!(
                            "outbox row {id}: bad attempts {attempts}"
                        )))
                    })?,
                    created_at: from_unix_ms(created),
                });
            }
            items.sort_by_key(|i| i.id);
            Reply::Claimed(items)
        }
        Request::Complete { ids, owner } => {
            let mut stmt = conn.prepare_cached(
                "UPDATE outbox SET done_at = ?3, lease_until = NULL
                 WHERE id = ?1 AND owner = ?2 AND done_at IS NULL",
            )?;
            let mut done = 0;
            for id in ids {
                done += stmt.execute(params![id, owner, now])?;
            }
            Reply::Id(done as i64)
        }
        Request::Retry { id, owner, delay_ms, error } => Reply::Flag(
            conn.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?3, lease_until = NULL,
                     owner = NULL, last_error = ?4
                 WHERE id = ?1 AND owner = ?2 AND done_at IS NULL",
            )?
            .execute(params![id, owner, now.saturating_add(*delay_ms), error])?
                == 1,
        ),
        Request::Renew { ids, owner, lease_ms } => {
            let mut stmt = conn.prepare_cached(
                "UPDATE outbox SET lease_until = ?3
                 WHERE id = ?1 AND owner = ?2 AND done_at IS NULL AND lease_until IS NOT NULL",
            )?;
            let until = now.saturating_add(*lease_ms);
            let mut renewed = 0;
            for id in ids {
                renewed += stmt.execute(params![id, owner, until])?;
            }
            Reply::Id(renewed as i64)
        }
        Request::AppendAudit(events) => {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO audit (time_ms, node, client, host, path, user_name, kind, outcome,
                     reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in events {
                stmt.execute(params![
                    crate::ops::unix_ms(e.time),
                    e.node,
                    e.client,
                    e.host,
                    e.path,
                    e.user,
                    e.kind,
                    e.outcome,
                    e.reason
                ])?;
            }
            Reply::Done
        }
        Request::Sweep { audit_keep_ms } => {
            let values = conn
                .prepare_cached(
                    "DELETE FROM kv WHERE (ns, key) IN (
                         SELECT ns, key FROM kv WHERE expires_at <= ?1 LIMIT ?2)",
                )?
                .execute(params![now, SWEEP_CHUNK])?;
            let outbox = conn
                .prepare_cached(
                    "DELETE FROM outbox WHERE id IN (
                         SELECT id FROM outbox WHERE done_at <= ?1 LIMIT ?2)",
                )?
                .execute(params![now - OUTBOX_KEEP_DONE_MS, SWEEP_CHUNK])?;
            let audit = match audit_keep_ms {
                Some(keep) => conn
                    .prepare_cached(
                        "DELETE FROM audit WHERE id IN (
                             SELECT id FROM audit WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
                    )?
                    .execute(params![now.saturating_sub(*keep), AUDIT_SWEEP_CHUNK])?,
                None => 0,
            };
            Reply::Swept { values: values as u64, outbox: outbox as u64, audit: audit as u64 }
        }
        Request::Get { .. }
        | Request::Scan { .. }
        | Request::OutboxStats
        | Request::QueryAudit(_) => apply_read(conn, req, now)?,
    })
}

fn apply_read(conn: &Connection, req: &Request, now: i64) -> Res<Reply> {
    Ok(match req {
        Request::Get { ns, key } => Reply::Value(
            conn.prepare_cached(
                "SELECT value FROM kv
                 WHERE ns = ?1 AND key = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
            )?
            .query_row(params![ns, key, now], |r| r.get(0))
            .optional()?,
        ),
        Request::Scan { ns, after, limit } => {
            // Two statements, not `(?2 IS NULL OR key > ?2)`: SQLite plans a statement once,
            // and only a plain `key > ?` starts a page at its cursor in the primary key (the
            // other form walks the namespace from its first key on every page).
            let record = |r: &rusqlite::Row<'_>| {
                Ok(Record {
                    key: r.get(0)?,
                    value: r.get(1)?,
                    expires_at: r.get::<_, Option<i64>>(2)?.map(from_unix_ms),
                })
            };
            let records = match after {
                None => conn
                    .prepare_cached(
                        "SELECT key, value, expires_at FROM kv
                         WHERE ns = ?1 AND (expires_at IS NULL OR expires_at > ?2)
                         ORDER BY key LIMIT ?3",
                    )?
                    .query_map(params![ns, now, limit], record)?
                    .collect::<rusqlite::Result<_>>()?,
                Some(after) => conn
                    .prepare_cached(
                        "SELECT key, value, expires_at FROM kv
                         WHERE ns = ?1 AND key > ?2 AND (expires_at IS NULL OR expires_at > ?3)
                         ORDER BY key LIMIT ?4",
                    )?
                    .query_map(params![ns, after, now, limit], record)?
                    .collect::<rusqlite::Result<_>>()?,
            };
            Reply::Records(records)
        }
        Request::OutboxStats => {
            let (pending, oldest): (i64, Option<i64>) = conn
                .prepare_cached(
                    "SELECT count(*), min(created_at) FROM outbox WHERE done_at IS NULL",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Reply::Stats(OutboxStats {
                pending: pending.max(0) as u64,
                oldest_age: oldest
                    .map(|c| Duration::from_millis(now.saturating_sub(c).max(0) as u64)),
            })
        }
        Request::QueryAudit(q) => Reply::Audit(query_audit(conn, q)?),
        _ => {
            return Err(Failure::Store(StoreError::Other(
                "a write reached a read-only connection".into(),
            )))
        }
    })
}

fn query_audit(conn: &Connection, q: &AuditQuery) -> Res<Vec<AuditEvent>> {
    let mut stmt = conn.prepare_cached(&crate::audit::query_sql(q, "?"))?;
    let since = q.since.map(crate::ops::unix_ms);
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    // The statement names only the filters that are set, numbered in this order.
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(4);
    if let Some(since) = &since {
        args.push(since);
    }
    if let Some(user) = &q.user {
        args.push(user);
    }
    if let Some(kind) = &q.kind {
        args.push(kind);
    }
    args.push(&limit);
    let rows = stmt.query_map(args.as_slice(), |r| {
        Ok(AuditEvent {
            time: from_unix_ms(r.get(0)?),
            node: r.get(1)?,
            client: r.get(2)?,
            host: r.get(3)?,
            path: r.get(4)?,
            user: r.get(5)?,
            kind: r.get(6)?,
            outcome: r.get(7)?,
            reason: r.get(8)?,
        })
    })?;
    let mut events = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    events.reverse();
    Ok(events)
}

fn put(conn: &Connection, ns: &str, key: &str, value: &[u8], exp: Option<i64>) -> Res<()> {
    conn.prepare_cached(
        "INSERT INTO kv (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
    )?
    .execute(params![ns, key, value, exp])?;
    Ok(())
}

/// The live value and its expiry, if any.
fn current(conn: &Connection, ns: &str, key: &str, now: i64) -> Res<Option<Vec<u8>>> {
    let row: Option<(Vec<u8>, Option<i64>)> = conn
        .prepare_cached("SELECT value, expires_at FROM kv WHERE ns = ?1 AND key = ?2")?
        .query_row(params![ns, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.filter(|(_, exp)| live(*exp, now)).map(|(v, _)| v))
}

fn take(conn: &Connection, ns: &str, key: &str, now: i64) -> Res<Option<Vec<u8>>> {
    let row: Option<(Vec<u8>, Option<i64>)> = conn
        .prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2 RETURNING value, expires_at")?
        .query_row(params![ns, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.filter(|(_, exp)| live(*exp, now)).map(|(v, _)| v))
}

fn delete(conn: &Connection, ns: &str, key: &str, now: i64) -> Res<bool> {
    Ok(take(conn, ns, key, now)?.is_some())
}

/// None: inserted. Some(existing): a live row holds the key.
fn insert(
    conn: &Connection,
    ns: &str,
    key: &str,
    value: &[u8],
    exp: Option<i64>,
    now: i64,
) -> Res<Option<Vec<u8>>> {
    // One statement in the common case: it creates the row or replaces an expired one, and
    // returns a row only when it wrote. Only a live row (a conflict) is read back, and one
    // writer thread means nothing slips in between.
    let wrote = conn
        .prepare_cached(
            "INSERT INTO kv (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (ns, key) DO UPDATE
             SET value = excluded.value, expires_at = excluded.expires_at
             WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?5
             RETURNING 1",
        )?
        .query_row(params![ns, key, value, exp, now], |_| Ok(()))
        .optional()?;
    if wrote.is_some() {
        return Ok(None);
    }
    match current(conn, ns, key, now)? {
        Some(existing) => Ok(Some(existing)),
        None => Err(Failure::Store(StoreError::Other(format!(
            "insert {ns}/{key}: neither written nor held"
        )))),
    }
}

fn enqueue(conn: &Connection, topic: &str, payload: &[u8], now: i64) -> Res<i64> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO outbox (topic, payload, attempts, created_at, next_at)
             VALUES (?1, ?2, 0, ?3, ?3) RETURNING id",
        )?
        .query_row(params![topic, payload, now], |r| r.get(0))?)
}

/// Applies `ops` in order; the caller rolls the savepoint back when this returns Aborted.
fn txn(conn: &Connection, ops: &[Op], now: i64) -> Res<TxnOutcome> {
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let abort = |why| Ok(TxnOutcome::Aborted { op: i, why });
        match op {
            Op::Insert { ns, key, value, ttl } => {
                let exp = expiry(now, ttl.map(crate::ops::millis));
                if let Some(existing) = insert(conn, ns, key, value, exp, now)? {
                    return abort(Abort::Conflict(existing));
                }
                out.push(None);
            }
            Op::Put { ns, key, value, ttl } => {
                put(conn, ns, key, value, expiry(now, ttl.map(crate::ops::millis)))?;
                out.push(None);
            }
            Op::Take { ns, key } => match take(conn, ns, key, now)? {
                Some(v) => out.push(Some(v)),
                None => return abort(Abort::Missing),
            },
            Op::Swap { ns, key, expect, new, ttl } => {
                let cur = current(conn, ns, key, now)?;
                if cur.as_ref() != Some(expect) {
                    return abort(Abort::Mismatch(cur));
                }
                match new {
                    Some(v) => put(conn, ns, key, v, expiry(now, ttl.map(crate::ops::millis)))?,
                    None => {
                        take(conn, ns, key, now)?;
                    }
                }
                out.push(None);
            }
            Op::Delete { ns, key } => {
                delete(conn, ns, key, now)?;
                out.push(None);
            }
            Op::Enqueue { topic, payload } => {
                out.push(Some(enqueue(conn, topic, payload, now)?.to_le_bytes().to_vec()));
            }
        }
    }
    Ok(TxnOutcome::Committed(out))
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, sync::atomic::Ordering, time::SystemTime};

    use crate::{AuditEvent, AuditQuery, Store, StoreConfig};

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            node: "n".into(),
            client: None,
            host: None,
            path: None,
            user: None,
            kind: "test.audit".into(),
            outcome: "success".into(),
            reason: Some(format!("e{i}")),
        }
    }

    /// Audit appends are answered by the syncer, beside requests answered by the writer: each
    /// acknowledged one is there after a shutdown under load and a reopen.
    #[test]
    fn audit_appends_beside_writes_survive_shutdown() {
        let dir = std::env::temp_dir().join(format!("outpost-store-syncer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&StoreConfig::default(), &dir).expect("open");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let answered = std::sync::Arc::new(AtomicUsize::new(0));
        let audited = std::sync::Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let (s, answered, audited) = (store.clone(), answered.clone(), audited.clone());
                rt.spawn(async move {
                    let r = if i % 2 == 0 {
                        let r = s.append_audit(vec![event(i)]).await;
                        audited.fetch_add(usize::from(r.is_ok()), Ordering::SeqCst);
                        r
                    } else {
                        s.put("q", &format!("k{i}"), b"v", None).await
                    };
                    answered.fetch_add(1, Ordering::SeqCst);
                    (i, r)
                })
            })
            .collect();
        // Shut down in the middle: some answered, audit appends among them (they are written
        // in paced groups, puts one by one).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while answered.load(Ordering::SeqCst) < 50 || audited.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "no audit append answered");
            std::thread::yield_now();
        }
        store.shutdown();
        let results: Vec<_> = tasks.into_iter().map(|t| rt.block_on(t).unwrap()).collect();
        drop(store);

        let store = Store::open(&StoreConfig::default(), &dir).expect("reopen");
        let q =
            AuditQuery { kind: Some("test.audit".into()), limit: 1000, ..AuditQuery::default() };
        let kept: Vec<String> = rt
            .block_on(store.query_audit(&q))
            .expect("query")
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        let mut audits = 0;
        for (i, r) in &results {
            if r.is_err() {
                continue;
            }
            if i % 2 == 0 {
                audits += 1;
                assert!(kept.contains(&format!("e{i}")), "acknowledged audit event e{i} lost");
            } else {
                let got = rt.block_on(store.get("q", &format!("k{i}"))).expect("get");
                assert_eq!(got, Some(b"v".to_vec()), "acknowledged k{i} lost");
            }
        }
        assert!(audits > 0, "no audit append was acknowledged: {results:?}");
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
