//! Test support for outpost's integration tests and benchmarks.
//!
//! # Layout
//! - [`packet`]: building frames (Ethernet, VLAN, IPv4/IPv6, TCP/UDP) with correct checksums.
//! - [`bpf`]: running the XDP programs through BPF_PROG_TEST_RUN; the fixture type.
//! - [`fixtures`]: the fixture table shared by the BPF test and the benchmark.
//! - [`netns`]: a client and an edge namespace on a veth wire, outpost attached through its CLI,
//!   a real TLS server and real TLS clients.

pub mod bpf;
pub mod fixtures;
pub mod netns;
pub mod packet;
