//! Marker library: lets the userspace crate name this crate as a build dependency so cargo
//! rebuilds the eBPF object when it changes. The programs are in `main.rs`.
#![no_std]
