//! The store's own tokio runtime, on threads the store owns. Callers live on other runtimes
//! (tokio-uring workers with a LocalSet, plain tokio in tests): every operation is spawned
//! here and the caller awaits the JoinHandle, which works from any runtime or none. Timers,
//! the PostgreSQL pool and its connection tasks, the sweeper and outbox workers all run here.

use std::{cell::Cell, future::Future, sync::Mutex, thread::JoinHandle, time::Duration};

use tokio::{runtime::Handle, sync::oneshot};

use crate::StoreError;

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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("outpost-store")
            .on_thread_start(|| ON_STORE_RUNTIME.with(|f| f.set(true)))
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
