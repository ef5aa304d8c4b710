//! One worker thread's state: its origin connection pool, its latency histogram, and what is
//! still running on it (connections, work left for after a response), which a drain waits for.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::Instant,
};

use outpost_api::Peer;
use tokio::sync::Notify;

use crate::{io, metrics::Latency, shared::Shared};

/// One worker thread's state.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub pool: RefCell<Pool>,
    pub latency: Latency,
    /// Open client connections.
    pub active: Cell<usize>,
    /// After-response tasks not finished yet.
    pub after_pending: Cell<usize>,
    /// Notified when either count drops.
    pub idle: Notify,
}

impl Worker {
    /// Runs `task` (work a handler left for after its response) on this worker, unless
    /// `max` of them are already pending: then it is dropped, counted and logged.
    pub(crate) fn run_after_response(
        self: &Rc<Self>,
        task: outpost_api::handler::Task,
        max: usize,
    ) {
        if self.after_pending.get() >= max {
            self.shared.metrics.after_response_dropped();
            tracing::warn!(pending = max, "after-response queue full; work dropped");
            return;
        }
        self.after_pending.set(self.after_pending.get() + 1);
        self.shared.metrics.after_response_started();
        let worker = self.clone();
        io::spawn(async move {
            task.await;
            worker.after_pending.set(worker.after_pending.get() - 1);
            worker.shared.metrics.after_response_finished();
            worker.idle.notify_waiters();
        });
    }

    pub(crate) fn busy(&self) -> bool {
        self.active.get() > 0 || self.after_pending.get() > 0
    }
}

/// Idle origin connections of one worker, by address.
#[derive(Default)]
pub(crate) struct Pool {
    idle: HashMap<SocketAddr, Vec<(io::Stream, Instant)>>,
}

impl Pool {
    /// The most recently used live connection to `peer`, if any.
    pub(crate) fn take(&mut self, peer: &Peer) -> Option<io::Stream> {
        let list = self.idle.get_mut(&peer.addr)?;
        while let Some((s, since)) = list.pop() {
            if since.elapsed() < peer.pool_idle && s.idle_and_open() {
                return Some(s);
            }
        }
        None
    }

    pub(crate) fn put(&mut self, peer: &Peer, s: io::Stream) {
        if peer.pool_size == 0 {
            return;
        }
        let list = self.idle.entry(peer.addr).or_default();
        if list.len() >= peer.pool_size {
            // The oldest goes: it is the likeliest to be closed by the origin soon.
            list.remove(0);
        }
        list.push((s, Instant::now()));
    }
}
