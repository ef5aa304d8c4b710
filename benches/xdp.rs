//! `cargo xtask bench xdp`: each packet kind through BPF_PROG_TEST_RUN, next to a baseline
//! program that only counts and passes, in the same run. Reports ns/packet and the ratio to
//! the baseline; asserts nothing.
//!
//! Rows are single packets in `observe` mode: every repetition takes the same path (no flow
//! state is created, no packet is rewritten), so the mean is the cost of that path.

use anyhow::Result;
use dataplane::{Mode, Version};
use outpost_common::maps::{PROG_BASELINE, PROG_FLOOR};
use outpost_tests::{
    bpf::{action_name, Harness},
    fixtures::{capture, sslv2_hello, CAPTURES},
    packet::{Packet, ACK},
};

/// The row held to its own target (most packets of an established TLS connection are these).
const APP_DATA: &str = "TLS application data to 443";

fn main() -> Result<()> {
    let repeat: u32 = std::env::args().nth(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let mut h = Harness::new("bench")?;
    h.set_policy(Version::Tls12, Mode::Observe, &[443])?;

    let mut rows: Vec<(String, Vec<u8>, bool)> = vec![
        ("UDP datagram (not TCP)".into(), Packet::tcp4(1, 53, &[0; 64]).udp().build(), false),
        (
            "TCP to an unprotected port".into(),
            Packet::tcp4(40000, 80, b"GET / HTTP/1.1\r\n\r\n").build(),
            false,
        ),
        ("pure ACK to 443".into(), Packet::tcp4(40001, 443, &[]).flags(ACK).build(), false),
        (
            APP_DATA.into(),
            Packet::tcp4(40002, 443, &[0x17, 0x03, 0x03, 0x00, 0x20, 0xab, 0xcd]).build(),
            false,
        ),
    ];
    for (i, (name, _)) in CAPTURES.iter().enumerate() {
        rows.push((
            format!("hello {name}"),
            Packet::tcp4(41000 + i as u16, 443, &capture(name)).build(),
            true,
        ));
    }
    rows.push((
        "hello openssl-tls1_3 over IPv6".into(),
        Packet::tcp6(42000, 443, &capture("openssl-tls1_3")).build(),
        true,
    ));
    rows.push((
        "hello SSLv2-format".into(),
        Packet::tcp4(42001, 443, &sslv2_hello()).build(),
        true,
    ));

    println!("BPF_PROG_TEST_RUN, {repeat} runs per row, observe mode\n");
    println!(
        "{:<36} {:>9} {:>12} {:>12} {:>7}",
        "packet", "action", "floor ns", "baseline ns", "ratio"
    );
    let (mut hello_worst, mut data_worst, mut other_worst) = (0f64, 0f64, 0f64);
    for (name, packet, is_hello) in &rows {
        let floor = h.run(PROG_FLOOR, packet, repeat)?;
        let base = h.run(PROG_BASELINE, packet, repeat)?;
        let (f, b) = (floor.per_run.as_nanos() as f64, base.per_run.as_nanos().max(1) as f64);
        let ratio = f / b;
        if *is_hello {
            hello_worst = hello_worst.max(ratio);
        } else if name.as_str() == APP_DATA {
            data_worst = data_worst.max(ratio);
        } else {
            other_worst = other_worst.max(ratio);
        }
        println!("{name:<36} {:>9} {f:>12.1} {b:>12.1} {ratio:>6.2}x", action_name(floor.action));
    }
    println!();
    println!("worst ratio, ClientHello rows:       {hello_worst:.2}x (target <= 10x)");
    println!("ratio, TLS application data:         {data_worst:.2}x (target <= 1.5x)");
    println!("worst ratio, ACK, other port, UDP:   {other_worst:.2}x (target <= 1.2x)");
    println!(
        "verifier processed instructions: {PROG_FLOOR} {:?}, {PROG_BASELINE} {:?}",
        h.verified_insns(PROG_FLOOR)?.unwrap_or(0),
        h.verified_insns(PROG_BASELINE)?.unwrap_or(0)
    );
    Ok(())
}
