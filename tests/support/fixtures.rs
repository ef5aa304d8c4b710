//! The fixture table: every case of the packet walk, the classifier, hellos over several
//! segments, the policy modes and the counters. Shared by the BPF test and the benchmark.

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use dataplane::{Mode, Outcome, Verdict, Version};
use outpost_common::testing::{sslv2, ClientHello};

use crate::{
    bpf::{Fixture, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{Packet, ACK, FIN, RST, SYN},
};

/// A real capture from `testdata/clienthello`.
pub fn capture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../ebpf/outpost-common/testdata/clienthello/{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Captures and what they offer.
pub const CAPTURES: &[(&str, Version)] = &[
    ("openssl-tls1_0", Version::Tls10),
    ("openssl-tls1_1", Version::Tls11),
    ("openssl-tls1_2", Version::Tls12),
    ("openssl-tls1_3", Version::Tls13),
    ("openssl-default", Version::Tls13),
    ("curl-tls1_0", Version::Tls10),
    ("curl-default", Version::Tls13),
    ("python-tls1_0", Version::Tls10),
];

/// Payload bytes of a full-size segment at MTU 1500 with TCP timestamps.
pub const MSS: usize = 1448;

thread_local! {
    static NEXT_PORT: Cell<u16> = const { Cell::new(40000) };
}

/// A fresh client port per row, so rows never share flow state.
fn port() -> u16 {
    NEXT_PORT.with(|p| {
        let v = p.get();
        p.set(v + 1);
        v
    })
}

/// An SSLv3 hello: legacy_version 0x0300, no extensions.
pub fn sslv3_hello() -> Vec<u8> {
    ClientHello::sslv3().build()
}

/// An SSLv2-format CLIENT-HELLO.
pub fn sslv2_hello() -> Vec<u8> {
    sslv2(0x0002)
}

/// A TLS hello padded to `size` bytes, offering `versions` in supported_versions (or
/// legacy_version alone when empty), with supported_versions after the padding so it lands in
/// the second segment.
pub fn big_hello(legacy: u16, versions: &[u16], size: usize) -> Vec<u8> {
    let mut b = ClientHello::tls(legacy).pad_to(size);
    if !versions.is_empty() {
        b = b.supported_versions(versions);
    }
    let h = b.build();
    assert_eq!(h.len(), size, "big hello size");
    h
}

/// The whole table.
pub fn table() -> Vec<Fixture> {
    let mut rows = Vec::new();
    walk_rows(&mut rows);
    capture_rows(&mut rows);
    crafted_rows(&mut rows);
    segment_rows(&mut rows);
    policy_rows(&mut rows);
    redirect_rows(&mut rows);
    // Last: the eviction row leaves the flow table full.
    filter_rows(&mut rows);
    rows
}

fn pass_row(name: &str, packet: Packet, outcome: Outcome) -> Fixture {
    Fixture::new(name).step(packet.build(), XDP_PASS, None).outcome(outcome, 1)
}

/// Point 2: the walk. Everything it does not follow passes untouched, counted.
fn walk_rows(rows: &mut Vec<Fixture>) {
    let hello = capture("openssl-tls1_0");
    let legacy4 = Packet::tcp4(port(), 443, &hello);
    rows.push(
        Fixture::new("IPv4 TLS 1.0 hello: reset to server")
            .rejected_first(&legacy4, Version::Tls10),
    );
    let p = Packet::tcp6(port(), 443, &hello);
    rows.push(
        Fixture::new("IPv6 TLS 1.0 hello: reset to server").rejected_first(&p, Version::Tls10),
    );
    let p = Packet::tcp4(port(), 443, &hello).vlan(0x8100, 7);
    rows.push(Fixture::new("802.1Q tagged IPv4 TLS 1.0 hello").rejected_first(&p, Version::Tls10));
    let p = Packet::tcp6(port(), 443, &hello).vlan(0x88a8, 100).vlan(0x8100, 7);
    rows.push(
        Fixture::new("802.1ad + 802.1Q tagged IPv6 TLS 1.0 hello")
            .rejected_first(&p, Version::Tls10),
    );
    rows.push(pass_row(
        "three VLAN tags: not followed",
        Packet::tcp4(port(), 443, &hello).vlan(0x88a8, 1).vlan(0x8100, 2).vlan(0x8100, 3),
        Outcome::NotIp,
    ));
    // Record route option (7), 8 bytes with padding.
    let p = Packet::tcp4(port(), 443, &hello).ipv4_options(&[7, 7, 4, 0, 0, 0, 0, 1]);
    rows.push(Fixture::new("IPv4 with options").rejected_first(&p, Version::Tls10));
    let pad6 = [1u8, 4, 0, 0, 0, 0]; // PadN option filling a 6-byte body
    let p = Packet::tcp6(port(), 443, &hello)
        .ipv6_ext(0, &pad6)
        .ipv6_ext(43, &[0, 0, 0, 0, 0, 0])
        .ipv6_ext(60, &pad6);
    rows.push(
        Fixture::new("IPv6 hop-by-hop + routing + destination options")
            .rejected_first(&p, Version::Tls10),
    );
    let mut p = Packet::tcp6(port(), 443, &hello);
    for _ in 0..5 {
        p = p.ipv6_ext(60, &pad6);
    }
    rows.push(pass_row("IPv6 with five extension headers: passed", p, Outcome::ExtHeaders));
    rows.push(pass_row(
        "IPv6 fragment header",
        Packet::tcp6(port(), 443, &hello).ipv6_ext(44, &[0, 1, 0, 0, 0, 1]),
        Outcome::Fragment,
    ));
    rows.push(pass_row(
        "IPv4 first fragment (MF)",
        Packet::tcp4(port(), 443, &hello).ipv4_frag(0x2000),
        Outcome::Fragment,
    ));
    rows.push(pass_row(
        "IPv4 later fragment (offset)",
        Packet::tcp4(port(), 443, &hello).ipv4_frag(0x0010),
        Outcome::Fragment,
    ));
    rows.push(pass_row("UDP to 443", Packet::tcp4(port(), 443, &hello).udp(), Outcome::NotTcp));
    let mut arp = Packet::tcp4(port(), 443, &[0u8; 28]);
    arp.ether_type = Some(0x0806);
    rows.push(pass_row("ARP", arp, Outcome::NotIp));
    rows.push(pass_row(
        "IPv4 header cut short",
        Packet::tcp4(port(), 443, &hello).truncate(14 + 12),
        Outcome::Truncated,
    ));
    rows.push(pass_row(
        "TCP header cut short",
        Packet::tcp4(port(), 443, &hello).truncate(14 + 20 + 10),
        Outcome::Truncated,
    ));
    rows.push(pass_row(
        "TLS 1.0 hello to an unprotected port",
        Packet::tcp4(port(), 8080, &hello),
        Outcome::OtherPort,
    ));
    rows.push(pass_row("SYN", Packet::tcp4(port(), 443, &[]).flags(SYN), Outcome::NoPayload));
    rows.push(pass_row("pure ACK", Packet::tcp4(port(), 443, &[]).flags(ACK), Outcome::NoPayload));
    // Checked before the port, which a segment without payload does not need.
    rows.push(pass_row(
        "pure ACK to an unprotected port",
        Packet::tcp4(port(), 8080, &[]).flags(ACK),
        Outcome::NoPayload,
    ));
    rows.push(pass_row(
        "HTTP request on 443",
        Packet::tcp4(port(), 443, b"GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n"),
        Outcome::NotHello,
    ));
    rows.push(pass_row(
        "TLS application data record",
        Packet::tcp4(port(), 443, &[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]),
        Outcome::NotHello,
    ));
    // Also checked before the port: application data is no hello wherever it goes.
    rows.push(pass_row(
        "TLS application data to an unprotected port",
        Packet::tcp4(port(), 8080, &[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]),
        Outcome::NotHello,
    ));
    // A record that closes its flow goes on to the port and the flow, as a FIN must.
    rows.push(pass_row(
        "TLS application data with FIN to an unprotected port",
        Packet::tcp4(port(), 8080, &[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]).flags(ACK | FIN),
        Outcome::OtherPort,
    ));
    // Ethernet padding after the datagram must not be read as payload, and is cut with it.
    let p = Packet::tcp4(port(), 443, &hello).trailer(&[0xee; 6]);
    rows.push(Fixture::new("Ethernet padding after the hello").rejected_first(&p, Version::Tls10));
}

/// Point 3 on real captures, IPv4 and IPv6, default policy (TLS 1.2 floor, reject).
fn capture_rows(rows: &mut Vec<Fixture>) {
    for &(name, version) in CAPTURES {
        for v6 in [false, true] {
            let bytes = capture(name);
            let p = if v6 {
                Packet::tcp6(port(), 443, &bytes)
            } else {
                Packet::tcp4(port(), 443, &bytes)
            };
            let fam = if v6 { "IPv6" } else { "IPv4" };
            let row = Fixture::new(format!("{name} over {fam}"));
            rows.push(if version >= Version::Tls12 {
                row.step(p.build(), XDP_PASS, None)
                    .counts(version, Verdict::Pass, 1)
                    .outcome(Outcome::DecidedFirst, 1)
            } else {
                row.rejected_first(&p, version)
            });
        }
    }
}

/// Point 3 on crafted hellos.
fn crafted_rows(rows: &mut Vec<Fixture>) {
    let reject = |name: &str, hello: Vec<u8>, version: Version| {
        let p = Packet::tcp4(port(), 443, &hello);
        Fixture::new(name).rejected_first(&p, version)
    };
    rows.push(reject("SSLv3 hello", sslv3_hello(), Version::Sslv3));
    rows.push(reject("SSLv2-format hello", sslv2_hello(), Version::Sslv2));
    rows.push(reject("SSLv2-format hello from a TLS 1.0 client", sslv2(0x0301), Version::Sslv2));
    rows.push(reject(
        "supported_versions [TLS 1.1] wins over legacy 1.2",
        ClientHello::tls(0x0303).supported_versions(&[0x0302]).build(),
        Version::Tls11,
    ));
    rows.push(reject(
        "hello in three records",
        ClientHello::tls(0x0301).records(&[10, 20]).build(),
        Version::Tls10,
    ));
    let pass = |name: &str, hello: Vec<u8>, version: Version| {
        Fixture::new(name)
            .step(Packet::tcp4(port(), 443, &hello).build(), XDP_PASS, None)
            .counts(version, Verdict::Pass, 1)
            .outcome(Outcome::DecidedFirst, 1)
    };
    rows.push(pass(
        "GREASE + TLS 1.3",
        ClientHello::tls(0x0303).supported_versions(&[0x1a1a, 0x0304, 0x0303]).build(),
        Version::Tls13,
    ));
    rows.push(pass(
        "GREASE only: unknown, passes",
        ClientHello::tls(0x0303).supported_versions(&[0x2a2a, 0xfafa]).build(),
        Version::Unknown,
    ));
    rows.push(pass(
        "future version only: unknown, passes",
        ClientHello::tls(0x0303).supported_versions(&[0x0305]).build(),
        Version::Unknown,
    ));
    rows.push(pass(
        "TLS 1.3 hello in many small records",
        ClientHello::tls(0x0303).supported_versions(&[0x0304]).records(&[3, 7, 11, 13]).build(),
        Version::Tls13,
    ));
    let mut broken = capture("openssl-tls1_0");
    broken[5 + 4 + 2 + 32] = 200; // session id length past 32
    rows.push(pass_row(
        "malformed hello fails open",
        Packet::tcp4(port(), 443, &broken),
        Outcome::Malformed,
    ));
}

/// Point 4: hellos over several segments.
fn segment_rows(rows: &mut Vec<Fixture>) {
    // TLS 1.3 hello of 2000 bytes, supported_versions in the second segment.
    let big13 = big_hello(0x0303, &[0x0a0a, 0x0304, 0x0303], 2000);
    for v6 in [false, true] {
        let sport = port();
        let mk =
            |b: &[u8]| if v6 { Packet::tcp6(sport, 443, b) } else { Packet::tcp4(sport, 443, b) };
        let first = mk(&big13[..MSS]).seq(1000);
        let second = mk(&big13[MSS..]).seq(1000 + MSS as u32);
        rows.push(
            Fixture::new(format!("2000-byte TLS 1.3 hello over two segments (v6={v6})"))
                .step(first.build(), XDP_PASS, None)
                .step(second.build(), XDP_PASS, None)
                .counts(Version::Tls13, Verdict::Pass, 1)
                .outcome(Outcome::FollowNext, 1)
                .outcome(Outcome::DecidedLater, 1),
        );
    }
    // A legacy hello too big for one segment is never judged on the first one.
    let big10 = big_hello(0x0301, &[], 2000);
    let sport = port();
    let first = Packet::tcp4(sport, 443, &big10[..MSS]).seq(1000);
    let second = Packet::tcp4(sport, 443, &big10[MSS..]).seq(1000 + MSS as u32);
    let retrans = second.clone();
    rows.push(
        Fixture::new("2000-byte TLS 1.0 hello: passes the first segment, rejects from the second")
            .step(first.build(), XDP_PASS, None)
            .step(second.build(), XDP_PASS, Some(second.as_reset_to_server().build()))
            .step(retrans.build(), XDP_TX, Some(retrans.as_reset_to_client().build()))
            .counts(Version::Tls10, Verdict::Reject, 1)
            .outcome(Outcome::FollowNext, 1)
            .outcome(Outcome::DecidedLater, 1)
            .outcome(Outcome::ResetServer, 1)
            .outcome(Outcome::FlowRepeat, 1)
            .outcome(Outcome::ResetClient, 1),
    );
    let sport = port();
    let first = Packet::tcp4(sport, 443, &big13[..MSS]).seq(1000);
    rows.push(
        Fixture::new("first segment retransmitted while following")
            .step(first.build(), XDP_PASS, None)
            .step(first.build(), XDP_PASS, None)
            .step(
                Packet::tcp4(sport, 443, &big13[MSS..]).seq(1000 + MSS as u32).build(),
                XDP_PASS,
                None,
            )
            .counts(Version::Tls13, Verdict::Pass, 1)
            .outcome(Outcome::FollowNext, 2)
            .outcome(Outcome::DecidedLater, 1),
    );
    let sport = port();
    rows.push(
        Fixture::new("out-of-order second segment: left to userspace")
            .step(Packet::tcp4(sport, 443, &big10[..MSS]).seq(1000).build(), XDP_PASS, None)
            .step(Packet::tcp4(sport, 443, &big10[MSS..]).seq(9999).build(), XDP_PASS, None)
            .outcome(Outcome::FollowNext, 1)
            .outcome(Outcome::ToUserspace, 1),
    );
    // A continuation that happens to start like an application-data record passes unread (no
    // flow lookup for those): the hello goes on out of order and is left to userspace.
    let sport = port();
    let mut looks_like_data = big10[MSS..].to_vec();
    looks_like_data[..3].copy_from_slice(&[0x17, 0x03, 0x03]);
    rows.push(
        Fixture::new("continuation starting 17 03 03: passed unread, the hello left to userspace")
            .step(Packet::tcp4(sport, 443, &big10[..MSS]).seq(1000).build(), XDP_PASS, None)
            .step(
                Packet::tcp4(sport, 443, &looks_like_data[..200]).seq(1000 + MSS as u32).build(),
                XDP_PASS,
                None,
            )
            .step(
                Packet::tcp4(sport, 443, &looks_like_data[200..])
                    .seq(1000 + MSS as u32 + 200)
                    .build(),
                XDP_PASS,
                None,
            )
            .outcome(Outcome::FollowNext, 1)
            .outcome(Outcome::NotHello, 1)
            .outcome(Outcome::ToUserspace, 1),
    );
    // A hello spread over more segments than the kernel follows.
    let huge = big_hello(0x0303, &[0x0304], 5 * 400);
    let sport = port();
    let mut row = Fixture::new("hello over five segments: left to userspace after four");
    for i in 0..5 {
        let seg = &huge[i * 400..(i + 1) * 400];
        let p = Packet::tcp4(sport, 443, seg).seq(1000 + (i * 400) as u32);
        row = row.step(p.build(), XDP_PASS, None);
    }
    // Segments 1-3 are followed, the fourth gives up, the fifth is payload of no known flow.
    rows.push(
        row.outcome(Outcome::FollowNext, 3)
            .outcome(Outcome::ToUserspace, 1)
            .outcome(Outcome::NotHello, 1),
    );
    let sport = port();
    rows.push(
        Fixture::new("client reset while following forgets the flow")
            .step(Packet::tcp4(sport, 443, &big13[..MSS]).seq(1000).build(), XDP_PASS, None)
            .step(
                Packet::tcp4(sport, 443, &[]).flags(RST | ACK).seq(1000 + MSS as u32).build(),
                XDP_PASS,
                None,
            )
            .step(
                Packet::tcp4(sport, 443, &big13[MSS..]).seq(1000 + MSS as u32).build(),
                XDP_PASS,
                None,
            )
            .outcome(Outcome::FollowNext, 1)
            .outcome(Outcome::NoPayload, 1)
            .outcome(Outcome::NotHello, 1),
    );
}

/// Point 5: modes, floors and ports, changed between rows through the real control API.
fn policy_rows(rows: &mut Vec<Fixture>) {
    let hello = capture("curl-tls1_0");
    let p = Packet::tcp4(port(), 443, &hello);
    rows.push(
        Fixture::new("observe: TLS 1.0 counted as passed")
            .policy(Version::Tls12, Mode::Observe, &[443])
            .step(p.build(), XDP_PASS, None)
            .counts(Version::Tls10, Verdict::Pass, 1)
            .outcome(Outcome::DecidedFirst, 1),
    );
    let p = Packet::tcp4(port(), 443, &hello);
    let fin = p.clone().flags(FIN | ACK);
    rows.push(
        Fixture::new("drop: hello and its retransmission dropped, counted once; FIN dropped")
            .policy(Version::Tls12, Mode::Drop, &[443])
            .step(p.build(), XDP_DROP, None)
            .step(p.build(), XDP_DROP, None)
            .step(fin.build(), XDP_DROP, None)
            .counts(Version::Tls10, Verdict::Drop, 1)
            .outcome(Outcome::DecidedFirst, 1)
            .outcome(Outcome::FlowRepeat, 2),
    );
    let p = Packet::tcp4(port(), 443, &hello);
    rows.push(
        Fixture::new("drop: a client reset passes so the server can clean up")
            .policy(Version::Tls12, Mode::Drop, &[443])
            .step(p.build(), XDP_DROP, None)
            .step(p.clone().flags(RST | ACK).build(), XDP_PASS, None)
            .counts(Version::Tls10, Verdict::Drop, 1)
            .outcome(Outcome::DecidedFirst, 1)
            .outcome(Outcome::FlowRepeat, 1),
    );
    for v6 in [false, true] {
        let p =
            if v6 { Packet::tcp6(port(), 443, &hello) } else { Packet::tcp4(port(), 443, &hello) };
        rows.push(
            Fixture::new(format!("reject: reset to server, then the retransmission draws a reset to the client (v6={v6})"))
                .policy(Version::Tls12, Mode::Reject, &[443])
                .rejected_first(&p, Version::Tls10)
                .client_reset(&p),
        );
    }
    // A client that reuses the source port of a blocked connection for a new one: the new
    // connection starts at another (random) sequence number and is judged on its own hello.
    let tls13 = capture("openssl-tls1_3");
    let sport = port();
    let old = Packet::tcp4(sport, 443, &hello).seq(1000);
    let new = Packet::tcp4(sport, 443, &tls13).seq(2_000_000_000);
    rows.push(
        Fixture::new("reject: a new TLS 1.3 connection on a rejected flow's four-tuple passes")
            .policy(Version::Tls12, Mode::Reject, &[443])
            .rejected_first(&old, Version::Tls10)
            .step(new.build(), XDP_PASS, None)
            .counts(Version::Tls13, Verdict::Pass, 1)
            .outcome(Outcome::FlowReused, 1)
            .outcome(Outcome::DecidedFirst, 1),
    );
    let sport = port();
    let old = Packet::tcp4(sport, 443, &hello).seq(u32::MAX - 100);
    let new = Packet::tcp4(sport, 443, &hello).seq(4000);
    rows.push(
        Fixture::new(
            "drop: a new legacy connection on a dropped flow's four-tuple is counted again",
        )
        .policy(Version::Tls12, Mode::Drop, &[443])
        .step(old.build(), XDP_DROP, None)
        // The FIN after the hello wraps past zero in sequence space: still the old flow.
        .step(
            Packet::tcp4(sport, 443, &[])
                .flags(FIN | ACK)
                .seq((u32::MAX - 100).wrapping_add(hello.len() as u32))
                .build(),
            XDP_DROP,
            None,
        )
        .step(new.build(), XDP_DROP, None)
        .counts(Version::Tls10, Verdict::Drop, 2)
        .outcome(Outcome::DecidedFirst, 2)
        .outcome(Outcome::FlowRepeat, 1)
        .outcome(Outcome::FlowReused, 1),
    );
    let p = Packet::tcp4(port(), 443, &hello).flags(FIN | ACK | 0x08);
    rows.push(
        Fixture::new("reject: hello with FIN, reset acknowledges the FIN too")
            .policy(Version::Tls12, Mode::Reject, &[443])
            .rejected_first(&p, Version::Tls10)
            .client_reset(&p),
    );
    let tls12 = capture("openssl-tls1_2");
    let p = Packet::tcp4(port(), 443, &tls12);
    rows.push(
        Fixture::new("floor 1.3 rejects TLS 1.2")
            .policy(Version::Tls13, Mode::Reject, &[443])
            .rejected_first(&p, Version::Tls12),
    );
    let p = Packet::tcp4(port(), 8443, &hello);
    rows.push(
        Fixture::new("ports 8443 only: 8443 protected")
            .policy(Version::Tls12, Mode::Drop, &[8443])
            .step(p.build(), XDP_DROP, None)
            .counts(Version::Tls10, Verdict::Drop, 1)
            .outcome(Outcome::DecidedFirst, 1),
    );
    rows.push(
        Fixture::new("ports 8443 only: 443 no longer protected")
            .policy(Version::Tls12, Mode::Drop, &[8443])
            .step(Packet::tcp4(port(), 443, &hello).build(), XDP_PASS, None)
            .outcome(Outcome::OtherPort, 1),
    );
}

/// A client address in a /24 of its own per `net` (198.18.100+net.0/24), host `host`.
fn v4(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 100 + net, host))
}

/// Point 6: redirect mode and its budget. Each row uses source networks of its own (per-source
/// buckets outlive a row); the global bucket starts afresh with each row.
fn redirect_rows(rows: &mut Vec<Fixture>) {
    let tls10 = capture("curl-tls1_0");
    let tls11 = capture("openssl-tls1_1");
    let tls13 = capture("openssl-tls1_3");
    let redirect = |name: &str| Fixture::new(name).policy(Version::Tls12, Mode::Redirect, &[443]);
    let hello =
        |net: u8, host: u8, bytes: &[u8]| Packet::tcp4(port(), 443, bytes).from(v4(net, host));

    rows.push(
        redirect("redirect: TLS 1.0 and 1.1 within the budget pass on to the responder")
            .redirected(&hello(0, 1, &tls10), Version::Tls10)
            .redirected(&hello(0, 2, &tls11), Version::Tls11),
    );
    let over = hello(1, 3, &tls10);
    rows.push(
        redirect("redirect: per-source budget 2: the third hello of a /24 is rejected")
            .budget(100, 2)
            .redirected(&hello(1, 1, &tls10), Version::Tls10)
            .redirected(&hello(1, 2, &tls10), Version::Tls10)
            .rejected_not_redirected(&over, Version::Tls10)
            // The retransmission of the rejected hello draws a reset, as in reject mode.
            .client_reset(&over)
            // Another /24 has a budget of its own.
            .redirected(&hello(2, 1, &tls10), Version::Tls10),
    );
    let v6 =
        |a: [u16; 8]| IpAddr::V6(Ipv6Addr::new(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]));
    let hello6 = |addr: IpAddr| Packet::tcp6(port(), 443, &tls10).from(addr);
    rows.push(
        redirect("redirect: per-source budget over IPv6 is per /48")
            .budget(100, 1)
            .redirected(&hello6(v6([0x2001, 0x2, 0x77, 0, 0, 0, 0, 1])), Version::Tls10)
            // Another /64 of the same /48: the same budget.
            .rejected_not_redirected(
                &hello6(v6([0x2001, 0x2, 0x77, 9, 0, 0, 0, 1])),
                Version::Tls10,
            )
            .redirected(&hello6(v6([0x2001, 0x2, 0x78, 0, 0, 0, 0, 1])), Version::Tls10),
    );
    rows.push(
        redirect("redirect: the global budget caps every source together")
            .budget(2, 5)
            .redirected(&hello(3, 1, &tls10), Version::Tls10)
            .redirected(&hello(4, 1, &tls10), Version::Tls10)
            .rejected_not_redirected(&hello(5, 1, &tls10), Version::Tls10),
    );
    rows.push(
        redirect("redirect: a budget of 0 rejects every legacy hello")
            .budget(0, 0)
            .rejected_not_redirected(&hello(6, 1, &tls10), Version::Tls10),
    );
    rows.push(
        redirect("redirect: SSLv3 and SSLv2-format hellos are rejected, whatever the budget")
            .rejected_not_redirected(&hello(7, 1, &sslv3_hello()), Version::Sslv3)
            .rejected_not_redirected(&hello(7, 2, &sslv2_hello()), Version::Sslv2),
    );
    let modern = hello(8, 1, &tls13);
    rows.push(
        redirect("redirect: TLS 1.3 passes, not redirected")
            .step(modern.build(), XDP_PASS, None)
            .counts(Version::Tls13, Verdict::Pass, 1)
            .outcome(Outcome::DecidedFirst, 1),
    );
    rows.push(
        Fixture::new("port modes: 8443 redirects while 443 rejects")
            .policy(Version::Tls12, Mode::Reject, &[443, 8443])
            .port_mode(8443, Mode::Redirect)
            .redirected(&Packet::tcp4(port(), 8443, &tls10).from(v4(9, 1)), Version::Tls10)
            .rejected_not_redirected(&hello(9, 2, &tls10), Version::Tls10),
    );
    // A legacy hello too big for one segment is decided, and redirected, from its second.
    let big10 = big_hello(0x0301, &[], 2000);
    let sport = port();
    let first = Packet::tcp4(sport, 443, &big10[..MSS]).seq(1000).from(v4(10, 1));
    let second = Packet::tcp4(sport, 443, &big10[MSS..]).seq(1000 + MSS as u32).from(v4(10, 1));
    let mut row = redirect("redirect: a hello over two segments is redirected from the second")
        .step(first.build(), XDP_PASS, None)
        .step(second.build(), XDP_PASS, None)
        .counts(Version::Tls10, Verdict::Redirect, 1)
        .outcome(Outcome::FollowNext, 1)
        .outcome(Outcome::DecidedLater, 1);
    row.redirected.push((first, true));
    rows.push(row);
}

/// The filter in front of the flow table may never hide a tracked flow: with thousands of
/// flows at once (so that many share a filter slot) and flows forgotten beside them, and once
/// the table has evicted flows. Each flow here is a 2000-byte TLS 1.0 hello split after 300
/// bytes under `drop`: a continuation the program fails to find passes as "not a hello"
/// instead of being dropped.
fn filter_rows(rows: &mut Vec<Fixture>) {
    const SPLIT: usize = 300;
    let hello = big_hello(0x0301, &[], 2000);
    // Flow `i` comes from its own address from 198.18.128.0 on (no other row uses them).
    let flow = |i: u32, bytes: &[u8]| {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i);
        Packet::tcp4(50000 + (i % 1000) as u16, 443, bytes).from(IpAddr::V4(addr))
    };
    let first = |i: u32| flow(i, &hello[..SPLIT]).seq(1000);
    let second = |i: u32| flow(i, &hello[SPLIT..]).seq(1000 + SPLIT as u32);
    let reset = |i: u32| flow(i, &[]).flags(RST | ACK).seq(1000 + SPLIT as u32);

    // Every flow is followed, then every other one is reset by its client (forgotten) while
    // the rest go on: flows forgotten beside flows kept, in the same filter slots.
    let many: u32 = 4000;
    let mut row = Fixture::new(format!(
        "filter: {many} hellos followed at once, every other one reset; the rest all found"
    ))
    .policy(Version::Tls12, Mode::Drop, &[443]);
    for i in 0..many {
        row = row.step(first(i).build(), XDP_PASS, None);
    }
    for i in (0..many).step_by(2) {
        row = row.step(reset(i).build(), XDP_PASS, None);
    }
    for i in 0..many {
        let kept = i % 2 == 1;
        row = row.step(second(i).build(), if kept { XDP_DROP } else { XDP_PASS }, None);
    }
    // The dropped flows' retransmissions: found as blocked flows.
    for i in (1..many).step_by(2) {
        row = row.step(second(i).build(), XDP_DROP, None);
    }
    rows.push(
        row.counts(Version::Tls10, Verdict::Drop, (many / 2) as u64)
            .outcome(Outcome::FollowNext, many as u64)
            .outcome(Outcome::NoPayload, (many / 2) as u64)
            .outcome(Outcome::NotHello, (many / 2) as u64)
            .outcome(Outcome::DecidedLater, (many / 2) as u64)
            .outcome(Outcome::FlowRepeat, (many / 2) as u64),
    );

    // More hellos than the table holds (its LRU evicts), then flows tracked in the full table:
    // each is found, and one forgotten beside them is not.
    let flood = outpost_common::maps::FLOW_CAPACITY + 4096;
    let fresh: u32 = 512;
    let mut row = Fixture::new(format!(
        "filter: after {flood} hellos evicted flows, {fresh} new flows all found"
    ))
    .policy(Version::Tls12, Mode::Drop, &[443]);
    for i in many..many + flood {
        row = row.step(first(i).build(), XDP_PASS, None);
    }
    let base = many + flood;
    for i in base..base + fresh {
        row = row.step(first(i).build(), XDP_PASS, None);
    }
    row = row.step(reset(base).build(), XDP_PASS, None);
    row = row.step(second(base).build(), XDP_PASS, None);
    for i in base + 1..base + fresh {
        row = row.step(second(i).build(), XDP_DROP, None);
        row = row.step(second(i).build(), XDP_DROP, None);
    }
    rows.push(
        row.counts(Version::Tls10, Verdict::Drop, (fresh - 1) as u64)
            .outcome(Outcome::FollowNext, (flood + fresh) as u64)
            .outcome(Outcome::NoPayload, 1)
            .outcome(Outcome::NotHello, 1)
            .outcome(Outcome::DecidedLater, (fresh - 1) as u64)
            .outcome(Outcome::FlowRepeat, (fresh - 1) as u64),
    );
}
