//! The userspace TLS version floor: the first flight is read and classified before rustls sees
//! it, with the same classifier as the XDP program, and counted under the same version ×
//! verdict keys.
//!
//! With XDP attached, a legacy hello rarely gets here (the kernel dropped or reset it); without
//! it (no privileges, a NIC without XDP, observe mode in the kernel) this is the floor.

use std::time::Instant;

use outpost_common::{HelloParser, Policy, Progress, Verdict, Version};

use crate::{
    io,
    metrics::{Metrics, Unclassified},
};

/// A fatal `protocol_version` alert (RFC 8446 §6.2) in a TLS 1.0 record, which every client
/// version can read: content type alert (0x15), version 0x0301, length 2, level fatal (0x02),
/// description protocol_version (0x46 = 70).
pub const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46];

/// Bytes asked for per read of the first flight: a typical hello fits, a post-quantum one
/// (~1.9 kB) too.
const READ_CHUNK: usize = 4096;

/// What to do with the connection after the first flight.
pub enum Outcome {
    /// Go on to rustls with these bytes (the whole first flight read so far).
    Continue(Vec<u8>),
    /// Below the floor: closed (drop) or answered with an alert (reject); done.
    Refused,
    /// The client closed, or the deadline passed, before anything conclusive.
    Gone,
}

/// Reads the first flight from `stream` until the hello is conclusive, `max_bytes` were read,
/// or `deadline` passes; applies `policy` and counts.
pub async fn check(
    stream: &mut io::Stream,
    policy: Policy,
    max_bytes: usize,
    deadline: Instant,
    metrics: &Metrics,
) -> Outcome {
    let mut parser = HelloParser::new();
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
        match parser.feed(&buf[start..]) {
            Progress::NeedMore if buf.len() < max_bytes => continue,
            Progress::NeedMore | Progress::OutOfSteps => {
                metrics.hello_unclassified(Unclassified::TooLong);
                return Outcome::Continue(buf);
            }
            Progress::NotHello => {
                metrics.hello_unclassified(Unclassified::NotHello);
                return Outcome::Continue(buf);
            }
            Progress::Malformed(_) => {
                // rustls refuses it with an alert of its own; counted here.
                metrics.hello_unclassified(Unclassified::Malformed);
                return Outcome::Continue(buf);
            }
            Progress::Decided(v) => break v,
        }
    };
    let verdict = policy.verdict(decided);
    metrics.hello(decided, verdict);
    match verdict {
        Verdict::Pass => Outcome::Continue(buf),
        Verdict::Drop => {
            tracing::debug!(version = decided.name(), "legacy hello dropped");
            Outcome::Refused
        }
        Verdict::Reject => {
            tracing::debug!(version = decided.name(), "legacy hello rejected");
            let _ =
                io::timeout_at(deadline, stream.write_all(PROTOCOL_VERSION_ALERT.to_vec())).await;
            stream.shutdown_write();
            Outcome::Refused
        }
    }
}

/// The version a verdict was about, for logs.
pub fn describe(v: Version) -> &'static str {
    v.name()
}
