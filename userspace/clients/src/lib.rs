//! Who connects to outpost: the JA4 fingerprint of each decided ClientHello, counted in a
//! bounded table by fingerprint, server name, ALPN, offered version and verdict; what a higher
//! floor would refuse; the table for `/metrics` and the CLI.
//!
//! # Layout
//! - [`ja4`](mod@ja4): JA4 and its raw form from a [`HelloRecord`] (FoxIO's spec; edge cases in its
//!   docs). A record whose lists were cut gives an error, never a wrong fingerprint.
//! - [`names`]: JA4 → name of clients captured on this machine image (`testdata/`).
//! - [`table`]: [`ClientTable`], top-K rows by count plus an `other` row, queries, JSON.
//! - [`simulate`](mod@simulate): the share of hellos, clients and server names a proposed floor would refuse.
//! - [`metrics`]: Prometheus text for the top fingerprints and the table's own counters.
//! - [`text`]: escaping of attacker-controlled bytes, the CLI table.
//! - [`flight`]: the userspace path, a first flight to a record (or an error to count).
//!
//! Records come from the kernel (a ring buffer of [`HelloRecord`]s) or from the userspace
//! floor, which reads the first flight itself and fills the same record.

pub mod flight;
pub mod ja4;
pub mod metrics;
pub mod names;
pub mod simulate;
pub mod table;
pub mod text;

pub use ja4::{ja4, ja4_r, Ja4, Ja4Error};
pub use metrics::{render_metrics, render_metrics_top};
pub use simulate::{simulate, Simulation};
pub use table::{ClientRow, ClientTable, Fingerprint, Hello, Query, Report};
pub use text::render_table;

#[cfg(doc)]
use outpost_common::record::HelloRecord;
