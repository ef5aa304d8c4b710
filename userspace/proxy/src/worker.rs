//! One worker thread's state: its origin connection pool, its latency histogram, and what is
//! still running on it (connections, upgraded ones among them, work left for after a
//! response), which a drain waits for.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use outpost_api::Peer;
use rustc_hash::FxHashMap;
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

/// Idle origin connections of one worker, by address. The addresses are the configured
/// origins', never a client's, so they are hashed with rustc's hasher rather than SipHash.
#[derive(Default)]
pub(crate) struct Pool {
    idle: FxHashMap<SocketAddr, VecDeque<Idle>>,
}

/// A connection in the [`Pool`].
struct Idle {
    stream: io::Stream,
    since: Instant,
    /// When `pool_idle` runs out for it: [`Pool::sweep`] closes it then if no request took it.
    expires: Instant,
    /// The response before it carried no body: where an origin that sends stray bytes (a body
    /// after a HEAD or 304 response) sends them.
    bodiless: bool,
}

/// How long a pooled connection may sit idle before it is checked whatever the request
/// (see [`Pool::take`]).
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// What the request about to be sent allows of a pooled connection (see [`Pool::take`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// The request can be sent again on a fresh connection if this one fails before any
    /// response byte (no body, an idempotent method).
    Replayable,
    /// It cannot.
    Once,
}

impl Pool {
    /// The most recently used live connection to `peer`, if any.
    ///
    /// A connection is checked before it is reused (a non-blocking peek: one system call)
    /// where that can change what happens to the request: when the request cannot be sent
    /// again if the origin closed the connection meanwhile ([`Reuse::Once`]); when the
    /// response before it had no body, after which an origin that sends stray bytes sends
    /// them (they would be read as this request's response); and after
    /// [`CHECK_AFTER_IDLE`], by when an origin's idle timeout may have closed it. Otherwise a
    /// connection the origin just closed fails the request's write or read before any
    /// response byte, and the request goes again on a fresh connection (`proxy::forward`), as
    /// it would after a check that lost the race.
    pub(crate) fn take(&mut self, peer: &Peer, reuse: Reuse) -> Option<io::Stream> {
        let list = self.idle.get_mut(&peer.addr)?;
        let now = Instant::now();
        while let Some(mut c) = list.pop_back() {
            if c.expires <= now {
                continue;
            }
            let idle = now - c.since;
            let check = reuse == Reuse::Once || c.bodiless || idle >= CHECK_AFTER_IDLE;
            if !check || c.stream.idle_and_open() {
                return Some(c.stream);
            }
        }
        None
    }

    /// Puts `s` back after a whole response; `bodiless`: that response had no body.
    pub(crate) fn put(&mut self, peer: &Peer, s: io::Stream, bodiless: bool) {
        if peer.pool_size == 0 {
            return;
        }
        let list = self.idle.entry(peer.addr).or_default();
        if list.len() >= peer.pool_size {
            // The oldest goes: it is the likeliest to be closed by the origin soon.
            list.pop_front();
        }
        let since = Instant::now();
        list.push_back(Idle { stream: s, since, expires: since + peer.pool_idle, bodiless });
    }

    /// Closes the connections whose `pool_idle` ran out: a request checks the connections of
    /// its own origin as it takes one, but an origin no request goes to any more would keep
    /// its connections (and their sockets, closed by the origin or not) until the next one.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, list| {
            list.retain(|c| c.expires > now);
            !list.is_empty()
        });
    }
}

/// How often a worker closes the pooled connections that idled out ([`Pool::sweep`]).
pub(crate) const POOL_SWEEP: Duration = Duration::from_secs(1);
