//! The HTTP/1.1 request codec on arbitrary bytes: nothing panics; a parsed head has valid
//! framing within the limits and writes back to a head that parses to the same fields; its body
//! decodes the same fed whole and cut in two (at a point derived from the bytes, so the fuzzer
//! moves it too), stops at its end, and the pipelined requests after it parse in turn. The same
//! bytes also go through the response parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proxy::http::{
    is_hop_by_hop, parse_request, parse_response, remove_hop_by_hop, write_request_head, Body,
    BodyDecoder, Error, Limits, Request,
};

/// Small enough that inputs of libFuzzer's default length reach every limit.
const TIGHT: Limits = Limits { max_head_bytes: 512, max_headers: 8, max_body_bytes: 256 };

fuzz_target!(|data: &[u8]| {
    // The cut comes from the last two bytes rather than a control prefix, so the seeds stay
    // real requests.
    let tail = match data {
        [.., a, b] => u16::from_be_bytes([*a, *b]) as usize,
        _ => 0,
    };
    for limits in [Limits::default(), TIGHT] {
        requests(data, &limits, tail);
        response(data, &limits);
    }
});

/// Pipelined requests with their bodies, until the bytes run out or stop parsing.
fn requests(data: &[u8], limits: &Limits, tail: usize) {
    // Each head is at least a request line, so `rest` shrinks every round.
    let mut rest = data;
    while let Ok(Some((request, head))) = parse_request(rest, limits) {
        assert!(0 < head && head <= rest.len().min(limits.max_head_bytes));
        let body = request.body().expect("parse_request checks the framing");
        if let Body::Length(n) = body {
            assert!(n <= limits.max_body_bytes, "Content-Length {n} passed the limit");
        }
        assert_ne!(body, Body::UntilClose, "requests are never delimited by close");
        round_trip(&request);
        let _ = (request.path(), request.query(), request.keep_alive());
        let mut headers = request.headers.clone();
        remove_hop_by_hop(&mut headers);
        assert!(headers.iter().all(|h| !is_hop_by_hop(&h.name)));

        let input = &rest[head..];
        let whole = decode(body, limits, &[input]);
        let cut = tail % (input.len() + 1);
        let split = decode(body, limits, &[&input[..cut], &input[cut..]]);
        assert_eq!(split, whole, "cut at {cut} of {} body bytes", input.len());
        match whole {
            Ok((_, used, true)) => rest = &input[used..],
            _ => break,
        }
    }
}

fn response(data: &[u8], limits: &Limits) {
    if let Ok(Some((response, head))) = parse_response(data, limits) {
        assert!(0 < head && head <= data.len().min(limits.max_head_bytes));
        for method in ["GET", "HEAD", "CONNECT"] {
            if let Ok(body) = response.body(method) {
                let _ = decode(body, limits, &[&data[head..]]);
            }
        }
        let _ = response.keep_alive();
    }
}

/// Feeds `pieces` until the body is done: (body, bytes consumed, done).
fn decode(body: Body, limits: &Limits, pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), Error> {
    let mut decoder = BodyDecoder::new(body, limits.max_body_bytes);
    let (mut out, mut used) = (Vec::new(), 0);
    for piece in pieces {
        if decoder.is_done() {
            break;
        }
        let n = decoder.decode(piece, &mut out)?;
        assert!(n == piece.len() || decoder.is_done(), "stopped early: {n} of {}", piece.len());
        used += n;
    }
    assert_eq!(decoder.received(), out.len() as u64);
    assert!(decoder.received() <= limits.max_body_bytes);
    Ok((out, used, decoder.is_done()))
}

/// The head written back parses to the same request. Only HTTP/1.1 heads: the writer always
/// says HTTP/1.1, which turns a 1.0 head without `Host` into an invalid one.
fn round_trip(request: &Request<'_>) {
    if request.minor_version != 1 {
        return;
    }
    let mut out = Vec::new();
    write_request_head(&request.method, &request.target, &request.headers, &mut out);
    let unbounded =
        Limits { max_head_bytes: usize::MAX, max_headers: usize::MAX, max_body_bytes: u64::MAX };
    match parse_request(&out, &unbounded) {
        Ok(Some((again, n))) => {
            assert_eq!(n, out.len());
            assert_eq!((&again.method, &again.target), (&request.method, &request.target));
            assert_eq!(again.headers, request.headers);
        }
        other => panic!("written head {:?} does not parse: {other:?}", out.escape_ascii()),
    };
}
