//! Shared between the outpost XDP program and userspace.
//!
//! # Layout
//! - [`budget`]: the redirect budget (token buckets per source network and in all).
//! - [`hello`]: the ClientHello classifier, a resumable parser over a bounded byte cursor. The
//!   kernel feeds it TCP segments one at a time; userspace feeds it whatever it has read. In
//!   its recording mode it also fills a [`record::HelloRecord`].
//! - [`quick`]: a straight read of the common hello (decided in its first record and chunk),
//!   which gives the classifier's answer or leaves the hello to it.
//! - [`version`]: protocol versions, policy modes and verdicts, and how a policy maps one to
//!   the other.
//! - [`maps`]: `#[repr(C)]` keys and values of the BPF maps, their names, and the parse
//!   outcome counters.
//! - [`record`]: what a decided hello looked like (the fields of its JA4 fingerprint, its
//!   server name, its source network), sent by the kernel through a ring buffer.
//! - `testing` (feature `std`): a ClientHello builder for tests.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod budget;
pub mod hello;
pub mod maps;
pub mod quick;
pub mod record;
#[cfg(feature = "std")]
pub mod testing;
pub mod version;

pub use hello::{
    may_start_hello, record_hello, starts_app_data, HelloParser, Input, Malformed, Progress,
};
pub use record::HelloRecord;
pub use version::{Mode, Policy, Verdict, Version};
