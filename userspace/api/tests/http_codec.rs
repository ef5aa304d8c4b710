//! The HTTP/1.1 codec against real captures (`src/http/testdata`: curl 7.88 and wget 1.21
//! talking to a listener that recorded the bytes) and crafted messages: every framing rule,
//! every limit, every split of a chunked body, round trips, and random inputs that must never
//! panic. Failures print the input, escaped.

use std::panic::{catch_unwind, AssertUnwindSafe};

use outpost_api::http::{
    encode_chunk, encode_last_chunk, is_hop_by_hop, normalise, parse_request, parse_response,
    reason, remove_hop_by_hop, write_request_head, write_response_head, Body, BodyDecoder, Error,
    Header, Limits, Request, Response, Rules,
};
use outpost_testkit::rng::XorShift;

const CURL_GET: &[u8] = include_bytes!("../src/http/testdata/curl-get.bin");
const WGET_GET: &[u8] = include_bytes!("../src/http/testdata/wget-get.bin");
const CURL_POST_FORM: &[u8] = include_bytes!("../src/http/testdata/curl-post-form.bin");
/// `curl -H 'Transfer-Encoding: chunked' --data-binary @file`: one chunk.
const CURL_POST_CHUNKED: &[u8] = include_bytes!("../src/http/testdata/curl-post-chunked.bin");
/// `curl -T -` from a pipe written in three bursts: three chunks.
const CURL_PUT_CHUNKED: &[u8] = include_bytes!("../src/http/testdata/curl-put-chunked-3.bin");

const CAPTURES: [&[u8]; 5] =
    [CURL_GET, WGET_GET, CURL_POST_FORM, CURL_POST_CHUNKED, CURL_PUT_CHUNKED];

/// Extensions, uppercase hex, a zero-padded size and trailers: the parts curl does not send.
const CRAFTED_CHUNKED: &[u8] = b"5;name=value\r\nhello\r\nA ; a=\"b;c\"\r\n, world!!!\r\n\
    000\r\nExpires: never\r\nX-Checksum: 1234\r\n\r\n";
const CRAFTED_CHUNKED_DATA: &[u8] = b"hello, world!!!";

fn show(input: &[u8]) -> String {
    format!("\"{}\"", input.escape_ascii())
}

fn parse(input: &[u8]) -> Result<Option<(Request<'_>, usize)>, Error> {
    parse_request(input, &Limits::default())
}

fn parse_ok(input: &[u8]) -> (Request<'_>, usize) {
    match parse(input) {
        Ok(Some(parsed)) => parsed,
        other => panic!("expected a request head in {}, got {other:?}", show(input)),
    }
}

fn parse_response_ok(input: &[u8]) -> (Response<'_>, usize) {
    match parse_response(input, &Limits::default()) {
        Ok(Some(parsed)) => parsed,
        other => panic!("expected a response head in {}, got {other:?}", show(input)),
    }
}

/// Feeds `pieces` in order until the body is done; returns (body, bytes consumed).
fn decode_pieces(body: Body, max: u64, pieces: &[&[u8]]) -> Result<(Vec<u8>, usize), Error> {
    let mut decoder = BodyDecoder::new(body, max);
    let (mut out, mut consumed) = (Vec::new(), 0);
    for piece in pieces {
        if decoder.is_done() {
            break;
        }
        let n = decoder.decode(piece, &mut out)?;
        assert!(n <= piece.len(), "consumed {n} of piece {}", show(piece));
        assert!(n == piece.len() || decoder.is_done(), "stopped early in {}", show(piece));
        consumed += n;
    }
    assert_eq!(decoder.received(), out.len() as u64);
    Ok((out, consumed))
}

fn decode_whole(body: Body, max: u64, input: &[u8]) -> Result<(Vec<u8>, usize), Error> {
    decode_pieces(body, max, &[input])
}

/// Head and decoded body of a request that must parse.
fn request_and_body(input: &[u8]) -> (Request<'_>, Vec<u8>, usize) {
    let (request, head) = parse_ok(input);
    let body = request.body().unwrap_or_else(|e| panic!("{e} in {}", show(input)));
    let (data, used) = decode_whole(body, Limits::default().max_body_bytes, &input[head..])
        .unwrap_or_else(|e| panic!("{e} in {}", show(input)));
    (request, data, head + used)
}

#[test]
fn real_captures_parse() {
    let (get, n) = parse_ok(CURL_GET);
    assert_eq!(n, CURL_GET.len());
    assert_eq!((get.method.as_str(), get.target.as_str()), ("GET", "/search?q=outpost&page=2"));
    assert_eq!(get.minor_version, 1);
    assert_eq!(host(&get), Some("example.test".into()));
    assert_eq!(get.header("user-agent"), Some(&b"curl/7.88.1"[..]));
    assert_eq!(get.header("COOKIE"), Some(&b"session=abc123; theme=dark"[..]));
    assert_eq!(get.headers.len(), 6);
    assert_eq!(get.body(), Ok(Body::Empty));
    assert!(get.keep_alive());

    let (wget, _) = parse_ok(WGET_GET);
    assert_eq!(host(&wget), Some("127.0.0.1".into()));
    assert!(wget.keep_alive(), "Connection: Keep-Alive");

    let (form, data, used) = request_and_body(CURL_POST_FORM);
    assert_eq!(form.body(), Ok(Body::Length(23)));
    assert_eq!(data, b"name=outpost&kind=proxy");
    assert_eq!(used, CURL_POST_FORM.len());

    let (post, data, used) = request_and_body(CURL_POST_CHUNKED);
    assert_eq!(post.body(), Ok(Body::Chunked));
    assert_eq!(data, b"first line of the upload\nsecond line, a bit longer than the first one\n");
    assert_eq!(used, CURL_POST_CHUNKED.len());

    let (put, data, used) = request_and_body(CURL_PUT_CHUNKED);
    assert_eq!((put.method.as_str(), host(&put)), ("PUT", Some("api.example.test".into())));
    let want = b"{\"id\": 1, \"name\": \"edge\"}\n{\"id\": 2, \"name\": \"origin\"}\n{\"id\": 3}\n";
    assert_eq!(data, want);
    assert_eq!(used, CURL_PUT_CHUNKED.len());
}

/// `POST / HTTP/1.1`, `Host: a`, the `fields` (each ending in CRLF), the empty line.
fn post(fields: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n")
}

/// Rules that keep the proxy and the origin agreeing on message boundaries.
#[test]
fn smuggling_rules() {
    let m = Error::Malformed;
    let not_decimal = m("Content-Length is not a decimal number");
    let both = m("both Content-Length and Transfer-Encoding");
    let unsupported = Error::UnsupportedTransferCoding;
    let name = m("invalid header name");
    let value = m("invalid header value");
    let cases: Vec<(String, Error)> = vec![
        (post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), both.clone()),
        (post("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"), both),
        (
            post("Content-Length: 5\r\nContent-Length: 6\r\n"),
            m("conflicting Content-Length values"),
        ),
        (post("Content-Length: 5, 6\r\n"), m("conflicting Content-Length values")),
        (post("Content-Length: +5\r\n"), not_decimal.clone()),
        (post("Content-Length: -5\r\n"), not_decimal.clone()),
        (post("Content-Length: 0x5\r\n"), not_decimal.clone()),
        (post("Content-Length: 5.0\r\n"), not_decimal.clone()),
        (post("Content-Length: 5 5\r\n"), not_decimal.clone()),
        (post("Content-Length: 5,\r\n"), not_decimal.clone()),
        (post("Content-Length:\r\n"), not_decimal),
        (post("Transfer-Encoding: gzip\r\n"), unsupported.clone()),
        (post("Transfer-Encoding: gzip, chunked\r\n"), unsupported.clone()),
        (post("Transfer-Encoding: chunked, gzip\r\n"), unsupported.clone()),
        (post("Transfer-Encoding: identity\r\n"), unsupported.clone()),
        (post("Transfer-Encoding: xchunked\r\n"), unsupported.clone()),
        (post("Transfer-Encoding: chunked;x=1\r\n"), unsupported.clone()),
        (post("Transfer-Encoding: \"chunked\"\r\n"), unsupported.clone()),
        (post("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"), unsupported),
        (post("Transfer-Encoding: chunked, chunked\r\n"), m("chunked applied more than once")),
        (post("Transfer-Encoding: ,chunked\r\n"), m("empty transfer coding")),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            m("Transfer-Encoding in an HTTP/1.0 message"),
        ),
        // obs-fold, in a plain field and hiding a coding.
        (post("X-A: 1\r\n 2\r\n"), name.clone()),
        (post("Transfer-Encoding:\r\n\tchunked\r\n"), name.clone()),
        (post("Transfer-Encoding : chunked\r\n"), name.clone()),
        (post("X A: 1\r\n"), name),
        (post("X-A: 1\0\r\n"), value.clone()),
        (post("X-A: 1\r2\r\n"), value.clone()),
        (post("X-A: \x7f\r\n"), value),
        ("GET / HTTP/1.1\r\n\r\n".into(), m("missing Host")),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n".into(), m("more than one Host")),
        ("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n".into(), m("more than one Host")),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n".into(), m("invalid Host")),
        ("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n".into(), m("invalid Host")),
        ("GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n".into(), m("invalid Host")),
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n".into(), m("invalid HTTP version")),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n".into(), m("invalid HTTP version")),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n".into(), m("invalid method or request target")),
        ("GET / HTTP/1.1\rHost: a\r\n\r\n".into(), m("invalid line ending")),
        ("GET a HTTP/1.1\r\nHost: a\r\n\r\n".into(), m("invalid request target")),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n".into(), m("asterisk-form target outside OPTIONS")),
        ("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n".into(), m("CONNECT target is not host:port")),
        (post("Content-Length: 10485761\r\n"), Error::BodyTooLarge),
        (post("Content-Length: 99999999999999999999\r\n"), Error::BodyTooLarge),
    ];
    for (input, want) in cases {
        let got = parse(input.as_bytes()).map(|r| r.map(|(req, n)| (req.body(), n)));
        assert_eq!(got, Err(want), "input {}", show(input.as_bytes()));
    }
}

/// What the rules above still let through, with the framing each gets.
#[test]
fn accepted_variants() {
    let cases: Vec<(String, Body)> = vec![
        (post("Content-Length: 5, 5\r\n"), Body::Length(5)),
        (post("Content-Length: 5\r\ncontent-length: 05\r\n"), Body::Length(5)),
        (post("Content-Length: 10485760\r\n"), Body::Length(10 << 20)),
        (post("Transfer-Encoding: Chunked \r\n"), Body::Chunked),
        ("POST / HTTP/1.0\r\nContent-Length: 1\r\n\r\n".into(), Body::Length(1)),
        ("GET / HTTP/1.0\r\n\r\n".into(), Body::Empty),
        ("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".into(), Body::Empty),
        ("GET / HTTP/1.1\nHost: a\n\n".into(), Body::Empty),
        ("GET /\u{e9} HTTP/1.1\r\nHost: a\r\nX-Utf8: caf\u{e9}\r\n\r\n".into(), Body::Empty),
        ("GET http://a.example/x HTTP/1.1\r\nHost:\r\n\r\n".into(), Body::Empty),
        ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".into(), Body::Empty),
        ("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n".into(), Body::Empty),
    ];
    for (input, want) in cases {
        let (request, n) = parse_ok(input.as_bytes());
        assert_eq!(n, input.len(), "input {}", show(input.as_bytes()));
        assert_eq!(request.body(), Ok(want), "input {}", show(input.as_bytes()));
    }
}

#[test]
fn error_statuses() {
    let cases = [
        (Error::HeadTooLarge, 431),
        (Error::TooManyHeaders, 431),
        (Error::Malformed("x"), 400),
        (Error::BodyTooLarge, 413),
        (Error::UnsupportedTransferCoding, 501),
        (Error::UnexpectedEof, 400),
    ];
    for (error, status) in cases {
        assert_eq!(error.status(), status, "{error:?}");
        assert!(!error.to_string().is_empty(), "{error:?}");
        assert!(!reason(status).is_empty(), "{status}");
    }
    assert_eq!(Error::Malformed("missing Host").to_string(), "malformed message: missing Host");
}

fn head_with_padding(total: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    let pad = total - head.len() - 4;
    head.resize(head.len() + pad, b'p');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), total);
    head
}

#[test]
fn head_limit() {
    let huge = head_with_padding(20_000);
    let error = parse(&huge).expect_err("20 kB head");
    assert_eq!((error.clone(), error.status()), (Error::HeadTooLarge, 431));

    let limits = Limits { max_head_bytes: 1024, ..Limits::default() };
    let at_limit = head_with_padding(1024);
    assert!(matches!(parse_request(&at_limit, &limits), Ok(Some((_, 1024)))));
    let over = head_with_padding(1025);
    // Arriving in pieces: incomplete until the buffer reaches the limit, then too large.
    for n in 0..=over.len() {
        let got = parse_request(&over[..n], &limits).map(|r| r.map(|(_, n)| n));
        let want = if n < 1024 { Ok(None) } else { Err(Error::HeadTooLarge) };
        assert_eq!(got, want, "prefix {n}: {}", show(&over[..n]));
    }
    // Endless empty lines before a request are head bytes too.
    assert_eq!(
        parse_request(&[b'\n'; 1024], &limits).map(|r| r.is_some()),
        Err(Error::HeadTooLarge)
    );
}

#[test]
fn header_count_limit() {
    let head = |fields: usize| {
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 1..fields {
            head.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    };
    let at_limit = head(100);
    assert_eq!(parse_ok(&at_limit).0.headers.len(), 100);
    let over = head(101);
    let error = parse(&over).expect_err("101 fields");
    assert_eq!((error.clone(), error.status()), (Error::TooManyHeaders, 431));
    // Found as soon as the 101st field line is complete.
    let cut = over.len() - 2;
    assert_eq!(parse(&over[..cut]).map(|r| r.is_some()), Err(Error::TooManyHeaders));
    assert_eq!(parse(&over[..cut - 1]).map(|r| r.is_some()), Ok(false));

    let tight = Limits { max_headers: 1, ..Limits::default() };
    assert_eq!(parse_request(&head(2), &tight).map(|r| r.is_some()), Err(Error::TooManyHeaders));
    // A limit past anything a head can hold allocates by the head, not by the limit.
    let loose = Limits { max_headers: usize::MAX, ..Limits::default() };
    assert!(matches!(parse_request(&over, &loose), Ok(Some(_))));
}

#[test]
fn pipelined_requests() {
    let mut two = CURL_GET.to_vec();
    two.extend_from_slice(WGET_GET);
    let (first, n) = parse_ok(&two);
    assert_eq!((first.target.as_str(), n), ("/search?q=outpost&page=2", CURL_GET.len()));
    let (second, m) = parse_ok(&two[n..]);
    assert_eq!((second.target.as_str(), n + m), ("/index.html", two.len()));

    // Bodies in between: the decoder stops where the body ends.
    for first in [CURL_POST_FORM, CURL_POST_CHUNKED, CURL_PUT_CHUNKED] {
        let mut stream = first.to_vec();
        stream.extend_from_slice(WGET_GET);
        let (_, _, used) = request_and_body(&stream);
        assert_eq!(used, first.len(), "stream {}", show(&stream));
        let (next, _) = parse_ok(&stream[used..]);
        assert_eq!(next.target, "/index.html", "stream {}", show(&stream));
    }
}

/// Every way the network could cut a chunked body: one byte at a time, all 2-way and 3-way
/// splits, each time followed by the next request's bytes, which must not be consumed.
#[test]
fn chunked_body_under_every_split() {
    let (_, head) = parse_ok(CURL_PUT_CHUNKED);
    let bodies: [(&[u8], Vec<u8>); 2] = [
        (&CURL_PUT_CHUNKED[head..], request_and_body(CURL_PUT_CHUNKED).1),
        (CRAFTED_CHUNKED, CRAFTED_CHUNKED_DATA.to_vec()),
    ];
    for (body, want) in &bodies {
        let mut stream = body.to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let check = |pieces: &[&[u8]], what: &str| {
            let got = decode_pieces(Body::Chunked, 1 << 20, pieces);
            assert_eq!(got, Ok((want.clone(), body.len())), "{what} of {}", show(&stream));
        };
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        check(&bytes, "byte at a time");
        for i in 0..=stream.len() {
            check(&[&stream[..i], &stream[i..]], &format!("split at {i}"));
            for j in i..=stream.len() {
                let pieces = [&stream[..i], &stream[i..j], &stream[j..]];
                check(&pieces, &format!("split at {i} and {j}"));
            }
        }
    }
}

#[test]
fn length_body_under_every_split() {
    let (request, head) = parse_ok(CURL_POST_FORM);
    let mut stream = CURL_POST_FORM[head..].to_vec();
    stream.extend_from_slice(b"GET");
    let body = request.body().expect("framing");
    for i in 0..=stream.len() {
        let got = decode_pieces(body, 1 << 20, &[&stream[..i], &stream[i..]]);
        assert_eq!(got, Ok((b"name=outpost&kind=proxy".to_vec(), 23)), "split at {i}");
    }
}

#[test]
fn bodies_over_the_limit() {
    let input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
    let limits = Limits { max_body_bytes: 10, ..Limits::default() };
    assert_eq!(parse_request(input, &limits).map(|r| r.is_some()), Err(Error::BodyTooLarge));
    assert_eq!(Error::BodyTooLarge.status(), 413);

    // Decoder side: declared length, chunk sizes adding up, until-close bytes.
    assert_eq!(decode_whole(Body::Length(11), 10, b""), Err(Error::BodyTooLarge));
    assert_eq!(decode_whole(Body::Length(10), 10, b"0123456789"), Ok((b"0123456789".to_vec(), 10)));
    let (_, head) = parse_ok(CURL_PUT_CHUNKED);
    let chunked = &CURL_PUT_CHUNKED[head..];
    assert_eq!(decode_whole(Body::Chunked, 63, chunked), Err(Error::BodyTooLarge));
    assert!(decode_whole(Body::Chunked, 64, chunked).is_ok());
    // The size alone is refused, before any of the chunk's data arrives.
    assert_eq!(decode_whole(Body::Chunked, 10, b"b\r\n"), Err(Error::BodyTooLarge));
    assert_eq!(decode_whole(Body::UntilClose, 10, &[0; 11]), Err(Error::BodyTooLarge));
    let mut decoder = BodyDecoder::new(Body::UntilClose, 10);
    let mut out = Vec::new();
    for _ in 0..10 {
        assert_eq!(decoder.decode(b"x", &mut out), Ok(1));
    }
    assert_eq!(decoder.decode(b"x", &mut out), Err(Error::BodyTooLarge));
}

#[test]
fn eof_handling() {
    let mut out = Vec::new();
    let mut cut_short = BodyDecoder::new(Body::Length(5), 100);
    assert_eq!(cut_short.decode(b"abc", &mut out), Ok(3));
    assert_eq!(cut_short.finish_at_eof(), Err(Error::UnexpectedEof));

    let mut chunked = BodyDecoder::new(Body::Chunked, 100);
    assert_eq!(chunked.decode(b"3\r\nabc\r\n0\r\n", &mut out), Ok(11));
    assert!(!chunked.is_done(), "the final CRLF is still missing");
    assert_eq!(chunked.finish_at_eof(), Err(Error::UnexpectedEof));

    let mut until_close = BodyDecoder::new(Body::UntilClose, 100);
    assert_eq!(until_close.decode(b"abc", &mut out), Ok(3));
    assert!(!until_close.is_done());
    assert_eq!(until_close.finish_at_eof(), Ok(()));
    assert!(until_close.is_done());
    assert_eq!(until_close.decode(b"more", &mut out), Ok(0));

    for body in [Body::Empty, Body::Length(0)] {
        let mut empty = BodyDecoder::new(body, 100);
        assert!(empty.is_done(), "{body:?}");
        assert_eq!(empty.decode(b"GET", &mut out), Ok(0), "{body:?}");
        assert_eq!(empty.finish_at_eof(), Ok(()), "{body:?}");
    }
}

#[test]
fn responses() {
    let cases: &[(&str, &str, Result<Body, Error>, bool)] = &[
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", Ok(Body::Length(5)), true),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", Ok(Body::Empty), true),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", Ok(Body::Chunked), true),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD", Ok(Body::Empty), true),
        ("HTTP/1.1 204 No Content\r\n\r\n", "DELETE", Ok(Body::Empty), true),
        ("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", "GET", Ok(Body::Empty), true),
        ("HTTP/1.1 100 Continue\r\n\r\n", "POST", Ok(Body::Empty), true),
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
            "GET",
            Ok(Body::Empty),
            true,
        ),
        ("HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT", Ok(Body::Empty), true),
        ("HTTP/1.1 407 Proxy Auth\r\n\r\n", "CONNECT", Ok(Body::UntilClose), true),
        ("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", "GET", Ok(Body::UntilClose), false),
        ("HTTP/1.0 200 OK\r\n\r\n", "GET", Ok(Body::UntilClose), false),
        (
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            "GET",
            Ok(Body::Length(0)),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET",
            Err(Error::UnsupportedTransferCoding),
            true,
        ),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "HEAD", Ok(Body::Empty), true),
        ("HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", "GET", Ok(Body::Length(0)), true),
    ];
    for (input, method, want, keep_alive) in cases {
        let (response, n) = parse_response_ok(input.as_bytes());
        let shown = show(input.as_bytes());
        assert_eq!(n, input.len(), "{shown}");
        assert_eq!(response.body(method), *want, "{method} then {shown}");
        assert_eq!(response.keep_alive(), *keep_alive, "{shown}");
    }
    let (response, _) = parse_response_ok(b"HTTP/1.1 404\r\nServer: x\r\n\r\n");
    assert_eq!((response.status, response.reason.as_str()), (404, ""));
    assert_eq!(response.header("server"), Some(&b"x"[..]));

    let bad: &[(&str, Error)] = &[
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            Error::Malformed("both Content-Length and Transfer-Encoding"),
        ),
        (
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Error::Malformed("conflicting Content-Length values"),
        ),
        (
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Error::Malformed("Transfer-Encoding in an HTTP/1.0 message"),
        ),
        ("HTTP/1.1 099 Odd\r\n\r\n", Error::Malformed("status code below 100")),
        ("HTTP/1.1 20 OK\r\n\r\n", Error::Malformed("invalid status line")),
        ("HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n", Error::Malformed("invalid header name")),
        ("HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n", Error::Malformed("invalid header name")),
    ];
    for (input, want) in bad {
        let got = parse_response(input.as_bytes(), &Limits::default()).map(|r| r.is_some());
        assert_eq!(got, Err(want.clone()), "input {}", show(input.as_bytes()));
    }

    let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    huge.resize(20_000, b'a');
    assert_eq!(
        parse_response(&huge, &Limits::default()).map(|r| r.is_some()),
        Err(Error::HeadTooLarge)
    );
    assert_eq!(parse_response(&huge[..1000], &Limits::default()).map(|r| r.is_some()), Ok(false));
}

#[test]
fn response_body_until_close() {
    let input = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of this, until the peer closes";
    let (response, head) = parse_response_ok(input);
    let body = response.body("GET").expect("framing");
    assert_eq!(body, Body::UntilClose);
    let mut decoder = BodyDecoder::new(body, 1 << 20);
    let mut out = Vec::new();
    for piece in input[head..].chunks(7) {
        assert_eq!(decoder.decode(piece, &mut out), Ok(piece.len()));
    }
    assert!(!decoder.is_done());
    assert_eq!(decoder.finish_at_eof(), Ok(()));
    assert_eq!(out, b"all of this, until the peer closes");
}

#[test]
fn hop_by_hop() {
    for name in [
        "Connection",
        "keep-alive",
        "PROXY-CONNECTION",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "upgrade",
        "Proxy-Authenticate",
        "proxy-authorization",
    ] {
        assert!(is_hop_by_hop(name), "{name}");
    }
    for name in ["Host", "Content-Length", "Trailers", "X-Connection", ""] {
        assert!(!is_hop_by_hop(name), "{name}");
    }

    let h = Header::new;
    let mut headers = outpost_api::http::Headers::from([
        h("Host", "a"),
        h("Connection", "keep-alive, X-Drop-Me,  x-also ,"),
        h("Keep-Alive", "timeout=5"),
        h("X-Drop-Me", "1"),
        h("Accept", "*/*"),
        h("Transfer-Encoding", "chunked"),
        h("x-ALSO", "2"),
        h("Upgrade", "websocket"),
        h("TE", "trailers"),
        h("Connection", "Content-Length"),
        h("Content-Length", "3"),
        h("X-Keep", "3"),
        h("Proxy-Authorization", "Basic eA=="),
    ]);
    remove_hop_by_hop(&mut headers);
    let want = [h("Host", "a"), h("Accept", "*/*"), h("Content-Length", "3"), h("X-Keep", "3")];
    assert_eq!(headers.as_slice(), want);

    // Tokens that name only hop-by-hop fields (a browser's `keep-alive`), fields that are not
    // there, or the two that cannot be listed; then one that names a field that is there.
    let cases: [(&str, &[&str]); 5] = [
        ("keep-alive", &["Host", "Close", "Accept"]),
        ("Keep-Alive, Upgrade", &["Host", "Close", "Accept"]),
        ("keep-alive, x-absent, host", &["Host", "Close", "Accept"]),
        ("close", &["Host", "Accept"]),
        ("keep-alive, ACCEPT", &["Host", "Close"]),
    ];
    for (connection, kept) in cases {
        let mut headers = outpost_api::http::Headers::from([
            h("Host", "a"),
            h("Connection", connection),
            h("Close", "1"),
            h("Keep-Alive", "timeout=5"),
            h("Accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, kept, "Connection: {connection}");
    }
}

/// The host a request is for once normalised (as the core does before routing), or `None`
/// when it would be refused.
fn host(request: &Request<'_>) -> Option<String> {
    let mut r = request.clone();
    normalise(&mut r, &Rules::default()).ok()?;
    Some(r.authority.host.to_string())
}

#[test]
fn keep_alive_and_host() {
    let cases: &[(&str, bool, Option<&str>)] = &[
        ("GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", true, Some("a.example")),
        ("GET / HTTP/1.1\r\nHost: [::1]:443\r\nConnection: close\r\n\r\n", false, Some("[::1]")),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, Close\r\n\r\n", false, Some("a")),
        ("GET / HTTP/1.0\r\n\r\n", false, None),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: b\r\n\r\n", true, Some("b")),
        ("GET / HTTP/1.1\r\nHost:\r\n\r\n", true, None),
        ("GET http://c.example:81/ HTTP/1.1\r\nHost: d.example\r\n\r\n", true, Some("c.example")),
        ("GET / HTTP/1.1\r\nHost: E.Example.\r\n\r\n", true, Some("e.example")),
    ];
    for (input, keep_alive, host) in cases {
        let (request, _) = parse_ok(input.as_bytes());
        assert_eq!(request.keep_alive(), *keep_alive, "input {}", show(input.as_bytes()));
        let got = self::host(&request);
        assert_eq!(got.as_deref(), *host, "input {}", show(input.as_bytes()));
    }
}

/// Written heads parse back to the same values; curl's and wget's heads are already in the
/// canonical form, so they come back byte for byte.
#[test]
fn round_trip() {
    for capture in CAPTURES {
        let (request, head) = parse_ok(capture);
        let mut out = Vec::new();
        write_request_head(&request.method, &request.target, &request.headers, &mut out);
        let (again, n) = parse_ok(&out);
        assert_eq!(n, out.len(), "{}", show(&out));
        assert_eq!((again.method, again.target), (request.method, request.target));
        assert_eq!(again.headers, request.headers, "{}", show(&out));
        assert_eq!(out, &capture[..head], "rewritten {}", show(&out));
    }

    let headers = [
        Header::new("Content-Type", "text/plain"),
        Header::new("Transfer-Encoding", "chunked"),
        Header::new("X-Bytes", &b"caf\xe9"[..]),
    ];
    let mut out = Vec::new();
    write_response_head(201, reason(201), &headers, &mut out);
    let head_len = out.len();
    for piece in [&b"hello, "[..], b"", b"world"] {
        encode_chunk(piece, &mut out);
    }
    encode_last_chunk(&mut out);
    let (response, n) = parse_response_ok(&out);
    assert_eq!(n, head_len);
    assert_eq!((response.status, response.reason.as_str()), (201, "Created"));
    assert_eq!(response.headers.as_slice(), headers);
    let body = response.body("POST").expect("framing");
    assert_eq!(decode_whole(body, 100, &out[n..]), Ok((b"hello, world".to_vec(), out.len() - n)));
}

#[test]
fn encoded_chunks_decode() {
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200 {
        let mut data = Vec::new();
        let mut encoded = Vec::new();
        for _ in 0..rng.below(6) {
            let piece: Vec<u8> = (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect();
            encode_chunk(&piece, &mut encoded);
            data.extend_from_slice(&piece);
        }
        encode_last_chunk(&mut encoded);
        let cut = rng.below(encoded.len() + 1);
        let got = decode_pieces(Body::Chunked, 1 << 20, &[&encoded[..cut], &encoded[cut..]]);
        assert_eq!(got, Ok((data, encoded.len())), "cut at {cut} of {}", show(&encoded));
    }
}

/// Tokens that move a parser between states, spliced into valid requests.
const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"\0",
    b"\x7f",
    b"\xff",
    b"0",
    b"f",
    b"-",
    b"chunked",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Host: h\r\n",
    b"Connection: close\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"HTTP/1.0",
    b" HTTP/1.1\r\n",
];

fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(5) {
            0 if at < input.len() => input[at] = rng.next_u64() as u8,
            1 if at < input.len() => input[at] = INTERESTING[rng.below(INTERESTING.len())][0],
            2 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(at..at, token.iter().copied());
            }
            3 => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            _ => {
                let end = (at + rng.below(32)).min(input.len());
                let copy = input[at..end].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, copy);
            }
        }
    }
}

/// Everything the codec offers, on `input`; panics only through the invariant checks.
fn exercise(input: &[u8], rng: &mut XorShift) {
    let tight = Limits { max_head_bytes: 256, max_headers: 8, max_body_bytes: 64 };
    for limits in [Limits::default(), tight] {
        let parsed = parse_request(input, &limits);
        if let Ok(Some((request, head))) = &parsed {
            assert!(*head <= input.len().min(limits.max_head_bytes));
            let body = request.body().expect("parse_request checked the framing");
            let rest = &input[*head..];
            let whole = decode_whole(body, limits.max_body_bytes, rest);
            let bytes: Vec<&[u8]> = rest.chunks(1).collect();
            assert_eq!(decode_pieces(body, limits.max_body_bytes, &bytes), whole);
            // Any prefix of the head is an incomplete head.
            let cut = rng.below(*head);
            assert!(matches!(parse_request(&input[..cut], &limits), Ok(None)), "prefix {cut}");
            let _ = (host(request), request.keep_alive());
            let mut headers = request.headers.clone();
            remove_hop_by_hop(&mut headers);
            assert!(headers.iter().all(|h| !is_hop_by_hop(&h.name)), "{headers:?}");
            if request.minor_version == 1 {
                let mut out = Vec::new();
                write_request_head(&request.method, &request.target, &request.headers, &mut out);
                // CRLF and ": " can make the head longer than the one that passed the limit.
                let unbounded = Limits { max_head_bytes: usize::MAX, ..limits };
                let again = parse_request(&out, &unbounded).map(|r| r.map(|(r, n)| (r.headers, n)));
                let want = Ok(Some((request.headers.clone(), out.len())));
                assert_eq!(again, want, "rewritten {}", show(&out));
            }
        }
        if let Ok(Some((response, head))) = parse_response(input, &limits) {
            assert!(head <= input.len());
            if let Ok(body) = response.body("GET") {
                let _ = decode_whole(body, limits.max_body_bytes, &input[head..]);
            }
        }
    }
    let whole = decode_whole(Body::Chunked, 1 << 20, input);
    let cut = rng.below(input.len() + 1);
    assert_eq!(decode_pieces(Body::Chunked, 1 << 20, &[&input[..cut], &input[cut..]]), whole);
}

fn check_no_panic(input: &[u8], rng: &mut XorShift) {
    let result = catch_unwind(AssertUnwindSafe(|| exercise(input, rng)));
    assert!(result.is_ok(), "codec panicked on input {}", show(input));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
    for _ in 0..5_000 {
        // Half the time from a small alphabet, so framing bytes meet often.
        let alphabet = b"GET /HTP1.\r\n:0aZ;, \t";
        let small = rng.below(2) == 0;
        let input: Vec<u8> = (0..rng.below(200))
            .map(|_| if small { alphabet[rng.below(alphabet.len())] } else { rng.next_u64() as u8 })
            .collect();
        check_no_panic(&input, &mut rng);
    }
}

#[test]
fn mutated_requests_never_panic() {
    let mut rng = XorShift::new(0x0123_4567_89ab_cdef);
    let mut seeds: Vec<Vec<u8>> = CAPTURES.iter().map(|c| c.to_vec()).collect();
    let mut crafted = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    crafted.extend_from_slice(CRAFTED_CHUNKED);
    seeds.push(crafted);
    seeds.push(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
    );
    let mut parsed = 0;
    for i in 0..20_000 {
        let mut input = seeds[i % seeds.len()].clone();
        mutate(&mut rng, &mut input);
        check_no_panic(&input, &mut rng);
        parsed += usize::from(matches!(parse(&input), Ok(Some(_))));
    }
    // The mutations must leave enough valid heads for the body paths to be exercised.
    assert!(parsed > 2_000, "only {parsed} of 20000 mutated inputs parsed");
}
