//! One worker thread's state: its origin connection pool, its latency histogram, and what is
//! still running on it (connections, upgraded ones among them, work left for after a
//! response), which a drain waits for.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
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
    /// Notified when any of these counts drops.
    pub idle: Notify,
    /// Open upgraded (spliced) connections, counted in `active` too.
    pub upgraded: Cell<usize>,
    /// Set, and `closing` notified, when upgraded connections must end (a drain's grace ran
    /// out).
    pub closing_upgraded: Cell<bool>,
    pub closing: Notify,
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

    /// Counts an upgraded connection (here and in the metrics) while the guard lives.
    pub(crate) fn upgraded_opened(self: &Rc<Self>) -> UpgradedGuard {
        self.upgraded.set(self.upgraded.get() + 1);
        self.shared.metrics.upgraded_opened();
        UpgradedGuard(self.clone())
    }

    /// Ends every upgraded connection of this worker.
    pub(crate) fn close_upgraded(&self) {
        self.closing_upgraded.set(true);
        self.closing.notify_waiters();
    }

    /// Resolves once [`close_upgraded`](Self::close_upgraded) was called.
    pub(crate) async fn upgraded_closing(&self) {
        loop {
            // Registered before the flag is read: a call in between still wakes it.
            let notified = self.closing.notified();
            if self.closing_upgraded.get() {
                return;
            }
            notified.await;
        }
    }
}

/// An open upgraded connection (see [`Worker::upgraded_opened`]).
pub(crate) struct UpgradedGuard(Rc<Worker>);

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.upgraded.set(self.0.upgraded.get() - 1);
        self.0.shared.metrics.upgraded_closed();
        self.0.idle.notify_waiters();
    }
}

/// Idle origin connections of one worker, by address.
#[derive(Default)]
pub(crate) struct Pool {
    idle: HashMap<SocketAddr, VecDeque<(io::Stream, Instant)>>,
}

impl Pool {
    /// The most recently used live connection to `peer`, if any.
    pub(crate) fn take(&mut self, peer: &Peer) -> Option<io::Stream> {
        let list = self.idle.get_mut(&peer.addr)?;
        while let Some((s, since)) = list.pop_back() {
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
            list.pop_front();
        }
        list.push_back((s, Instant::now()));
    }
}
