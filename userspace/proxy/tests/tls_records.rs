//! The record layer after the handshake, end to end: tlslite-ng (tests/tls_records/client.py)
//! completes a real handshake, then writes records crafted with the negotiated keys, and the
//! answer is compared with what RFC 8446 (RFC 5246 for TLS 1.2) asks and what rustls' own record
//! layer does. The edge (`outpost_proxy::run` in-process, on each I/O backend) opens
//! and seals those records itself (`records.rs`); rustls' buffered `ServerConnection`, run on
//! another loopback port by this test, is the reference.
//!
//! Every case runs on a connection of its own, and after one request and response, so its
//! records arrive in a read of their own; `fin_` cases send theirs in the same write as the
//! client's Finished. Each step of the client is bounded (5 s): a server that neither answers
//! nor closes shows as `timeout`.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{Arc, OnceLock},
    thread,
    time::Duration,
};

use outpost_api::{erase, BuildEnv, Built, Flow, Handler, Reply, RouteFactory, RouteSpec, Session};
use outpost_proxy::{config::TlsConfig, io::Backend, Registry, RunOptions};
use outpost_testkit::{python, run_client, wait_for_admin, InProcessConfig, TempDir};

/// One crafted exchange and what should come of it.
struct Case {
    /// The driver's case (client.py's `CASES`).
    name: &'static str,
    /// What it sends.
    what: &'static str,
    /// The edge's answer.
    edge: &'static str,
    /// rustls' answer, where it is the same; otherwise what rustls does and why the edge
    /// differs.
    rustls: Rustls,
}

enum Rustls {
    Same,
    Differs(&'static str, &'static str),
}

use Rustls::*;

const UNEXPECTED_MESSAGE: &str = "alert:10";
const BAD_RECORD_MAC: &str = "alert:20";
const RECORD_OVERFLOW: &str = "alert:22";
const ILLEGAL_PARAMETER: &str = "alert:47";
const DECODE_ERROR: &str = "alert:50";

const TLS13: &[Case] = &[
    Case { name: "get", what: "a request", edge: "response", rustls: Same },
    Case {
        name: "ku_twice",
        what: "two KeyUpdates in one record (a key change must end its record)",
        edge: UNEXPECTED_MESSAGE,
        rustls: Same,
    },
    Case {
        name: "ku_then_more",
        what: "a KeyUpdate and the first byte of another message in one record",
        edge: UNEXPECTED_MESSAGE,
        rustls: Same,
    },
    Case {
        name: "ku_split_get",
        what: "a KeyUpdate split over two records, then a request under the new key",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "ku_requested_get",
        what: "a KeyUpdate asking for ours, then a request (ours comes before the response)",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "ku_bad_request",
        what: "a KeyUpdate with request_update 2",
        edge: ILLEGAL_PARAMETER,
        rustls: Same,
    },
    Case { name: "ku_long", what: "a KeyUpdate of length 2", edge: DECODE_ERROR, rustls: Same },
    Case {
        name: "ku_interleaved",
        what: "the first 2 bytes of a KeyUpdate, then application data",
        edge: UNEXPECTED_MESSAGE,
        // RFC 8446 §5.1 forbids it without naming an alert; rustls closes without one.
        rustls: Differs("eof", "rustls fails without an alert (PeerMisbehaved)"),
    },
    Case {
        name: "finished_again",
        what: "a handshake message other than KeyUpdate (a second Finished)",
        edge: UNEXPECTED_MESSAGE,
        rustls: Same,
    },
    Case {
        name: "overflow_ciphertext13",
        what: "a record of 2^14 + 257 bytes (padding)",
        edge: RECORD_OVERFLOW,
        rustls: Same,
    },
    Case {
        name: "overflow_inner13",
        what: "inner plaintext of 2^14 + 2 bytes, padding included",
        edge: RECORD_OVERFLOW,
        rustls: Same,
    },
    Case {
        name: "max_inner13_get",
        what: "a request padded to the largest inner plaintext, 2^14 + 1",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "warning13",
        what: "bad_certificate at warning level",
        edge: DECODE_ERROR,
        rustls: Same,
    },
    Case {
        name: "user_canceled_get",
        what: "user_canceled at warning level, then a request",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "fatal",
        what: "a fatal handshake_failure alert (closed, not answered)",
        edge: "eof",
        rustls: Same,
    },
    Case {
        name: "unknown_level",
        what: "an alert of level 3",
        edge: ILLEGAL_PARAMETER,
        rustls: Same,
    },
    Case { name: "close_notify", what: "close_notify", edge: "closed", rustls: Same },
    Case {
        name: "alert_three_bytes",
        what: "an alert record of 3 bytes",
        edge: DECODE_ERROR,
        rustls: Same,
    },
    Case {
        name: "short",
        what: "a record of 10 bytes, shorter than its tag",
        edge: BAD_RECORD_MAC,
        rustls: Same,
    },
    Case {
        name: "fin_get",
        what: "a request in the same write as the Finished",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "fin_ku_twice",
        what: "two KeyUpdates in one record, with the Finished",
        edge: UNEXPECTED_MESSAGE,
        rustls: Same,
    },
    Case {
        name: "fin_ku_split_get",
        what: "a split KeyUpdate and a request, with the Finished",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "fin_ku_interleaved",
        what: "part of a KeyUpdate and application data, with the Finished",
        edge: UNEXPECTED_MESSAGE,
        rustls: Differs("eof", "rustls fails without an alert (PeerMisbehaved)"),
    },
    Case {
        name: "fin_warning13",
        what: "a TLS 1.3 warning alert, with the Finished",
        edge: DECODE_ERROR,
        rustls: Same,
    },
    Case { name: "fin_fatal", what: "a fatal alert, with the Finished", edge: "eof", rustls: Same },
];

const TLS12: &[Case] = &[
    Case { name: "get", what: "a request", edge: "response", rustls: Same },
    Case {
        name: "short",
        what: "a record of 10 bytes, shorter than its explicit nonce and tag",
        edge: BAD_RECORD_MAC,
        rustls: Same,
    },
    Case {
        name: "warning12_get",
        what: "no_renegotiation at warning level (ignored), then a request",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "fatal",
        what: "a fatal handshake_failure alert (closed, not answered)",
        edge: "eof",
        rustls: Same,
    },
    Case {
        name: "unknown_level",
        what: "an alert of level 3",
        edge: ILLEGAL_PARAMETER,
        rustls: Same,
    },
    Case { name: "close_notify", what: "close_notify", edge: "closed", rustls: Same },
    Case {
        name: "overflow_plain12",
        what: "a record of 2^14 + 1 bytes of plaintext",
        edge: RECORD_OVERFLOW,
        rustls: Same,
    },
    Case {
        name: "overflow_ciphertext12",
        what: "a record header announcing 2^14 + 2049 bytes",
        edge: RECORD_OVERFLOW,
        // RFC 5246 §6.2.3 names record_overflow; rustls refuses such a header as malformed.
        rustls: Differs(DECODE_ERROR, "rustls answers decode_error"),
    },
    Case {
        name: "fin_get",
        what: "a request right after the Finished, before the server's (False Start)",
        edge: "response",
        rustls: Same,
    },
    Case {
        name: "fin_short",
        what: "a record shorter than its tag right after the Finished",
        edge: BAD_RECORD_MAC,
        rustls: Same,
    },
    Case {
        name: "fin_overflow_ciphertext12",
        what: "a header announcing 2^14 + 2049 bytes right after the Finished",
        edge: RECORD_OVERFLOW,
        // The edge's answer, not rustls': the record after the Finished is the edge's.
        rustls: Differs(DECODE_ERROR, "rustls answers decode_error"),
    },
    Case {
        name: "fin_fatal",
        what: "a fatal alert right after the Finished",
        edge: "eof",
        rustls: Same,
    },
];

/// Answers every request with a small page, at once.
struct Page;

impl Handler for Page {
    type Ctx = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, _: &mut Session<'_>, _: &mut ()) -> outpost_api::Result<Flow> {
        Ok(Flow::Respond(Reply::new(200, "text/plain", "ok\n")))
    }
}

struct OkFactory;

impl RouteFactory for OkFactory {
    fn name(&self) -> &'static str {
        "ok"
    }
    fn build(&self, _: &RouteSpec<'_>, _: &BuildEnv) -> anyhow::Result<Built> {
        Ok(Built { handler: erase("ok", Page), background: Vec::new() })
    }
}

/// The I/O backends the edge runs on: each reads (and so splits records) its own way.
const BACKENDS: [Backend; 3] = [Backend::Uring, Backend::Epoll, Backend::Compio];

/// The edge on `io`, once per test binary: `outpost_proxy::run` with one worker and a route to
/// [`Page`]. It is never stopped: the process ends with the tests.
fn edge(io: Backend) -> u16 {
    static EDGES: [OnceLock<u16>; BACKENDS.len()] = [const { OnceLock::new() }; BACKENDS.len()];
    let i = BACKENDS.iter().position(|b| *b == io).expect("a backend of BACKENDS");
    *EDGES[i].get_or_init(|| {
        let dir = TempDir::new("records");
        let InProcessConfig { path: config, https, admin } =
            InProcessConfig::write(&dir, "[[routes]]\nhandler = \"ok\"\n");
        thread::spawn(move || {
            let _dir = dir;
            let options = RunOptions {
                config: Some(config),
                io: Some(io),
                registry: Registry::new().route(OkFactory),
                ..Default::default()
            };
            // The edge runs until the process ends; an early end is shown here.
            if let Err(e) = outpost_proxy::run(options) {
                eprintln!("the edge on {io:?} stopped: {e:#}");
            }
        });
        wait_for_admin(admin);
        https
    })
}

/// rustls' own record layer for comparison, once per test binary: a buffered
/// `ServerConnection` with the edge's configuration, a thread per connection, answering each
/// request with a small response and failing as rustls fails (its alert, if any, then a close).
fn reference() -> u16 {
    static REFERENCE: OnceLock<u16> = OnceLock::new();
    *REFERENCE.get_or_init(|| {
        let dir = TempDir::new("records-rustls");
        let tls = TlsConfig { certs: vec![], self_signed_names: vec![] };
        let config = outpost_proxy::tls::server_config(&tls, &dir.0, false).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            let _dir = dir;
            for tcp in listener.incoming() {
                let config = config.clone();
                thread::spawn(move || serve_rustls(tcp.unwrap(), config));
            }
        });
        port
    })
}

fn serve_rustls(mut tcp: TcpStream, config: Arc<rustls::ServerConfig>) {
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    let mut request = Vec::new();
    loop {
        match conn.read_tls(&mut tcp) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let state = conn.process_new_packets();
        let mut plain = [0; 4096];
        while let Ok(n @ 1..) = conn.reader().read(&mut plain) {
            request.extend_from_slice(&plain[..n]);
        }
        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            request.drain(..end + 4);
            conn.writer().write_all(RESPONSE).unwrap();
        }
        let closed = match &state {
            Ok(s) if s.peer_has_closed() => {
                conn.send_close_notify();
                true
            }
            Ok(_) => false,
            Err(_) => true,
        };
        while conn.wants_write() {
            if conn.write_tls(&mut tcp).is_err() {
                return;
            }
        }
        if closed {
            // As the edge does: FIN, then what the client still sends is read and dropped, so
            // that unread bytes do not turn the close into a reset that loses the alert.
            let _ = tcp.shutdown(std::net::Shutdown::Write);
            let _ = std::io::copy(&mut tcp, &mut std::io::sink());
            return;
        }
    }
}

/// Runs `cases` against `port` with tlslite-ng: each case's outcome, in order.
fn run(port: u16, version: &str, cipher: &str, cases: &[&str]) -> Vec<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_records/client.py");
    let port = port.to_string();
    let mut cmd = Command::new(python());
    cmd.arg(&script).args(["--port", &port, "--version", version, "--cipher", cipher]).args(cases);
    // Each case is bounded by the client's own timeouts; this only catches a stuck driver.
    let out = run_client(&mut cmd, Duration::from_secs(30 + 15 * cases.len() as u64));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(
        got.len(),
        cases.len(),
        "the driver reported {} of {} cases ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        got.len(),
        cases.len(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    got
}

/// Runs the table against the edge on each backend and against rustls; panics with every case
/// that differs from what it should be.
fn check(version: &str, cipher: &str, table: &[&Case]) {
    let names: Vec<&str> = table.iter().map(|c| c.name).collect();
    let edges: Vec<_> = BACKENDS
        .iter()
        .map(|&io| {
            let port = edge(io);
            let (version, cipher, names) = (version.to_owned(), cipher.to_owned(), names.clone());
            (io, thread::spawn(move || run(port, &version, &cipher, &names)))
        })
        .collect();
    let rustls = run(reference(), version, cipher, &names);
    let mut wrong = Vec::new();
    for (io, edge) in edges {
        for (case, (_, at_edge)) in table.iter().zip(&edge.join().unwrap()) {
            if at_edge != case.edge {
                wrong.push(format!(
                    "edge ({io:?}), {}: {}: got {at_edge}, want {}",
                    case.name, case.what, case.edge
                ));
            }
        }
    }
    for (case, (_, at_rustls)) in table.iter().zip(&rustls) {
        let (want, note) = match case.rustls {
            Same => (case.edge, ""),
            Differs(want, why) => (want, why),
        };
        if at_rustls != want {
            wrong.push(format!(
                "rustls, {}: {}: got {at_rustls}, want {want} {note}",
                case.name, case.what
            ));
        }
    }
    assert!(wrong.is_empty(), "TLS {version} {cipher}:\n{}", wrong.join("\n"));
}

#[test]
fn tls13_records_aes128gcm() {
    check("1.3", "aes128gcm", &TLS13.iter().collect::<Vec<_>>());
}

#[test]
fn tls12_records_aes128gcm() {
    check("1.2", "aes128gcm", &TLS12.iter().collect::<Vec<_>>());
}

/// The other AEADs and nonce schemes (ChaCha20's nonce is implicit in TLS 1.2 too), a few
/// cases each.
#[test]
fn tls12_and_tls13_records_other_ciphers() {
    let few = |table: &'static [Case], names: &[&str]| -> Vec<&'static Case> {
        table.iter().filter(|c| names.contains(&c.name)).collect()
    };
    for cipher in ["chacha20-poly1305", "aes256gcm"] {
        check("1.2", cipher, &few(TLS12, &["get", "short", "fin_get", "overflow_plain12"]));
        check(
            "1.3",
            cipher,
            &few(TLS13, &["get", "ku_split_get", "overflow_inner13", "fin_ku_twice"]),
        );
    }
}
