//! The fixture table through BPF_PROG_TEST_RUN (needs root; fails, never skips, without it).

use outpost_common::maps::PROG_FLOOR;
use outpost_tests::{bpf::Harness, fixtures};

#[test]
fn fixture_table() {
    let mut h = Harness::new("fixtures").expect("loading the XDP program");
    let rows = fixtures::table();
    let mut failed = Vec::new();
    for row in &rows {
        match row.check(&mut h) {
            Ok(()) => println!("ok   {}", row.name),
            Err(e) => {
                println!("FAIL {}\n{e:#}", row.name);
                failed.push(row.name.clone());
            }
        }
    }
    let insns = h.verified_insns(PROG_FLOOR).unwrap();
    println!("{} rows; verifier processed {insns:?} instructions for {PROG_FLOOR}", rows.len());
    assert!(failed.is_empty(), "{} of {} rows failed: {failed:#?}", failed.len(), rows.len());
}

/// The program stays well inside the verifier's budget (1M processed instructions).
#[test]
fn verifier_headroom() {
    let mut h = Harness::new("verifier").expect("loading the XDP program");
    let insns =
        h.verified_insns(PROG_FLOOR).unwrap().expect("kernel reports verified_insns (5.16+)");
    assert!(insns < 100_000, "verifier processed {insns} instructions: too close to the limit");
}
