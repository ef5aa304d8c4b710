//! The userspace TLS version floor: the first flight is read and classified before rustls sees
//! it, with the same classifier as the XDP program, and counted under the same version ×
//! verdict keys.
//!
//! With XDP attached, a legacy hello rarely gets here (the kernel dropped or reset it); without
//! it (no privileges, a NIC without XDP, observe mode in the kernel) this is the floor.
//!
//! In redirect mode a legacy hello goes on to the legacy responder ([`crate::legacy`]) within
//! the redirect budget. When the XDP program already passed it on within the kernel's budget
//! (it records the connection), that decision stands and no token is taken here; any other
//! legacy hello (no XDP, or one the kernel left to userspace) takes from this floor's own
//! [`Budget`], the same token buckets with the same rates.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use outpost_common::{
    budget::{Bucket, SourceKey},
    maps::words,
    record::HelloRecord,
    HelloParser, Mode, Policy, Progress, Verdict, Version,
};

use crate::{
    io,
    metrics::{Metrics, Unclassified},
    shared::Shared,
};

/// A fatal `protocol_version` alert (RFC 8446 §6.2) in a TLS 1.0 record, which every client
/// version can read: content type alert (0x15), version 0x0301, length 2, level fatal (0x02),
/// description protocol_version (0x46 = 70).
pub const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46];

/// Bytes asked for per read of the first flight: a typical hello fits, a post-quantum one
/// (~1.9 kB) too.
const READ_CHUNK: usize = 4096;

/// Where the floor describes the hellos it reads: the binary's table of clients (`[clients]`),
/// which the proxy knows only through this trait. Not given when the XDP program in front
/// records the hellos itself (they would be counted twice).
pub trait HelloSink: Send + Sync {
    /// Whether this connection's hello is to be recorded (the sampling rate); asked once per
    /// connection, before its first byte is read.
    fn sample(&self) -> bool;
    /// The record of a decided hello, with its verdict.
    fn record(&self, record: &HelloRecord);
    /// A sampled first flight that was not a readable hello (counted, never shown).
    fn unreadable(&self);
}

/// The floor of one configuration generation.
#[derive(Clone, Debug)]
pub struct Rules {
    pub policy: Policy,
    /// Listen ports whose mode is not the policy's.
    pub port_modes: BTreeMap<u16, Mode>,
    pub max_hello_bytes: usize,
}

impl Rules {
    /// The mode for connections to `port`.
    pub fn mode_for(&self, port: u16) -> u8 {
        self.port_modes.get(&port).map_or(self.policy.mode, |m| *m as u8)
    }
}

/// A floor policy set from outside the config file (the fleet's, see `outpost policy set
/// --fleet`): while set, it replaces `[floor]`'s policy and port modes, across reloads;
/// `max_hello_bytes` stays the config's. Read once per connection, before its first flight.
#[derive(Default)]
pub struct Override(RwLock<Option<Arc<Overriding>>>);

/// What an [`Override`] puts in place of the config's floor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overriding {
    pub policy: Policy,
    pub port_modes: BTreeMap<u16, Mode>,
}

impl Override {
    /// Sets (or, with `None`, clears) the override; connections accepted from now on use it.
    pub fn set(&self, floor: Option<Overriding>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = floor.map(Arc::new);
    }

    pub fn get(&self) -> Option<Arc<Overriding>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rules for a new connection: `config`'s, or the override's policy and port modes.
    pub fn rules<'a>(&self, config: &'a Rules) -> Cow<'a, Rules> {
        match self.get() {
            None => Cow::Borrowed(config),
            Some(o) => Cow::Owned(Rules {
                policy: o.policy,
                port_modes: o.port_modes.clone(),
                max_hello_bytes: config.max_hello_bytes,
            }),
        }
    }
}

/// What to do with the connection after the first flight.
pub enum Outcome {
    /// Go on to rustls with these bytes (the whole first flight read so far).
    Continue(Vec<u8>),
    /// Go on to the legacy responder with these bytes: a hello offering this version, below
    /// the floor, within the redirect budget.
    Legacy(Vec<u8>, Version),
    /// Below the floor: closed (drop) or answered with an alert (reject); done.
    Refused,
    /// The client closed, or the deadline passed, before anything conclusive.
    Gone,
}

/// Reads the first flight from `stream` (accepted from `peer` on the listener at `listener`)
/// until the hello is conclusive, `max_hello_bytes` were read, or `deadline` passes; applies
/// the rules and counts.
pub async fn check(
    stream: &mut io::Stream,
    rules: &Rules,
    peer: SocketAddr,
    listener: SocketAddr,
    deadline: Instant,
    shared: &Shared,
) -> Outcome {
    let metrics: &Metrics = &shared.metrics;
    let max_bytes = rules.max_hello_bytes;
    let mut parser = HelloParser::new();
    // A sampled hello is read to its end (the recording mode decides only there), so that its
    // record is whole.
    let sink = shared.hellos.as_deref().filter(|s| s.sample());
    let mut record = sink.map(|_| Box::new(HelloRecord::new()));
    let unreadable = || {
        if let Some(s) = sink {
            s.unreadable();
        }
    };
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let decided = loop {
        let start = buf.len();
        let want = READ_CHUNK.min(max_bytes.saturating_sub(start)).max(1);
        let (res, b) = match io::timeout_at(deadline, stream.read(buf, want)).await {
            Ok(r) => r,
            Err(io::Elapsed) => {
                metrics.hello_incomplete();
                return Outcome::Gone;
            }
        };
        buf = b;
        match res {
            Ok(n) if n > 0 => {}
            _ => {
                metrics.hello_incomplete();
                return Outcome::Gone;
            }
        }
        let progress = match record.as_deref_mut() {
            Some(rec) => parser.feed_recording(&buf[start..], rec),
            None => parser.feed(&buf[start..]),
        };
        match progress {
            Progress::NeedMore if buf.len() < max_bytes => continue,
            Progress::NeedMore | Progress::OutOfSteps => {
                metrics.hello_unclassified(Unclassified::TooLong);
                unreadable();
                return Outcome::Continue(buf);
            }
            Progress::NotHello => {
                metrics.hello_unclassified(Unclassified::NotHello);
                unreadable();
                return Outcome::Continue(buf);
            }
            Progress::Malformed(_) => {
                // rustls refuses it with an alert of its own; counted here.
                metrics.hello_unclassified(Unclassified::Malformed);
                unreadable();
                return Outcome::Continue(buf);
            }
            Progress::Decided(v) => break v,
        }
    };
    let policy = &rules.policy;
    let mut verdict = policy.verdict_in(rules.mode_for(listener.port()), decided);
    let completable = decided >= Version::Tls10 && (decided as u8) < policy.min_version;
    if completable && kernel_redirected(stream, peer, shared) {
        // The kernel's budget let it through for the responder (its policy may say redirect
        // before this process's config does): served, no token taken twice.
        verdict = Verdict::Redirect;
    } else if verdict == Verdict::Redirect && !shared.budget.take(peer.ip(), policy) {
        verdict = Verdict::Reject;
    }
    metrics.hello(decided, verdict);
    if let (Some(sink), Some(mut rec)) = (sink, record) {
        rec.verdict = verdict as u8;
        rec.dport = listener.port();
        let (src, family) = words(peer.ip());
        (rec.src_net, rec.family) = (SourceKey::of(&src, family).addr, family);
        sink.record(&rec);
    }
    match verdict {
        Verdict::Pass => Outcome::Continue(buf),
        Verdict::Redirect => Outcome::Legacy(buf, decided),
        Verdict::Drop => {
            tracing::debug!(version = decided.name(), "legacy hello dropped");
            Outcome::Refused
        }
        Verdict::Reject => {
            tracing::debug!(version = decided.name(), %peer, "legacy hello rejected");
            let _ =
                io::timeout_at(deadline, stream.write_all(PROTOCOL_VERSION_ALERT.to_vec())).await;
            stream.shutdown_write();
            Outcome::Refused
        }
    }
}

/// Whether the XDP program in front recorded this connection's hello as passed on to the
/// legacy responder (only asked when there is one: a bpf(2) call per legacy hello).
fn kernel_redirected(stream: &io::Stream, peer: SocketAddr, shared: &Shared) -> bool {
    let Some(kernel) = &shared.kernel else { return false };
    // The accepted socket's own address: the listener's may be a wildcard.
    match stream.local_addr() {
        Ok(local) => kernel.take_redirect(peer, local),
        Err(_) => false,
    }
}

/// The userspace floor's redirect budget: the same token buckets as the kernel's (in all, and
/// per source network), shared by every worker.
pub struct Budget {
    state: Mutex<BudgetState>,
    /// The budget's clock starts here.
    base: Instant,
}

struct BudgetState {
    global: Bucket,
    sources: HashMap<SourceKey, Bucket>,
}

/// Source networks kept at most; past it, those whose period is over are forgotten (they would
/// get a full bucket anyway), and while it is still full a new network gets no redirect.
const MAX_SOURCES: usize = 65536;

impl Default for Budget {
    fn default() -> Self {
        Budget {
            state: Mutex::new(BudgetState { global: Bucket::new(0), sources: HashMap::new() }),
            base: Instant::now(),
        }
    }
}

impl Budget {
    /// Takes a token for a hello from `ip`: from its source network's bucket, then the global
    /// one. Whether both had one left.
    pub fn take(&self, ip: IpAddr, policy: &Policy) -> bool {
        let now = self.base.elapsed().as_nanos() as u64;
        let (src, family) = words(ip);
        let key = SourceKey::of(&src, family);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.sources.len() >= MAX_SOURCES && !s.sources.contains_key(&key) {
            s.sources.retain(|_, b| !Bucket::expired(b.refilled_ns, now));
            if s.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let bucket = s.sources.entry(key).or_insert_with(|| Bucket::new(now));
        bucket.take(now, policy.redirect_per_source) && s.global.take(now, policy.redirect_rate)
    }
}

/// The version a verdict was about, for logs.
pub fn describe(v: Version) -> &'static str {
    v.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_source_network_and_in_all() {
        let mut policy = Policy::new(Version::Tls12, Mode::Redirect);
        policy.redirect_per_source = 3;
        policy.redirect_rate = 5;
        let b = Budget::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let took = |addr: &str, n: usize| (0..n).filter(|_| b.take(ip(addr), &policy)).count();
        assert_eq!(took("198.18.10.1", 10), 3, "one source: its own budget");
        assert_eq!(took("198.18.10.77", 10), 0, "same /24: same budget");
        assert_eq!(took("::ffff:198.18.10.9", 10), 0, "IPv4-mapped: same /24");
        assert_eq!(took("2001:2:0:10::1", 10), 2, "another network: what is left of the global");
        assert_eq!(took("2001:2:1:10::1", 10), 0, "global spent");
        policy.redirect_rate = 0;
        let b = Budget::default();
        assert!(!b.take(ip("198.18.20.1"), &policy), "rate 0: nothing redirected");
    }
}
