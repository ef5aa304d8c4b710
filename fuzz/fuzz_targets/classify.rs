//! The classifier on arbitrary bytes: it never panics, `feed`'s step budget is always enough,
//! and the bytes fed whole or cut in two (at a point derived from the bytes, so the fuzzer
//! moves it too) give the same answer. The parser is deterministic over the stream, so the
//! answers must be equal outright, not only when both are final.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_common::hello::{classify, HelloParser, Progress};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    assert_ne!(whole, Progress::OutOfSteps, "feed ran out of steps");

    // The cut comes from the last two bytes rather than a control prefix, so the seeds stay
    // real hellos.
    let tail = match data {
        [.., a, b] => u16::from_be_bytes([*a, *b]) as usize,
        _ => 0,
    };
    let cut = tail % (data.len() + 1);
    let mut p = HelloParser::new();
    let split = match p.feed(&data[..cut]) {
        Progress::NeedMore => p.feed(&data[cut..]),
        first => first,
    };
    assert_eq!(split, whole, "split at {cut} of {} bytes", data.len());
});
