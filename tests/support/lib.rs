//! Test support for outpost's integration tests and benchmarks.
//!
//! # Layout
//! - [`packet`]: building frames (Ethernet, VLAN, IPv4/IPv6, TCP/UDP) with correct checksums.
//! - [`bpf`]: running the XDP programs through BPF_PROG_TEST_RUN; the fixture type.
//! - [`fixtures`]: the fixture table shared by the BPF test and the benchmark.
//! - [`netns`]: a client and an edge namespace on a veth wire, outpost attached through its CLI,
//!   a real TLS server and real TLS clients.
//! - [`edge`]: client, edge and origin namespaces, `outpost run` proxying between them with or
//!   without the XDP floor, echoing origins, real clients and a scanner.
//! - [`apps`]: the edge applications on [`edge`]'s topology, for the demo: an OpenID provider
//!   and a mail sink in the edge namespace, `[access]` and `[reserve]`, a login and a
//!   reservation walked with curl from the client namespace.
//! - [`fleet`]: several edge nodes in namespaces of their own sharing one PostgreSQL on a
//!   bridged LAN, with an echoing origin and a client.

pub mod apps;
pub mod bpf;
pub mod edge;
pub mod fixtures;
pub mod fleet;
pub mod netns;
pub mod packet;

/// Runs `$name(floor)` as `$name::xdp` and `$name::no_xdp`.
#[macro_export]
macro_rules! both_floors {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn xdp() {
                super::$name(outpost_tests::edge::Floor::Xdp)
            }
            #[test]
            fn no_xdp() {
                super::$name(outpost_tests::edge::Floor::Userspace)
            }
        }
    )*};
}
