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

/// The program stays well inside the verifier's budget (1M processed instructions). About
/// 108,000 with hello recording (2026-12-05): 52,000 before it; each step the global function
/// `outpost_record_step` takes per call adds some 10,000 (it takes 4), and sending a hello as
/// its bytes (`outpost_send_bytes`, and the check that it can go so) some 9,000.
#[test]
fn verifier_headroom() {
    let mut h = Harness::new("verifier").expect("loading the XDP program");
    let insns =
        h.verified_insns(PROG_FLOOR).unwrap().expect("kernel reports verified_insns (5.16+)");
    assert!(insns < 150_000, "verifier processed {insns} instructions: too close to the limit");
}

// ---------------------------------------------------------------------------------------------
// Hello records: what the kernel sends through its ring, against the host's parser.

mod records {
    use std::{collections::BTreeMap, net::IpAddr, time::Duration};

    use dataplane::{HelloRecord, Mode, Outcome, Policy, Verdict, Version};
    use outpost_common::{
        hello::{record_hello, HelloParser},
        maps::{HELLO_RECORDS_BYTES, PROG_FLOOR},
        record::{FLAG_FOLLOWED, FLAG_PARTIAL},
        testing::{ClientHello, EXT_ALPN, EXT_SERVER_NAME},
        Progress,
    };
    use outpost_tests::{
        bpf::{action_name, stay_on_one_cpu, Harness, XDP_PASS},
        fixtures::{big_hello, capture, sslv2_hello, sslv3_hello, CAPTURES, MSS},
        packet::{hex, Packet},
    };

    /// The host's record of the whole `flight`, completed as the kernel completes it for the
    /// connection of `packet`: verdict, destination port, the client's network.
    fn expected(flight: &[u8], packet: &Packet, verdict: Verdict) -> HelloRecord {
        let (progress, record) = record_hello(flight);
        let mut r = record.unwrap_or_else(|| panic!("host: {progress:?} for {}", hex(flight)));
        complete(&mut r, packet, verdict);
        r
    }

    fn complete(r: &mut HelloRecord, packet: &Packet, verdict: Verdict) {
        let (client, server) = packet.sockets();
        r.verdict = verdict as u8;
        r.dport = server.port();
        // The /24 or /48, in the kernel's word layout (octets in wire order), never the host.
        let mut net = [0u8; 16];
        match client.ip() {
            IpAddr::V4(a) => {
                net[..3].copy_from_slice(&a.octets()[..3]);
                r.family = 4;
            }
            IpAddr::V6(a) => {
                net[..6].copy_from_slice(&a.octets()[..6]);
                r.family = 6;
            }
        }
        for (w, chunk) in r.src_net.iter_mut().zip(net.chunks(4)) {
            *w = u32::from_ne_bytes(chunk.try_into().unwrap());
        }
    }

    /// Runs one segment through the program and checks its action.
    fn run(h: &mut Harness, what: &str, packet: &Packet, action: u32) {
        let bytes = packet.build();
        let got = h.run(PROG_FLOOR, &bytes, 1).unwrap();
        assert_eq!(
            got.action,
            action,
            "{what}: {} for {}, want {}",
            action_name(got.action),
            hex(&bytes),
            action_name(action)
        );
    }

    /// Exactly one record waiting, equal to `want`.
    fn one_record(h: &mut Harness, what: &str, want: &HelloRecord) {
        let got = h.take_records();
        assert_eq!(got.len(), 1, "{what}: {} records, want 1: {got:#?}", got.len());
        assert_eq!(&got[0], want, "{what}: kernel (left) against host (right)");
    }

    /// The verdict the default policy (TLS 1.2 floor, reject) gives the hello.
    fn verdict_of(flight: &[u8]) -> Verdict {
        match record_hello(flight).0 {
            Progress::Decided(v) if v >= Version::Tls12 => Verdict::Pass,
            Progress::Decided(_) => Verdict::Reject,
            other => panic!("{other:?}"),
        }
    }

    /// A hello as a recent browser sends it, GREASE and all, that fits one segment.
    fn browser_like(key_share: usize) -> ClientHello {
        let mut sni = vec![0, 0x13, 0, 0, 0x10];
        sni.extend_from_slice(b"www.outpost.test");
        ClientHello::tls(0x0303)
            .cipher_suites(&[0x3a3a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030])
            .extension(0x1a1a, &[])
            .extension(EXT_SERVER_NAME, &sni)
            .extension(0x0017, &[])
            .extension(EXT_ALPN, b"\x00\x0c\x02h2\x08http/1.1")
            .extension(0x000d, &[0, 8, 4, 3, 8, 4, 4, 1, 5, 3])
            .extension(0x0033, &vec![0x11; key_share])
            .supported_versions(&[0x7a7a, 0x0304, 0x0303])
            .extension(0x2a2a, &[0])
    }

    fn harness(tag: &str) -> Harness {
        let mut h = Harness::new(tag).expect("loading the XDP program");
        h.set_policy(Version::Tls12, Mode::Reject, &[443]).unwrap();
        h
    }

    /// Every capture and crafted hello, over IPv4 and IPv6, gives one record: the host's,
    /// with the verdict given, the port and the client's network. Those that end in the TLS
    /// record where they are decided come as their bytes; the one decided in its first record
    /// of several, as the record the kernel's recording mode filled.
    #[test]
    fn every_hello_gives_the_host_record() {
        let mut h = harness("rec-host");
        h.set_recording(true, 1).unwrap();
        let mut flights: Vec<(String, Vec<u8>)> =
            CAPTURES.iter().map(|(name, _)| (name.to_string(), capture(name))).collect();
        flights.push(("SSLv3".into(), sslv3_hello()));
        flights.push(("SSLv2-format".into(), sslv2_hello()));
        flights.push(("browser-like".into(), browser_like(100).build()));
        flights.push((
            "browser-like in records of 50".into(),
            browser_like(100).record_size(50).build(),
        ));
        let early = ClientHello::tls(0x0303)
            .supported_versions(&[0x0304, 0x0303])
            .extension(0x0033, &[0x11; 100])
            .record_size(50);
        flights.push(("supported_versions first, in records of 50".into(), early.build()));
        let before = h.stats().unwrap();
        let mut port = 21000;
        for (name, flight) in &flights {
            for v6 in [false, true] {
                port += 1;
                let packet = if v6 {
                    Packet::tcp6(port, 443, flight)
                } else {
                    Packet::tcp4(port, 443, flight)
                };
                let what = format!("{name} (v6={v6})");
                run(&mut h, &what, &packet, XDP_PASS);
                let verdict = verdict_of(flight);
                let from_bytes = h.records().from_bytes();
                one_record(&mut h, &what, &expected(flight, &packet, verdict));
                let as_bytes = h.records().from_bytes() > from_bytes;
                let early = name.starts_with("supported_versions first");
                assert_eq!(as_bytes, !early, "{what}: sent as its bytes");
            }
        }
        let delta = h.stats().unwrap().since(&before);
        assert_eq!(delta.records_sent(), 2 * flights.len() as u64);
        assert_eq!(delta.records_dropped(), 0);
    }

    /// The verdict in the record is the one given: a redirect over the source's budget is a
    /// reject.
    #[test]
    fn records_carry_the_verdict_after_the_budget() {
        let mut h = harness("rec-budget");
        let mut policy = Policy::new(Version::Tls12, Mode::Redirect);
        policy.redirect_per_source = 1;
        h.set_full_policy(policy, &[443], &BTreeMap::new()).unwrap();
        h.reset_global_budget().unwrap();
        h.set_recording(true, 1).unwrap();
        let flight = capture("openssl-tls1_0");
        for (port, verdict) in [(22001, Verdict::Redirect), (22002, Verdict::Reject)] {
            let packet = Packet::tcp4(port, 443, &flight);
            run(&mut h, &format!("{verdict:?}"), &packet, XDP_PASS);
            one_record(&mut h, &format!("{verdict:?}"), &expected(&flight, &packet, verdict));
        }
    }

    /// A hello over two segments gives one record, when it is decided, with FLAG_FOLLOWED and
    /// the fields of the whole hello.
    #[test]
    fn a_followed_hello_gives_one_record() {
        let mut h = harness("rec-followed");
        h.set_recording(true, 1).unwrap();
        let flights = [
            // supported_versions in the second segment (after the padding).
            ("TLS 1.3 hello of 2000 bytes", big_hello(0x0303, &[0x0304], 2000)),
            ("TLS 1.0 hello of 2000 bytes", big_hello(0x0301, &[], 2000)),
            // supported_versions early: conclusive in the first segment, and passing, so the
            // rest is followed for the record.
            ("browser-like hello of 1900 bytes", browser_like(1500).build()),
        ];
        for (i, (name, flight)) in flights.iter().enumerate() {
            assert!(flight.len() > MSS, "{name}: {} bytes", flight.len());
            let port = 23000 + i as u16;
            let first = Packet::tcp4(port, 443, &flight[..MSS]).seq(1000);
            let second = Packet::tcp4(port, 443, &flight[MSS..]).seq(1000 + MSS as u32);
            run(&mut h, name, &first, XDP_PASS);
            assert!(h.take_records().is_empty(), "{name}: a record before the decision");
            run(&mut h, name, &second, XDP_PASS);
            let mut want = expected(flight, &first, verdict_of(flight));
            want.flags |= FLAG_FOLLOWED;
            let from_bytes = h.records().from_bytes();
            one_record(&mut h, name, &want);
            assert_eq!(h.records().from_bytes(), from_bytes, "{name}: the kernel's record");
        }
    }

    /// A hello whose version is conclusive in its first segment and not let through is
    /// decided there, as without recording; its record stops where the segment does.
    #[test]
    fn a_hello_blocked_early_gives_a_partial_record() {
        let mut h = harness("rec-partial");
        h.set_recording(true, 1).unwrap();
        let flight = ClientHello::tls(0x0301).supported_versions(&[0x0302, 0x0301]).pad_to(2000);
        let flight = flight.build();
        let first = Packet::tcp4(24000, 443, &flight[..MSS]).seq(1000);
        let bytes = first.build();
        let got = h.run(PROG_FLOOR, &bytes, 1).unwrap();
        assert_eq!(got.action, XDP_PASS);
        assert_eq!(got.output, first.as_reset_to_server().build(), "rejected at once");
        let mut parser = HelloParser::new();
        let mut want = HelloRecord::new();
        assert_eq!(parser.feed_recording(&flight[..MSS], &mut want), Progress::NeedMore);
        let version = parser.conclusive().expect("conclusive in the first segment");
        want.version = version as u8;
        want.flags |= FLAG_PARTIAL;
        complete(&mut want, &first, Verdict::Reject);
        one_record(&mut h, "TLS 1.1 hello blocked early", &want);
    }

    /// One hello in N is recorded (per CPU: the test stays on one); off records none.
    #[test]
    fn sampling_and_off() {
        stay_on_one_cpu().unwrap();
        let mut h = harness("rec-sample");
        let flight = capture("curl-default");
        let mut port = 25000;
        let mut hellos = |h: &mut Harness, n: usize| {
            for _ in 0..n {
                port += 1;
                run(h, "sampled hello", &Packet::tcp4(port, 443, &flight), XDP_PASS);
            }
            h.take_records().len()
        };
        // As loaded: off.
        assert_eq!(hellos(&mut h, 5), 0, "recording before it was switched on");
        h.set_recording(true, 3).unwrap();
        let got = hellos(&mut h, 12);
        assert_eq!(got, 4, "one in 3 of 12 hellos");
        h.set_recording(true, 1).unwrap();
        assert_eq!(hellos(&mut h, 5), 5, "every hello");
        h.set_recording(false, 1).unwrap();
        assert_eq!(hellos(&mut h, 5), 0, "switched off");
        h.set_recording(true, 0).unwrap();
        assert_eq!(hellos(&mut h, 5), 0, "sample 0");
    }

    /// With nobody reading, the ring fills: later hellos are handled all the same (their
    /// verdicts given and counted), their records dropped and counted; once read, records
    /// flow again.
    #[test]
    fn a_full_ring_drops_records_not_packets() {
        let mut h = harness("rec-full");
        h.set_recording(true, 1).unwrap();
        let flight = capture("openssl-tls1_0");
        let before = h.stats().unwrap();
        // More than the ring holds: this hello goes as its bytes, in the smallest entry (256
        // bytes and the ring's 8-byte header).
        let n = (HELLO_RECORDS_BYTES as usize / (256 + 8) + 200) as u16;
        for i in 0..n {
            let packet = Packet::tcp4(30000 + i, 443, &flight);
            let got = h.run(PROG_FLOOR, &packet.build(), 1).unwrap();
            assert_eq!(got.action, XDP_PASS, "hello {i}");
            assert_eq!(got.output, packet.as_reset_to_server().build(), "hello {i}: rejected");
        }
        let delta = h.stats().unwrap().since(&before);
        assert_eq!(delta.hellos(Version::Tls10, Verdict::Reject), n as u64);
        assert_eq!(delta.outcome(Outcome::DecidedFirst), n as u64);
        let (sent, dropped) = (delta.records_sent(), delta.records_dropped());
        assert_eq!(sent + dropped, n as u64, "sent {sent}, dropped {dropped}");
        assert!(dropped > 0 && sent > 0, "sent {sent}, dropped {dropped}: the ring never filled");
        assert!(h.records().wait(Some(Duration::from_secs(1))).unwrap(), "readable");
        assert_eq!(h.take_records().len() as u64, sent, "every record sent is read");
        let packet = Packet::tcp4(29999, 443, &flight);
        run(&mut h, "after reading", &packet, XDP_PASS);
        one_record(&mut h, "after reading", &expected(&flight, &packet, Verdict::Reject));
    }
}
