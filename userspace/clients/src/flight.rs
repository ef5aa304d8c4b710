//! The userspace path: a first flight read by the proxy (no XDP program, or a hello the kernel
//! left to userspace) to a [`HelloRecord`], with the same classifier the kernel runs.
//!
//! ```
//! # use outpost_clients::{flight, ClientTable};
//! # let (bytes, peer, now_ms) = (&[0x16u8, 3, 1][..], "192.0.2.7".parse().unwrap(), 0);
//! let mut table = ClientTable::default();
//! match flight::record_first_flight(bytes) {
//!     Ok(mut rec) => {
//!         flight::set_source(&mut rec, peer);
//!         rec.verdict = outpost_common::Verdict::Pass as u8; // the floor's answer
//!         table.observe(&rec, now_ms);
//!     }
//!     Err(_) => table.parse_error(),
//! }
//! assert_eq!(table.parse_errors(), 1); // three bytes are not a hello
//! ```

use core::fmt;
use std::net::IpAddr;

use outpost_common::hello::{record_hello, Malformed, Progress};
use outpost_common::record::HelloRecord;

/// Why a first flight gave no record. Network input: count it, never panic on it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlightError {
    /// The bytes end before the hello is conclusive (a cut or partial first flight).
    Incomplete,
    /// Not a TLS ClientHello (another protocol, another TLS message).
    NotHello,
    /// Started like a ClientHello and broke a length or framing rule.
    Malformed(Malformed),
    /// The classifier's step budget ran out (a hello of pathological shape).
    OutOfSteps,
}

impl fmt::Display for FlightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlightError::Incomplete => f.write_str("the first flight ends inside the hello"),
            FlightError::NotHello => f.write_str("not a TLS ClientHello"),
            FlightError::Malformed(m) => write!(f, "malformed ClientHello ({m:?})"),
            FlightError::OutOfSteps => f.write_str("the classifier's step budget ran out"),
        }
    }
}

impl std::error::Error for FlightError {}

/// The record of the hello that `first_flight` starts with: lists, server name, ALPN and the
/// offered version filled; `verdict`, `dport` and the source network are the caller's.
pub fn record_first_flight(first_flight: &[u8]) -> Result<HelloRecord, FlightError> {
    match record_hello(first_flight) {
        (Progress::Decided(_), Some(rec)) => Ok(rec),
        (Progress::Decided(_) | Progress::NeedMore, _) => Err(FlightError::Incomplete),
        (Progress::NotHello, _) => Err(FlightError::NotHello),
        (Progress::Malformed(m), _) => Err(FlightError::Malformed(m)),
        (Progress::OutOfSteps, _) => Err(FlightError::OutOfSteps),
    }
}

/// Sets the record's source network from the peer's address: its /24 (IPv4, also an
/// IPv4-mapped IPv6 address) or /48 (IPv6), stored as the kernel stores it.
pub fn set_source(rec: &mut HelloRecord, peer: IpAddr) {
    // The redirect budget's network: the kernel sets records' the same way.
    let (words, family) = outpost_common::maps::words(peer);
    rec.src_net = outpost_common::budget::SourceKey::of(&words, family).addr;
    rec.family = family;
}
