//! The proxy's own TLS connection as the tokio `AsyncRead + AsyncWrite` the h2 crate runs over,
//! and the frame budgets h2 does not keep.
//!
//! The adapter: h2 polls; each poll drives one future of the split connection
//! ([`TlsReader::read`], [`TlsWriter::send`], halves borrowed from the driver's `TlsConn`), kept
//! across polls until it completes, so a completion-based read (io_uring) is never dropped half
//! way. Plaintext h2 writes is collected and sealed into TLS records when h2 flushes. What it
//! costs per read or flush: one type-erased future in the worker's pool of blocks
//! ([`Pooled`], no allocation once warm) and one copy of the plaintext (into h2's buffer when
//! reading, out of it when writing); the socket I/O and the record layer are HTTP/1.1's.
//!
//! The guard reads only the 9-byte header of each frame the client sends (h2 parses the
//! frames themselves) and keeps two token buckets: resets (RST_STREAM, CVE-2023-44487's rapid
//! reset) and control frames (PING, SETTINGS, PRIORITY). A client over either budget gets a
//! GOAWAY (ENHANCE_YOUR_CALM) from the driver, and no more of its bytes reach h2.

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::Future,
    io as stdio,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use outpost_api::pooled::Pooled;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Signal;
use crate::{
    io,
    metrics::{H2Refusal, Metrics},
    tls::{TlsReader, TlsWriter},
};

/// Plaintext h2 may queue before it must flush: a little more than one full frame.
const OUT_MAX: usize = 32 * 1024;

/// RST_STREAM frames a client may send in a burst, and per second after it. Browsers reset
/// streams when a page is left, a few dozen at a time; a rapid-reset attack sends thousands.
const RESET_BURST: u32 = 200;
const RESETS_PER_SEC: u32 = 20;
/// PING, SETTINGS (not ACKs) and PRIORITY frames in a burst, and per second after it.
const CONTROL_BURST: u32 = 200;
const CONTROLS_PER_SEC: u32 = 50;

/// The HTTP/2 client connection preface (RFC 9113 §3.4), before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

type Reading<'a> = Pooled<dyn Future<Output = (TlsReader<'a>, stdio::Result<Vec<u8>>)> + 'a>;
type Writing<'a> = Pooled<dyn Future<Output = (TlsWriter<'a>, Vec<u8>, stdio::Result<()>)> + 'a>;

/// A handle on the connection's I/O: h2 owns one, the driver keeps one to learn of a
/// refusal and to flush what h2 left once it is done with the connection.
#[derive(Clone)]
pub(super) struct H2Io<'a>(Rc<RefCell<State<'a>>>);

struct State<'a> {
    /// The reader, while no read is in flight.
    reader: Option<TlsReader<'a>>,
    reading: Option<Reading<'a>>,
    /// Plaintext read and not yet handed to h2, from `at`.
    plain: Vec<u8>,
    at: usize,
    eof: bool,
    /// The writer, while no write is in flight.
    writer: Option<TlsWriter<'a>>,
    writing: Option<Writing<'a>>,
    /// Plaintext h2 wrote, sent at its next flush.
    out: Vec<u8>,
    guard: Guard,
    sent: SentWatch,
    /// A budget ran out: h2 is given nothing more to read, and the driver is told.
    refused: Option<H2Refusal>,
    notify: Rc<Signal>,
}

impl<'a> H2Io<'a> {
    /// `notify` is woken when the guard refuses the client.
    pub(super) fn new(
        reader: TlsReader<'a>,
        writer: TlsWriter<'a>,
        notify: Rc<Signal>,
        metrics: Arc<Metrics>,
    ) -> Self {
        H2Io(Rc::new(RefCell::new(State {
            reader: Some(reader),
            reading: None,
            plain: Vec::new(),
            at: 0,
            eof: false,
            writer: Some(writer),
            writing: None,
            out: Vec::new(),
            guard: Guard::new(),
            sent: SentWatch::new(metrics),
            refused: None,
            notify,
        })))
    }

    /// Why the guard refused the client, if it did.
    pub(super) fn refused(&self) -> Option<H2Refusal> {
        self.0.borrow().refused
    }

    /// The driver accepted `stream` (and will answer it).
    pub(super) fn accepted(&self, stream: u32) {
        self.0.borrow_mut().sent.accepted(stream);
    }

    /// The debug data of the last GOAWAY h2 sent: h2's name for the limit a client broke.
    pub(super) fn goaway_debug(&self) -> Vec<u8> {
        self.0.borrow().sent.debug.clone()
    }

    /// Once h2 has let go: finishes the write in flight and sends what h2 left unflushed, so
    /// that the connection can be closed (`TlsConn::close`: close_notify or the alert owed,
    /// FIN, a short wait for the client's own close). A read still in flight is dropped (the
    /// connection is closing).
    pub(super) async fn finish(self, linger: Duration) {
        let (writing, writer, out) = {
            let mut st = self.0.borrow_mut();
            let st = &mut *st;
            (st.writing.take(), st.writer.take(), std::mem::take(&mut st.out))
        };
        let writer = match writing {
            // Within `linger`, not the writer's own timeout (the body timeout): a client that
            // stopped reading has had its GOAWAY. A write dropped unfinished leaves the
            // connection torn, so no close_notify follows a record cut short.
            Some(w) => match io::timeout(linger, w).await {
                Ok((w, buf, _)) => {
                    io::buf::give(buf);
                    Some(w)
                }
                Err(io::Elapsed) => None,
            },
            None => writer,
        };
        if let (Some(mut writer), false) = (writer, out.is_empty()) {
            let _ = io::timeout(linger, writer.send(&out)).await;
        }
        io::buf::give(out);
    }
}

impl State<'_> {
    /// Drives the write in flight, then starts one for what h2 wrote; ready when all is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<stdio::Result<()>> {
        loop {
            if let Some(w) = self.writing.as_mut() {
                let (writer, mut buf, res) = std::task::ready!(Pin::new(w).poll(cx));
                self.writing = None;
                self.writer = Some(writer);
                buf.clear();
                if self.out.is_empty() && self.out.capacity() == 0 {
                    self.out = buf;
                } else {
                    io::buf::give(buf);
                }
                res?;
            }
            if self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let Some(mut writer) = self.writer.take() else {
                return Poll::Ready(Err(stdio::ErrorKind::NotConnected.into()));
            };
            let buf = std::mem::take(&mut self.out);
            self.writing = Some(Pooled::future(async move {
                let res = writer.send(&buf).await;
                (writer, buf, res)
            }));
        }
    }
}

impl AsyncRead for H2Io<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<stdio::Result<()>> {
        let mut st = self.0.borrow_mut();
        let st = &mut *st;
        // Each turn either hands bytes over, waits, or ends: one read completes per turn.
        loop {
            // What was read is handed over even past a refusal (at most one read's worth, and
            // h2 may still be reading the preface): the driver needs h2 to send the GOAWAY.
            if st.at < st.plain.len() {
                let n = buf.remaining().min(st.plain.len() - st.at);
                buf.put_slice(&st.plain[st.at..st.at + n]);
                st.at += n;
                return Poll::Ready(Ok(()));
            }
            if st.refused.is_some() {
                // The driver sends GOAWAY and closes; h2 reads nothing more of this client.
                return Poll::Pending;
            }
            if st.eof {
                return Poll::Ready(Ok(()));
            }
            if st.reading.is_none() {
                let Some(mut reader) = st.reader.take() else {
                    return Poll::Ready(Err(stdio::ErrorKind::NotConnected.into()));
                };
                let mut plain = std::mem::take(&mut st.plain);
                plain.clear();
                st.at = 0;
                st.reading = Some(Pooled::future(async move {
                    let res = reader.read(&mut plain).await;
                    (reader, res.map(|_| plain))
                }));
            }
            let reading = st.reading.as_mut().expect("started above");
            let (reader, res) = std::task::ready!(Pin::new(reading).poll(cx));
            st.reading = None;
            st.reader = Some(reader);
            let plain = res?;
            if plain.is_empty() {
                st.eof = true;
                io::buf::give(plain);
                continue;
            }
            if st.refused.is_none() {
                if let Some(why) = st.guard.observe(&plain, Instant::now) {
                    st.refused = Some(why);
                    st.notify.notify();
                }
            }
            st.plain = plain;
        }
    }
}

impl AsyncWrite for H2Io<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<stdio::Result<usize>> {
        let mut st = self.0.borrow_mut();
        if st.out.len() >= OUT_MAX {
            std::task::ready!(st.poll_send(cx))?;
        }
        if st.out.capacity() == 0 {
            st.out = io::buf::take();
        }
        let n = data.len().min(OUT_MAX - st.out.len());
        st.sent.observe(&data[..n]);
        st.out.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<stdio::Result<()>> {
        self.0.borrow_mut().poll_send(cx)
    }

    /// h2 shuts down after its GOAWAY: everything is sent; the close itself is the driver's,
    /// once h2 has let go of the connection ([`H2Io::finish`]).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<stdio::Result<()>> {
        self.0.borrow_mut().poll_send(cx)
    }
}

/// Follows a stream of frames by their 9-byte headers (RFC 9113 §4.1), after `skip` bytes
/// that are not frames (the client's preface).
struct Walker {
    head: [u8; FRAME_HEADER],
    have: usize,
    /// Bytes still to come of what is not a frame header: the preface, then each payload.
    skip: usize,
    /// Where the current payload starts to be skipped (`skip` when it started).
    payload: usize,
}

impl Walker {
    fn new(skip: usize) -> Walker {
        Walker { head: [0; FRAME_HEADER], have: 0, skip, payload: skip }
    }

    /// Walks `b`, telling `on` of each frame header completed and each piece of payload (with
    /// its offset in the payload). Stops early when `on` returns false for a header.
    fn walk(&mut self, mut b: &[u8], mut on: impl FnMut(Seen<'_>) -> bool) {
        while !b.is_empty() {
            let n;
            if self.skip > 0 {
                n = self.skip.min(b.len());
                on(Seen::Payload(&b[..n], self.payload.saturating_sub(self.skip)));
                self.skip -= n;
            } else {
                n = (FRAME_HEADER - self.have).min(b.len());
                self.head[self.have..self.have + n].copy_from_slice(&b[..n]);
                self.have += n;
                if self.have == FRAME_HEADER {
                    self.have = 0;
                    let [l0, l1, l2, typ, flags, s0, s1, s2, s3] = self.head;
                    self.skip = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    self.payload = self.skip;
                    // The reserved bit is not part of the stream identifier (§4.1).
                    let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
                    if !on(Seen::Head(typ, flags, stream)) {
                        return;
                    }
                }
            }
            b = &b[n..];
        }
    }
}

/// What [`Walker::walk`] saw.
enum Seen<'a> {
    /// A frame header: type, flags and stream identifier.
    Head(u8, u8, u32),
    /// Payload bytes (or preface), at this offset.
    Payload(&'a [u8], usize),
}

/// Follows the client's frames and keeps the reset and control budgets.
struct Guard {
    walker: Walker,
    resets: Bucket,
    control: Bucket,
}

impl Guard {
    fn new() -> Guard {
        Guard {
            walker: Walker::new(PREFACE_LEN),
            resets: Bucket::new(RESET_BURST, RESETS_PER_SEC),
            control: Bucket::new(CONTROL_BURST, CONTROLS_PER_SEC),
        }
    }

    /// Takes the next bytes the client sent; the refusal when a budget ran out. The clock is
    /// read only for a frame a budget counts (most reads have none).
    fn observe(&mut self, b: &[u8], clock: impl Fn() -> Instant) -> Option<H2Refusal> {
        let (resets, control) = (&mut self.resets, &mut self.control);
        let mut refused = None;
        let mut time = None;
        let mut now = || *time.get_or_insert_with(&clock);
        self.walker.walk(b, |seen| {
            let Seen::Head(typ, flags, _) = seen else { return true };
            refused = match typ {
                RST_STREAM if !resets.take(now()) => Some(H2Refusal::RapidReset),
                PING | SETTINGS if flags & ACK == 0 && !control.take(now()) => {
                    Some(H2Refusal::ControlFlood)
                }
                PRIORITY if !control.take(now()) => Some(H2Refusal::ControlFlood),
                _ => None,
            };
            refused.is_none()
        });
        refused
    }
}

/// Follows our own frames for what h2 refused on its own, which it does not tell its caller:
/// the debug data of its GOAWAY (where it names the limit a client broke), the streams it
/// reset with REFUSED_STREAM (over `h2_max_concurrent_streams`), and the 431 it answers itself
/// for a header list over its SETTINGS_MAX_HEADER_LIST_SIZE: a response HEADERS on a stream
/// the driver never accepted, as every response of ours follows an accept.
struct SentWatch {
    walker: Walker,
    /// Type of the frame whose payload is going by.
    frame: u8,
    /// The debug data of the last GOAWAY sent (its first bytes).
    debug: Vec<u8>,
    /// The error code of the RST_STREAM going by, as it arrives.
    code: Vec<u8>,
    /// Streams the driver accepted whose response has not ended, in increasing order as
    /// clients open them (the oldest dropped past [`TRACKED`]).
    accepted: VecDeque<u32>,
    metrics: Arc<Metrics>,
}

/// GOAWAY: last stream id and error code, then the debug data.
const GOAWAY: u8 = 0x7;
const GOAWAY_FIXED: usize = 8;
const DEBUG_KEPT: usize = 64;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
/// Accepted streams remembered until answered: far more than can be in flight at once.
const TRACKED: usize = 4096;

impl SentWatch {
    fn new(metrics: Arc<Metrics>) -> SentWatch {
        SentWatch {
            walker: Walker::new(0),
            frame: 0,
            debug: Vec::new(),
            code: Vec::new(),
            accepted: VecDeque::new(),
            metrics,
        }
    }

    fn accepted(&mut self, stream: u32) {
        self.accepted.push_back(stream);
        if self.accepted.len() > TRACKED {
            self.accepted.pop_front();
        }
    }

    fn observe(&mut self, b: &[u8]) {
        let SentWatch { frame, debug, code, accepted, metrics, .. } = self;
        self.walker.walk(b, |seen| {
            match seen {
                Seen::Head(typ, flags, stream) => {
                    *frame = typ;
                    let ours = accepted.binary_search(&stream);
                    match typ {
                        GOAWAY => debug.clear(),
                        // A 100 (informational) and the response: HEADERS twice for a stream.
                        HEADERS if ours.is_err() => {
                            metrics.h2_refused(H2Refusal::HeaderListOverLimit)
                        }
                        RST_STREAM => code.clear(),
                        HEADERS | DATA if flags & END_STREAM == 0 => return true,
                        _ => {}
                    }
                    // The stream's response ended (END_STREAM) or it was reset.
                    if let (HEADERS | DATA | RST_STREAM, Ok(at)) = (typ, ours) {
                        accepted.remove(at);
                    }
                }
                Seen::Payload(bytes, at) if *frame == GOAWAY => {
                    let from = GOAWAY_FIXED.saturating_sub(at).min(bytes.len());
                    let room = DEBUG_KEPT - debug.len();
                    debug.extend(bytes[from..].iter().take(room));
                }
                Seen::Payload(bytes, _) if *frame == RST_STREAM && code.len() < 4 => {
                    code.extend(bytes.iter().take(4 - code.len()));
                    if let Ok(c) = <[u8; 4]>::try_from(code.as_slice()) {
                        if u32::from_be_bytes(c) == REFUSED_STREAM {
                            metrics.h2_refused(H2Refusal::TooManyStreams);
                        }
                    }
                }
                Seen::Payload(..) => {}
            }
            true
        });
    }
}

/// A token bucket: `burst` tokens, refilled at `per_sec`.
struct Bucket {
    tokens: u32,
    burst: u32,
    per_sec: u32,
    since: Instant,
}

impl Bucket {
    fn new(burst: u32, per_sec: u32) -> Bucket {
        Bucket { tokens: burst, burst, per_sec, since: Instant::now() }
    }

    /// Takes a token; false when there is none.
    fn take(&mut self, now: Instant) -> bool {
        let ms = now.saturating_duration_since(self.since).as_millis();
        let refill = ms * u128::from(self.per_sec) / 1000;
        if refill > 0 {
            self.tokens = (u128::from(self.tokens) + refill).min(u128::from(self.burst)) as u32;
            self.since = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(typ: u8, flags: u8, len: usize) -> Vec<u8> {
        let l = (len as u32).to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], typ, flags, 0, 0, 0, 1];
        f.resize(FRAME_HEADER + len, 0);
        f
    }

    #[test]
    fn the_guard_counts_frames_split_anywhere_and_refuses_past_the_budgets() {
        let now = Instant::now();
        let mut g = Guard::new();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 12));
        bytes.extend(frame(SETTINGS, ACK, 0));
        // A DATA frame whose payload looks like RST_STREAM headers: never counted.
        let mut data = frame(0x0, 0, 4 * FRAME_HEADER);
        for i in 0..4 {
            data[FRAME_HEADER + i * FRAME_HEADER + 3] = RST_STREAM;
        }
        bytes.extend(data);
        for chunk in bytes.chunks(5) {
            assert_eq!(g.observe(chunk, || now), None);
        }
        assert_eq!(g.control.tokens, CONTROL_BURST - 1);
        assert_eq!(g.resets.tokens, RESET_BURST);
        for i in 0..RESET_BURST {
            assert_eq!(g.observe(&frame(RST_STREAM, 0, 4), || now), None, "reset {i}");
        }
        assert_eq!(g.observe(&frame(RST_STREAM, 0, 4), || now), Some(H2Refusal::RapidReset));
        let mut g = Guard::new();
        g.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", || now);
        let pings: Vec<u8> = (0..CONTROL_BURST).flat_map(|_| frame(PING, 0, 8)).collect();
        assert_eq!(g.observe(&pings, || now), None);
        // Acks cost nothing; time refills.
        assert_eq!(g.observe(&frame(PING, ACK, 8), || now), None);
        assert_eq!(g.observe(&frame(PING, 0, 8), || now), Some(H2Refusal::ControlFlood));
        let later = now + Duration::from_secs(1);
        assert_eq!(g.observe(&[0; 8], || later), None, "the refused PING's payload");
        assert_eq!(g.observe(&frame(PING, 0, 8), || later), None);
    }

    #[test]
    fn the_sent_watch_keeps_goaway_debug_and_counts_what_h2_refused_itself() {
        let metrics = Arc::new(Metrics::default());
        let mut w = SentWatch::new(metrics.clone());
        w.accepted(1);
        let stream = |mut f: Vec<u8>, id: u32| {
            f[5..9].copy_from_slice(&id.to_be_bytes());
            f
        };
        w.accepted(7);
        // Our answer to stream 1; h2's own 431 to stream 3; REFUSED_STREAM on 5, CANCEL on 1;
        // on 7 a 100, the response's HEADERS and its DATA.
        let mut bytes = stream(frame(HEADERS, 0x4, 12), 1);
        bytes.extend(stream(frame(HEADERS, 0x4, 3), 7));
        bytes.extend(stream(frame(HEADERS, 0x4, 12), 7));
        bytes.extend(stream(frame(DATA, END_STREAM, 5), 7));
        bytes.extend(frame(PING, ACK, 8));
        bytes.extend(stream(frame(HEADERS, 0x5, 5), 3));
        let mut reset = stream(frame(RST_STREAM, 0, 4), 5);
        reset[FRAME_HEADER..].copy_from_slice(&REFUSED_STREAM.to_be_bytes());
        bytes.extend(reset);
        let mut cancel = stream(frame(RST_STREAM, 0, 4), 1);
        cancel[FRAME_HEADER..].copy_from_slice(&0x8u32.to_be_bytes());
        bytes.extend(cancel);
        let mut goaway = frame(GOAWAY, 0, GOAWAY_FIXED + 15);
        goaway[FRAME_HEADER + GOAWAY_FIXED..].copy_from_slice(b"too_many_resets");
        bytes.extend(goaway);
        for chunk in bytes.chunks(3) {
            w.observe(chunk);
        }
        assert_eq!(w.debug, b"too_many_resets");
        assert!(w.accepted.is_empty(), "{:?}", w.accepted);
        let text = metrics.render(None);
        for (reason, n) in [("too_many_streams", 1), ("header_list_over_limit", 1)] {
            let line = format!("outpost_h2_refused_total{{reason=\"{reason}\"}} {n}\n");
            assert!(text.contains(&line), "{line}");
        }
    }
}
