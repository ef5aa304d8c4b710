//! The classifier against hellos built to order (`outpost_common::testing`): every version
//! form, every rule it enforces, record and segment boundaries anywhere, and random input.
//! Needs the `std` feature: `cargo test -p outpost-common --features std`.
//!
//! Most cases go through [`check`], which feeds the input whole, in every split into two, and
//! byte at a time, and wants the same answer each way: the kernel sees a hello cut wherever
//! the network cut it.

use outpost_common::hello::{classify, HelloParser, Malformed, Progress};
use outpost_common::testing::{self, ClientHello, EXT_ALPN, EXT_SERVER_NAME};
use outpost_common::Version;

/// Every GREASE value (RFC 8701): 0x0a0a, 0x1a1a, .., 0xfafa.
const GREASE: [u16; 16] = {
    let mut g = [0u16; 16];
    let mut i = 0;
    while i < 16 {
        g[i] = 0x0a0a | ((i as u16) << 12) | ((i as u16) << 4);
        i += 1;
    }
    g
};

/// A `server_name` extension body naming "outpost.test".
const SNI: &[u8] = b"\x00\x0f\x00\x00\x0coutpost.test";
/// An ALPN extension body offering h2 and http/1.1.
const ALPN: &[u8] = b"\x00\x0c\x02h2\x08http/1.1";

/// The segment payload of a 1500-byte MTU with TCP timestamps.
const MSS: usize = 1448;

// ---------------------------------------------------------------------------------------------
// Versions

#[test]
fn sslv3_hello_is_sslv3() {
    check("SSLv3", &ClientHello::sslv3().build(), decided(Version::Sslv3));
}

#[test]
fn sslv2_format_hellos_are_sslv2() {
    // SSL 2.0 itself, and SSLv3/TLS clients speaking the SSLv2-compatible format.
    for version in [0x0002, 0x0300, 0x0301, 0x0303] {
        let what = format!("SSLv2-format hello, version {version:#06x}");
        check(&what, &testing::sslv2(version), decided(Version::Sslv2));
    }
}

#[test]
fn grease_only_supported_versions_is_unknown() {
    for g in GREASE {
        let flight = ClientHello::tls(0x0303).supported_versions(&[g]).build();
        check(&format!("supported_versions [{g:#06x}]"), &flight, decided(Version::Unknown));
    }
    let flight = ClientHello::tls(0x0303).supported_versions(&GREASE).build();
    check("supported_versions: every GREASE value", &flight, decided(Version::Unknown));
}

#[test]
fn grease_beside_tls13_is_tls13() {
    for list in [[0x3a3a, 0x0304, 0x0303], [0x0304, 0x0303, 0xfafa], [0x0303, 0x0a0a, 0x0304]] {
        let flight = ClientHello::tls(0x0303).supported_versions(&list).build();
        check(&format!("supported_versions {list:04x?}"), &flight, decided(Version::Tls13));
    }
}

#[test]
fn unknown_versions_only_is_unknown() {
    // A future version and a TLS 1.3 draft: not known, and not legacy either.
    for list in [&[0x0305, 0x7f1c][..], &[0x0305], &[0x7f1c], &[0x7f1c, 0x2a2a, 0x0305]] {
        let flight = ClientHello::tls(0x0303).supported_versions(list).build();
        check(&format!("supported_versions {list:04x?}"), &flight, decided(Version::Unknown));
    }
    let flight = ClientHello::tls(0x0305).build();
    check("legacy_version 0x0305", &flight, decided(Version::Unknown));
}

#[test]
fn supported_versions_wins_over_legacy_version() {
    let cases: [(u16, &[u16], Version); 5] = [
        (0x0303, &[0x0302], Version::Tls11),
        (0x0303, &[0x0300], Version::Sslv3),
        (0x0301, &[0x0304], Version::Tls13),
        // The highest known value wins, wherever it is in the list.
        (0x0303, &[0x0301, 0x0304, 0x0302], Version::Tls13),
        (0x0303, &[0x0302, 0x0301], Version::Tls11),
    ];
    for (legacy, list, want) in cases {
        let flight = ClientHello::tls(legacy).supported_versions(list).build();
        let what = format!("legacy {legacy:#06x}, supported_versions {list:04x?}");
        check(&what, &flight, decided(want));
    }
}

#[test]
fn legacy_version_decides_without_supported_versions() {
    let cases = [(0x0301, Version::Tls10), (0x0302, Version::Tls11), (0x0303, Version::Tls12)];
    for (legacy, want) in cases {
        let hellos = [
            ("empty extensions block", ClientHello::tls(legacy)),
            ("no extensions block", ClientHello::tls(legacy).no_extensions()),
            (
                "SNI, ALPN, empty extension last",
                ClientHello::tls(legacy)
                    .extension(EXT_SERVER_NAME, SNI)
                    .extension(EXT_ALPN, ALPN)
                    .extension(0x0017, &[]),
            ),
            // The record version is never the answer.
            ("record version 0x0303", ClientHello::tls(legacy).record_version(0x0303)),
            ("record version 0x0300", ClientHello::tls(legacy).record_version(0x0300)),
        ];
        for (what, hello) in hellos {
            check(&format!("legacy {legacy:#06x}, {what}"), &hello.build(), decided(want));
        }
    }
}

#[test]
fn smallest_possible_hello_is_decided() {
    // 41 bytes of body: no session id, one suite, one compression method, no extensions.
    let hello = ClientHello::tls(0x0301).session_id(&[]).cipher_suites(&[0x002f]).no_extensions();
    assert_eq!(hello.handshake().len(), 4 + 41, "{}", hex(&hello.handshake()));
    check("41-byte hello", &hello.build(), decided(Version::Tls10));
}

#[test]
fn decided_as_soon_as_supported_versions_is_read() {
    // Whatever follows `supported_versions` is never needed, so never waited for.
    let hello = ClientHello::tls(0x0303)
        .extension(EXT_SERVER_NAME, SNI)
        .supported_versions(&[0x0304, 0x0303])
        .extension(EXT_ALPN, ALPN);
    let flight = hello.build();
    let end = offset_of_supported_versions(&hello) + 4 + 5 + 5;
    check_prefix("up to the end of supported_versions", &flight[..end], decided(Version::Tls13));
    check_prefix("one byte short of it", &flight[..end - 1], Progress::NeedMore);
}

// ---------------------------------------------------------------------------------------------
// Records and segments

/// A hello with extensions on both sides of `supported_versions`, and where that is in the
/// handshake message.
fn hello_around_supported_versions() -> (ClientHello, usize) {
    let hello = ClientHello::tls(0x0303)
        .extension(EXT_SERVER_NAME, SNI)
        .supported_versions(&[0x1a1a, 0x0304, 0x0303])
        .extension(EXT_ALPN, ALPN);
    let at = offset_of_supported_versions(&hello);
    (hello, at)
}

#[test]
fn hello_in_two_and_three_records() {
    let (hello, sv) = hello_around_supported_versions();
    let cases = [
        ("2 records, boundary inside the hello header", vec![2]),
        ("2 records, boundary inside the random", vec![20]),
        ("2 records, boundary inside the supported_versions header", vec![sv + 2]),
        ("2 records, boundary inside the supported_versions list", vec![sv + 4 + 2]),
        ("2 records, boundary right after supported_versions", vec![sv + 4 + 7]),
        ("3 records, boundaries inside the header and the list", vec![sv + 1, 5]),
        ("3 records, boundaries inside SNI and the list", vec![sv - 3, 9]),
    ];
    for (what, sizes) in cases {
        let flight = hello.clone().records(&sizes).build();
        check(&format!("{what} {sizes:?}"), &flight, decided(Version::Tls13));
    }
}

#[test]
fn hello_in_many_tiny_records() {
    let (hello, _) = hello_around_supported_versions();
    for size in [1, 2, 3, 4, 5, 7] {
        let flight = hello.clone().record_size(size).build();
        check(&format!("records of {size} bytes"), &flight, decided(Version::Tls13));
        let flight = ClientHello::tls(0x0302).extension(EXT_ALPN, ALPN).record_size(size).build();
        check(&format!("TLS 1.1, records of {size} bytes"), &flight, decided(Version::Tls11));
    }
}

#[test]
fn every_record_boundary_every_pair_of_boundaries() {
    let (hello, _) = hello_around_supported_versions();
    let n = hello.handshake().len();
    for a in 1..n {
        let flight = hello.clone().records(&[a]).build();
        check(&format!("2 records [{a}, ..]"), &flight, decided(Version::Tls13));
        for b in 1..n - a {
            let flight = hello.clone().records(&[a, b]).build();
            let what = format!("3 records [{a}, {b}, ..]");
            check_whole_and_bytewise(&what, &flight, decided(Version::Tls13));
        }
    }
}

#[test]
fn two_segment_hello() {
    let grease_tls13 = [0x8a8a, 0x0304, 0x0303];
    let hello = || ClientHello::tls(0x0303).extension(EXT_SERVER_NAME, SNI);
    // (what, hello, answer, whether the first segment already holds the answer)
    let cases = [
        (
            "padding, then supported_versions",
            hello().pad_to(2000).supported_versions(&grease_tls13),
            Version::Tls13,
            false,
        ),
        (
            "big ALPN, then supported_versions",
            hello().extension(EXT_ALPN, &big_alpn(1700)).supported_versions(&grease_tls13),
            Version::Tls13,
            false,
        ),
        ("padding, no supported_versions", hello().pad_to(2000), Version::Tls12, false),
        (
            "supported_versions, then padding",
            hello().supported_versions(&grease_tls13).pad_to(2000),
            Version::Tls13,
            true,
        ),
    ];
    for (what, hello, want, in_first) in cases {
        for sizes in [&[][..], &[1000], &[MSS - 5, 16]] {
            let flight = hello.clone().records(sizes).build();
            let what = format!("{what}, records {sizes:?} + rest");
            assert!(flight.len() > MSS, "{what}: only {} bytes: {}", flight.len(), hex(&flight));
            let mut p = HelloParser::new();
            let first = p.feed(&flight[..MSS]);
            let want_first = if in_first { decided(want) } else { Progress::NeedMore };
            assert_eq!(first, want_first, "{what}: first {MSS} bytes of {}", hex(&flight));
            if !in_first {
                let second = p.feed(&flight[MSS..]);
                assert_eq!(second, decided(want), "{what}: rest after {MSS} of {}", hex(&flight));
            }
            check(&what, &flight, decided(want));
        }
    }
    let flight = ClientHello::tls(0x0303).pad_to(2000).supported_versions(&grease_tls13).build();
    assert_eq!(flight.len(), 2000, "pad_to(2000): {}", hex(&flight));
    let flight = ClientHello::tls(0x0303).pad_to(2000).records(&[700, 700]).build();
    assert_eq!(flight.len(), 2000, "pad_to(2000) in 3 records: {}", hex(&flight));
    assert_eq!(flight[2000 - 1], 0, "padding is the last extension: {}", hex(&flight));
}

#[test]
fn truncated_captures_wait_for_more() {
    for (name, bytes, want) in captures() {
        for cut in 0..bytes.len() {
            let got = classify(&bytes[..cut]);
            assert!(
                got == Progress::NeedMore || got == decided(want),
                "{name}: first {cut} bytes gave {got:?} (whole: {want:?}): {}",
                hex(&bytes[..cut]),
            );
        }
    }
}

#[test]
fn truncated_crafted_hellos_wait_for_more() {
    let (hello, _) = hello_around_supported_versions();
    let hellos = [
        ("supported_versions, records of 3", hello.record_size(3), Version::Tls13),
        (
            "TLS 1.0, 2 records",
            ClientHello::tls(0x0301).extension(EXT_ALPN, ALPN).records(&[60]),
            Version::Tls10,
        ),
        ("SSLv3", ClientHello::sslv3(), Version::Sslv3),
    ];
    for (what, hello, want) in hellos {
        let flight = hello.build();
        for cut in 0..flight.len() {
            let got = classify(&flight[..cut]);
            assert!(
                got == Progress::NeedMore || got == decided(want),
                "{what}: first {cut} bytes gave {got:?} (whole: {want:?}): {}",
                hex(&flight[..cut]),
            );
        }
        // A hello without supported_versions is only decided by its last byte.
        if want != Version::Tls13 {
            check_prefix(what, &flight[..flight.len() - 1], Progress::NeedMore);
        }
    }
    // A hello whose length promises a byte that never comes.
    let hello = ClientHello::tls(0x0301).no_extensions();
    let len = hello.handshake().len() as u32 - 4;
    let flight = hello.declare_handshake_len(len + 1).build();
    check("handshake length one past the end", &flight, Progress::NeedMore);
}

// ---------------------------------------------------------------------------------------------
// Rules broken

#[test]
fn malformed_hellos_name_the_rule() {
    let tls = || ClientHello::tls(0x0303);
    // A whole flight of one record of 2^14 bytes.
    let max_record_flight = 16384 + 5;
    let mut second_record_alert = tls().extension(EXT_ALPN, ALPN).records(&[50]).build();
    second_record_alert[5 + 50] = 0x15;
    let mut second_record_sslv2 = tls().extension(EXT_ALPN, ALPN).records(&[50]).build();
    second_record_sslv2[5 + 50 + 1] = 0x02;
    let cases: Vec<(&str, Vec<u8>, Malformed)> = vec![
        ("first record empty", tls().records(&[0]).build(), Malformed::RecordLength),
        ("second record empty", tls().records(&[50, 0]).build(), Malformed::RecordLength),
        (
            "record of 2^14 + 1 bytes",
            tls().pad_to(max_record_flight + 1).build(),
            Malformed::RecordLength,
        ),
        ("second record an alert", second_record_alert, Malformed::RecordType),
        ("second record version 0x0203", second_record_sslv2, Malformed::RecordType),
        ("handshake length 40", tls().declare_handshake_len(40).build(), Malformed::HelloLength),
        ("handshake length 0", tls().declare_handshake_len(0).build(), Malformed::HelloLength),
        ("session id of 33 bytes", tls().session_id(&[7; 33]).build(), Malformed::FieldLength),
        ("session id of 255 bytes", tls().session_id(&[7; 255]).build(), Malformed::FieldLength),
        (
            "handshake length shorter than the session id",
            tls().declare_handshake_len(45).build(),
            Malformed::FieldLength,
        ),
        (
            "3-byte cipher list",
            tls().cipher_suites_raw(&[0x13, 0x01, 0x13]).build(),
            Malformed::FieldLength,
        ),
        ("empty cipher list", tls().cipher_suites(&[]).build(), Malformed::FieldLength),
        ("no compression method", tls().compression_methods(&[]).build(), Malformed::FieldLength),
        (
            "extension length past the end",
            tls().raw_extension(&[0x00, 0x00, 0x00, 0x10, 0xaa]).build(),
            Malformed::ExtensionLength,
        ),
        (
            "half an extension header at the end",
            tls().extension(EXT_ALPN, ALPN).raw_extension(&[0x00, 0x17]).build(),
            Malformed::ExtensionLength,
        ),
        (
            "supported_versions past the end",
            tls().raw_extension(&[0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04]).build(),
            Malformed::ExtensionLength,
        ),
        (
            "extensions block 1 byte short of the rest",
            tls()
                .extension(EXT_ALPN, ALPN)
                .declare_extensions_len(4 + ALPN.len() as u16 - 1)
                .build(),
            Malformed::ExtensionLength,
        ),
        (
            "extensions block 1 byte past the rest",
            tls()
                .extension(EXT_ALPN, ALPN)
                .declare_extensions_len(4 + ALPN.len() as u16 + 1)
                .build(),
            Malformed::ExtensionLength,
        ),
        (
            "extensions block promised, none there",
            tls().declare_extensions_len(4).build(),
            Malformed::ExtensionLength,
        ),
        (
            "supported_versions list longer than the extension",
            tls().extension(0x002b, &[0x04, 0x03, 0x04]).build(),
            Malformed::SupportedVersions,
        ),
        (
            "supported_versions list shorter than the extension",
            tls().extension(0x002b, &[0x02, 0x03, 0x04, 0x03, 0x03]).build(),
            Malformed::SupportedVersions,
        ),
        (
            "supported_versions of even length",
            tls().extension(0x002b, &[0x02, 0x03, 0x04, 0x00]).build(),
            Malformed::SupportedVersions,
        ),
        (
            "supported_versions empty",
            tls().extension(0x002b, &[]).build(),
            Malformed::SupportedVersions,
        ),
        (
            "supported_versions with an empty list",
            tls().extension(0x002b, &[0x00]).build(),
            Malformed::SupportedVersions,
        ),
    ];
    for (what, flight, want) in cases {
        check(what, &flight, Progress::Malformed(want));
    }
    // The largest record is fine.
    check(
        "record of 2^14 bytes",
        &tls().pad_to(max_record_flight).build(),
        decided(Version::Tls12),
    );
}

#[test]
fn other_protocols_are_not_hellos() {
    let mut sslv2_server_hello = testing::sslv2(0x0002);
    sslv2_server_hello[2] = 0x04;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP", b"GET / HTTP/1.1\r\nHost: outpost.test\r\n\r\n".to_vec()),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        ("application data record", vec![0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]),
        ("alert record", vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]),
        ("0x16 then no TLS version", vec![0x16, 0x99, 0x99, 0x00, 0x30, 0x01, 0x00, 0x00, 0x2c]),
        ("0x16 then major 2", vec![0x16, 0x02, 0x00, 0x00, 0x30]),
        ("ServerHello", ClientHello::tls(0x0303).handshake_type(0x02).build()),
        ("HelloRequest", ClientHello::tls(0x0303).handshake_type(0x00).build()),
        ("Certificate", ClientHello::tls(0x0303).handshake_type(0x0b).build()),
        ("SSLv2 SERVER-HELLO", sslv2_server_hello),
        ("SSLv2-format, version 0x0200", testing::sslv2(0x0200)),
        ("SSLv2-format, version 0x0400", testing::sslv2(0x0400)),
        ("SSLv2 header, body under 9 bytes", vec![0x80, 0x08, 0x01, 0x00, 0x02, 0, 3, 0, 0, 0]),
    ];
    for (what, flight) in cases {
        check(what, &flight, Progress::NotHello);
    }
}

// ---------------------------------------------------------------------------------------------
// The step budget and the end

#[test]
fn tiny_step_budget_runs_out() {
    let flight = ClientHello::tls(0x0303).supported_versions(&[0x0304]).build();
    for steps in 0..4 {
        let got = HelloParser::new().feed_bounded(&flight[..], steps);
        assert_eq!(got, Progress::OutOfSteps, "{steps} steps over {}", hex(&flight));
    }
}

#[test]
fn step_budget_of_feed_is_enough_and_smaller_ones_never_mislead() {
    // `feed` gives `len + 2` steps; any budget gives the answer or runs out, nothing else.
    for (name, bytes, want) in captures() {
        for steps in 0..bytes.len() + 3 {
            let got = HelloParser::new().feed_bounded(&bytes[..], steps);
            assert!(
                got == Progress::OutOfSteps || got == decided(want),
                "{name}: {steps} steps gave {got:?}: {}",
                hex(&bytes),
            );
        }
        let got = HelloParser::new().feed_bounded(&bytes[..], bytes.len() + 2);
        assert_eq!(got, decided(want), "{name}: len + 2 steps: {}", hex(&bytes));
    }
}

#[test]
fn feeding_after_the_answer_is_finished() {
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "decided by supported_versions",
            ClientHello::tls(0x0303).supported_versions(&[0x0304]).build(),
        ),
        ("decided by the end of the hello", ClientHello::tls(0x0301).build()),
        ("not a hello", b"GET / HTTP/1.1\r\n".to_vec()),
        ("malformed", ClientHello::tls(0x0303).session_id(&[0; 33]).build()),
    ];
    for (what, flight) in cases {
        let mut p = HelloParser::new();
        let first = p.feed(&flight[..]);
        assert!(!matches!(first, Progress::NeedMore | Progress::OutOfSteps), "{what}: {first:?}");
        for more in [&flight[..], &[0x16][..], &[][..], &flight[..]] {
            let got = p.feed(more);
            let finished = Progress::Malformed(Malformed::Finished);
            assert_eq!(
                got,
                finished,
                "{what}: fed {} after {first:?} from {}",
                hex(more),
                hex(&flight)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The quick read (`outpost_common::quick`); every case above and below also holds it to the
// parser wherever it answers.

/// It decides every capture of a TLS hello (each is whole in one record), and every prefix of
/// one either as the parser does or not at all.
#[test]
fn quick_read_decides_every_tls_capture() {
    for (name, bytes, _) in captures() {
        let tls = bytes[0] == 0x16;
        assert_eq!(testing::quick_agrees(&name, &bytes), tls, "{name}");
        for cut in 0..bytes.len() {
            testing::quick_agrees(&format!("{name} cut at {cut}"), &bytes[..cut]);
        }
    }
}

/// It leaves to the parser what it does not read itself: a hello in two records, a segment
/// that ends before `supported_versions`, a version list longer than it reads.
#[test]
fn quick_read_gives_up_where_the_parser_must_read() {
    let (hello, _) = hello_around_supported_versions();
    let whole = hello.clone().build();
    assert!(testing::quick_agrees("one record", &whole));
    assert!(!testing::quick_agrees("records of 100", &hello.clone().record_size(100).build()));
    let sv = whole.windows(2).position(|w| w == [0x00, 0x2b]).unwrap();
    assert!(!testing::quick_agrees("cut before supported_versions", &whole[..sv + 4]));
    let long: Vec<u16> = GREASE.iter().copied().chain([0x0304]).collect();
    let long = ClientHello::tls(0x0303).supported_versions(&long).build();
    assert_eq!(classify(&long), decided(Version::Tls13));
    assert!(!testing::quick_agrees("17 versions", &long));
}

// ---------------------------------------------------------------------------------------------
// Random input

#[test]
fn random_bytes_never_panic_and_splits_agree() {
    let mut rng = XorShift(0x5eed_f00d_ac79_0571);
    for i in 0..20_000 {
        let len = rng.below(if i % 10 == 0 { 3000 } else { 300 });
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Most random bytes stop at the first one; start half of them like a hello record.
        if i % 2 == 0 && len >= 6 {
            input[..6].copy_from_slice(&[
                0x16,
                0x03,
                rng.below(5) as u8,
                rng.next() as u8,
                rng.next() as u8,
                0x01,
            ]);
        }
        splits_agree(&format!("random input #{i}"), &input, &mut rng);
    }
}

#[test]
fn mutated_hellos_never_panic_and_splits_agree() {
    let mut rng = XorShift(0xc1e7_4e11_0b0b);
    let (crafted, _) = hello_around_supported_versions();
    let mut seeds: Vec<(String, Vec<u8>)> =
        captures().into_iter().map(|(name, bytes, _)| (name, bytes)).collect();
    seeds.push(("crafted, records of 3".into(), crafted.record_size(3).build()));
    seeds.push(("SSLv3".into(), ClientHello::sslv3().build()));
    seeds.push(("SSLv2-format".into(), testing::sslv2(0x0301)));
    for (name, seed) in &seeds {
        for i in 0..2000 {
            let mut input = seed.clone();
            for _ in 0..1 + rng.below(4) {
                mutate(&mut input, &mut rng);
            }
            splits_agree(&format!("{name} mutation #{i}"), &input, &mut rng);
        }
    }
}

/// One random edit: flip a byte, set a byte to an edge value, truncate, insert or drop.
fn mutate(input: &mut Vec<u8>, rng: &mut XorShift) {
    if input.is_empty() {
        input.push(rng.next() as u8);
        return;
    }
    let at = rng.below(input.len());
    match rng.below(6) {
        0 => input[at] ^= 1 << rng.below(8),
        1 => input[at] = [0x00, 0x01, 0x02, 0x03, 0x16, 0x2b, 0x7f, 0x80, 0xff][rng.below(9)],
        2 => input[at] = rng.next() as u8,
        3 => input.truncate(at),
        4 => input.insert(at, rng.next() as u8),
        _ => {
            input.remove(at);
        }
    }
}

/// Classifies `input` whole, then in a few random splits into 2 and 3 chunks and byte at a
/// time: each must give the whole-input answer. A panic in the parser is reported with the
/// input too.
fn splits_agree(what: &str, input: &[u8], rng: &mut XorShift) {
    let n = input.len();
    let mut cuts: Vec<Vec<usize>> = (0..4).map(|_| vec![rng.below(n + 1)]).collect();
    for _ in 0..2 {
        let mut two = vec![rng.below(n + 1), rng.below(n + 1)];
        two.sort_unstable();
        cuts.push(two);
    }
    let run = || {
        let whole = classify(input);
        assert_ne!(whole, Progress::OutOfSteps, "{what}: feed ran out of steps: {}", hex(input));
        testing::quick_agrees(what, input);
        for cut in &cuts {
            let mut chunks = Vec::new();
            let mut from = 0;
            for &c in cut {
                chunks.push(&input[from..c]);
                from = c;
            }
            chunks.push(&input[from..]);
            let got = feed_chunks(chunks.iter().copied());
            assert_eq!(got, whole, "{what}: split at {cut:?} of {}", hex(input));
        }
        let got = feed_chunks(input.chunks(1));
        assert_eq!(got, whole, "{what}: byte at a time: {}", hex(input));
    };
    if std::panic::catch_unwind(run).is_err() {
        panic!("{what}: panicked or disagreed (see above) on {}", hex(input));
    }
}

/// xorshift64: reproducible and dependency-free, plenty for picking bytes and cuts.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform enough in `0..n`; 0 for `n == 0`.
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn decided(v: Version) -> Progress {
    Progress::Decided(v)
}

/// `flight` must give `want` whole, in every split into two, and byte at a time.
fn check(what: &str, flight: &[u8], want: Progress) {
    check_whole_and_bytewise(what, flight, want);
    for cut in 0..=flight.len() {
        let got = feed_chunks([&flight[..cut], &flight[cut..]]);
        assert_eq!(got, want, "{what}: split at {cut} of {}", hex(flight));
    }
}

fn check_whole_and_bytewise(what: &str, flight: &[u8], want: Progress) {
    assert_eq!(classify(flight), want, "{what}: {}", hex(flight));
    testing::quick_agrees(what, flight);
    assert_eq!(feed_chunks(flight.chunks(1)), want, "{what}: byte at a time: {}", hex(flight));
}

/// A prefix of a flight, fed whole.
fn check_prefix(what: &str, prefix: &[u8], want: Progress) {
    assert_eq!(classify(prefix), want, "{what}: prefix of {} bytes: {}", prefix.len(), hex(prefix));
}

/// Feeds `chunks` to one parser in order: the first answer that is not `NeedMore`, else
/// `NeedMore`.
fn feed_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Progress {
    let mut p = HelloParser::new();
    for chunk in chunks {
        let got = p.feed(chunk);
        if got != Progress::NeedMore {
            return got;
        }
    }
    Progress::NeedMore
}

/// Where the `supported_versions` extension (its header) starts in the handshake message.
fn offset_of_supported_versions(hello: &ClientHello) -> usize {
    let message = hello.handshake();
    // The extension's type and a length that fits a list of 1..=127 versions: the random and
    // the other fields of these hellos never look like that.
    message
        .windows(5)
        .position(|w| w[..3] == [0x00, 0x2b, 0x00] && w[3] == w[4] + 1 && w[3] % 2 == 1)
        .unwrap_or_else(|| panic!("no supported_versions in {}", hex(&message)))
}

/// An ALPN extension body of about `len` bytes: many long protocol names.
fn big_alpn(len: usize) -> Vec<u8> {
    let mut list = Vec::new();
    while list.len() + 201 <= len - 2 {
        list.push(200);
        list.extend([b'x'; 200]);
    }
    let mut body = (list.len() as u16).to_be_bytes().to_vec();
    body.extend(list);
    body
}

/// The captures of `testdata/clienthello` with the version `manifest.json` says they offer.
fn captures() -> Vec<(String, Vec<u8>, Version)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/clienthello");
    let manifest = std::fs::read_to_string(format!("{dir}/manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let entries = manifest.as_object().expect("manifest.json is an object");
    assert!(entries.len() >= 8, "expected the whole capture set, found {}", entries.len());
    entries
        .iter()
        .map(|(name, entry)| {
            let bytes = std::fs::read(format!("{dir}/{name}.bin")).unwrap();
            let want = entry["max_offered"].as_str().unwrap();
            let version = Version::ALL.into_iter().find(|v| v.name() == want).unwrap();
            (name.clone(), bytes, version)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The heads the XDP program passes without looking for the flow: application-data records of
/// TLS 1.0-1.3, and nothing the classifier could take for the start of a hello.
#[test]
fn application_data_heads() {
    use outpost_common::{may_start_hello, starts_app_data};
    for v in 1..=3 {
        assert!(starts_app_data([0x17, 0x03, v]), "17 03 {v:02x}");
    }
    for head in [[0x17, 0x03, 0x00], [0x17, 0x03, 0x04], [0x17, 0x02, 0x03], [0x16, 0x03, 0x03]] {
        assert!(!starts_app_data(head), "{head:02x?}");
    }
    let record = [0x17, 0x03, 0x03, 0x00, 0x20];
    assert_eq!(classify(&record[..]), Progress::NotHello, "the classifier agrees");
    assert!(!may_start_hello(0x17));
}
