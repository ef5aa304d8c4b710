//! Per-thread reuse of I/O buffers.
//!
//! A connection holds a full-size buffer only while bytes are moving; between requests it gives
//! it back here, so 10,000 idle connections cost 10,000 small idle reads (see
//! [`Stream::read_idle`](super::Stream::read_idle)), not 10,000 × 3 buffers of 16 KiB. Reuse
//! also keeps the allocator out of the hot path: glibc serves 16 KiB from its bins, and
//! returning many of them can trim and regrow the heap.

use std::cell::RefCell;

use super::IDLE_READ;

/// Capacity of a pooled buffer: one TLS record with its header and tag.
pub const SIZE: usize = 16 * 1024 + 512;
/// Buffers kept per thread (4 MiB); more are freed, so a burst does not stay resident. A
/// request waiting for its origin holds two (its head, the origin read), so this covers about
/// a hundred requests in flight per worker before buffers go back to malloc.
const KEEP: usize = 256;
/// A returned buffer larger than this is freed rather than kept (it grew for a large head).
const MAX_KEPT: usize = 4 * SIZE;
/// Small buffers kept per thread (256 KB): the idle reads and request heads of the connections
/// whose requests are in flight come back here, not to malloc, until the next request.
const KEEP_IDLE: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_IDLE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of exactly [`IDLE_READ`] bytes of capacity: for a read that may wait long,
/// and for the plaintext of a request head.
pub fn take_idle() -> Vec<u8> {
    FREE_IDLE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(IDLE_READ))
}

/// An empty buffer with at least [`SIZE`] bytes of capacity.
pub fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(SIZE))
}

/// Gives `b` back for reuse (its contents are discarded): full-size buffers and idle-read
/// ones; others are just freed.
pub fn give(mut b: Vec<u8>) {
    let (free, keep) = match b.capacity() {
        IDLE_READ => (&FREE_IDLE, KEEP_IDLE),
        c if (SIZE..=MAX_KEPT).contains(&c) => (&FREE, KEEP),
        _ => return,
    };
    b.clear();
    free.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < keep {
            f.push(b);
        }
    });
}
