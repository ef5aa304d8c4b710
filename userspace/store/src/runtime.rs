//! The store's own tokio runtime, on threads the store owns. Callers live on other runtimes
//! (tokio-uring workers with a LocalSet, plain tokio in tests): every operation is spawned
//! here and the caller awaits the JoinHandle, which works from any runtime or none. Timers,
//! the PostgreSQL pool and its connection tasks, the sweeper and outbox workers all run here.

use std::{cell::Cell, future::Future, sync::Mutex, thread::JoinHandle, time::Duration};

use tokio::{runtime::Handle, sync::oneshot};

use crate::StoreError;

/// The niceness of the background runtime's thread (0 is the default, 19 the lowest).
pub(crate) const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to `nice` (on Linux a thread has its own).
/// Best effort: a failure leaves the thread at the default priority.
fn lower_priority(nice: i32) {
    // SAFETY: plain syscalls on the calling thread, no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

thread_local! {
    /// Set on the runtime's threads: a store dropped there must not join its own runtime.
    static ON_STORE_RUNTIME: Cell<bool> = const { Cell::new(false) };
}

pub(crate) struct StoreRuntime {
    handle: Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StoreRuntime {
    /// A multi-thread runtime with `workers` threads, driven from a thread of its own that
    /// also owns (and finally drops) it, so dropping never happens inside someone's async
    /// context.
    pub(crate) fn start(workers: usize) -> Result<StoreRuntime, StoreError> {
        StoreRuntime::start_named(workers, "outpost-store", 0)
    }

    /// The runtime for work that may wait (the outbox workers' deliveries): one thread at
    /// `nice` [`BACKGROUND_NICE`], so that when the CPU is short (a launch spike) the request
    /// path and the store's own I/O come first, and mail goes at full speed again when it is
    /// not. Store operations the work awaits still run on the store runtime.
    pub(crate) fn start_background() -> Result<StoreRuntime, StoreError> {
        StoreRuntime::start_named(1, "outpost-outbox", BACKGROUND_NICE)
    }

    fn start_named(
        workers: usize,
        name: &'static str,
        nice: i32,
    ) -> Result<StoreRuntime, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .on_thread_start(move || {
                ON_STORE_RUNTIME.with(|f| f.set(true));
                if nice != 0 {
                    lower_priority(nice);
                }
            })
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("cannot start the store runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("outpost-store-rt".into())
            .spawn(move || {
                ON_STORE_RUNTIME.with(|f| f.set(true));
                let _ = rt.block_on(stopped);
                // Tasks still running (outbox workers) are cancelled; a second is plenty for
                // the connection tasks to notice.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| StoreError::Other(format!("cannot start the store runtime: {e}")))?;
        Ok(StoreRuntime { handle, stop: Mutex::new(Some(stop)), thread: Mutex::new(Some(thread)) })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `fut` on the store runtime and waits for it from a synchronous caller (open),
    /// bounded by `limit`. Blocking is fine there; `Handle::block_on` would panic when the
    /// caller is itself inside a runtime.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Stops the runtime (cancelling what still runs on it) and joins its thread, unless
    /// called from the runtime itself, which then winds down on its own.
    pub(crate) fn stop(&self) {
        if let Some(stop) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
        if ON_STORE_RUNTIME.with(Cell::get) {
            return;
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}
