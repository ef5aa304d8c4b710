//! Test support for outpost's integration tests and benchmarks.
//!
//! # Layout
//! - [`packet`]: building frames (Ethernet, VLAN, IPv4/IPv6, TCP/UDP) with correct checksums.
//! - [`bpf`]: running the XDP programs through BPF_PROG_TEST_RUN; the fixture type.
//! - [`fixtures`]: the fixture table shared by the BPF test and the benchmark.

pub mod bpf;
pub mod fixtures;
pub mod packet;
