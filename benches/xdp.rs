//! `cargo xtask bench xdp`: each packet kind through BPF_PROG_TEST_RUN, next to a baseline
//! program that only counts and passes, in the same run. Reports ns/packet and the ratio to
//! the baseline; asserts nothing. The hello rows run again with the kernel recording every
//! hello (sample 1) into its ring, read by a thread as `outpost` would read it, and report the
//! ratio of recording on to off.
//!
//! Times come from the bench thread's CPU time around each call, which resolves fractions of
//! a nanosecond (the kernel reports whole ones, too coarse against a baseline of a few ns); the
//! ratio of the kernel's own figures is printed beside. The `pass` program, which returns at
//! once, shows what the harness costs per run by itself.
//!
//! Rows are single packets in `observe` mode: every repetition takes the same path (no flow
//! state is created, no packet is rewritten), so the mean is the cost of that path. Each row
//! runs in rounds that interleave the floor, the baseline and (hello rows) the floor recording,
//! so that a machine busy with other work slows them alike; the table shows the medians.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use dataplane::{HelloRecords, Mode, Outcome, Version};
use outpost_common::maps::{PROG_BASELINE, PROG_FLOOR, PROG_PASS};
use outpost_tests::{
    bpf::{action_name, Harness},
    fixtures::{capture, sslv2_hello, CAPTURES},
    packet::{Packet, ACK},
};

/// The row held to its own target (most packets of an established TLS connection are these).
const APP_DATA: &str = "TLS application data to 443";
/// Rounds per row; the medians are reported.
const ROUNDS: usize = 5;

fn main() -> Result<()> {
    let repeat: u32 = std::env::args().nth(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let mut h = Harness::new("bench")?;
    h.set_policy(Version::Tls12, Mode::Observe, &[443])?;
    h.set_recording(false, 1)?;
    // Without a reader (diagnostics: `XDP_BENCH_NO_READER=1`), the ring stays full and the
    // recording rows measure everything but sending.
    let reader = if std::env::var_os("XDP_BENCH_NO_READER").is_some() {
        None
    } else {
        Some(Reader::start(h.pin_dir())?)
    };

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

    // Diagnostics: `XDP_BENCH_ONLY=<text>` runs only the rows whose name contains it.
    if let Some(only) = std::env::var_os("XDP_BENCH_ONLY") {
        let only = only.to_string_lossy().into_owned();
        rows.retain(|(name, _, _)| name.contains(&only));
    }
    println!("BPF_PROG_TEST_RUN, {repeat} runs per row, medians of {ROUNDS} interleaved rounds, observe mode");
    println!("ns from the thread's CPU time per run; kernel: the ratio of the kernel's whole-ns figures\n");
    println!(
        "{:<36} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>10} {:>8}",
        "packet",
        "action",
        "floor ns",
        "base ns",
        "pass ns",
        "ratio",
        "kernel",
        "record ns",
        "rec/off"
    );
    let (mut hello_worst, mut data_worst, mut other_worst, mut record_worst) =
        (0f64, 0f64, 0f64, 0f64);
    for (name, packet, is_hello) in &rows {
        let (mut floor, mut base, mut pass, mut rec) = (vec![], vec![], vec![], vec![]);
        let (mut kfloor, mut kbase) = (vec![], vec![]);
        let mut action = 0;
        for _ in 0..ROUNDS {
            let run = h.run(PROG_FLOOR, packet, repeat)?;
            action = run.action;
            floor.push(run.cpu_ns);
            kfloor.push(run.per_run.as_nanos() as f64);
            let run = h.run(PROG_BASELINE, packet, repeat)?;
            base.push(run.cpu_ns);
            kbase.push(run.per_run.as_nanos().max(1) as f64);
            // The harness's own cost per run: what no program can go below.
            pass.push(h.run(PROG_PASS, packet, repeat)?.cpu_ns);
            if *is_hello {
                h.set_recording(true, 1)?;
                rec.push(h.run(PROG_FLOOR, packet, repeat)?.cpu_ns);
                h.set_recording(false, 1)?;
            }
        }
        let (f, b, p) = (median(&mut floor), median(&mut base), median(&mut pass));
        let ratio = f / b;
        let kratio = median(&mut kfloor) / median(&mut kbase);
        let recorded = if *is_hello {
            let r = median(&mut rec);
            record_worst = record_worst.max(r / f);
            format!("{r:>10.1} {:>7.2}x", r / f)
        } else {
            String::new()
        };
        if *is_hello {
            hello_worst = hello_worst.max(ratio);
        } else if name.as_str() == APP_DATA {
            data_worst = data_worst.max(ratio);
        } else {
            other_worst = other_worst.max(ratio);
        }
        println!(
            "{name:<36} {:>9} {f:>9.1} {b:>8.1} {p:>8.1} {ratio:>6.2}x {kratio:>6.2}x {recorded}",
            action_name(action)
        );
    }
    let read = reader.map_or(0, Reader::stop);
    let stats = h.stats()?;
    println!();
    println!("worst ratio, ClientHello rows:       {hello_worst:.2}x (target <= 10x)");
    println!("ratio, TLS application data:         {data_worst:.2}x (target <= 1.5x)");
    println!("worst ratio, ACK, other port, UDP:   {other_worst:.2}x (target <= 1.2x)");
    println!("worst ratio, hello recording on/off: {record_worst:.2}x (target <= 1.3x)");
    println!(
        "hello records: {} sent, {} dropped (ring full), {read} read by the reader thread",
        stats.outcome(Outcome::RecordSent),
        stats.outcome(Outcome::RecordDropped)
    );
    println!(
        "verifier processed instructions: {PROG_FLOOR} {:?}, {PROG_BASELINE} {:?}",
        h.verified_insns(PROG_FLOOR)?.unwrap_or(0),
        h.verified_insns(PROG_BASELINE)?.unwrap_or(0)
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The ring's one consumer: a thread that waits on it and reads every record, as `outpost`
/// would, so that the recording rows measure records sent rather than a full ring.
struct Reader {
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Reader {
    fn start(pin_dir: &std::path::Path) -> Result<Reader> {
        let mut records = HelloRecords::open(pin_dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), read.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(true) = records.wait(Some(Duration::from_millis(20))) {
                    while records.next().is_some() {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Reader { stop, read, thread })
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.read.load(Ordering::Relaxed)
    }
}
