//! Records of the hellos the kernel sampled ([`HelloRecord`]), read from its pinned ring buffer.
//!
//! The kernel sends a hello decided whole in its first segment as its bytes
//! ([`HelloBytes`](outpost_common::record::HelloBytes)), and others as the record it filled;
//! [`HelloRecords::next`] makes a record of the first kind with the host's parser, so a reader
//! sees records only.
//!
//! The ring has one consumer position, in memory the kernel shares with every process that
//! opens it: each record goes to whichever reader takes it first. Run one reader at a time (the
//! process that serves the records on, or a CLI that prints them), never one per worker.
//!
//! The kernel wakes a sleeping reader only once a batch of records is waiting
//! (`HELLO_RECORDS_WAKE_BYTES`, a quarter of the ring): a wake-up per record cost more than
//! recording the hello. A reader therefore also looks every [`HelloRecords::POLL`] or so, which
//! bounds how long a lone record waits; [`HelloRecords::wait`] with that timeout does both.
//!
//! The ring is read here rather than through aya's `RingBuf`, for one difference: the position
//! read up to is handed back to the kernel once per batch (when the reader has caught up, or
//! every [`PUBLISH_BYTES`]), not after every record. Each store of it takes the cache line away
//! from the CPU sending the next record, whose reserve reads it: with every hello recorded and
//! the reader keeping up, that was a cache miss per record in the kernel.

use std::{
    cell::Cell,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{MapData, MapType};
use outpost_common::{
    hello::record_of_bytes,
    maps as names,
    record::{BytesHeader, HelloRecord, BYTES_CLASSES},
};

/// Bytes read before the position is handed back even if more is waiting (an eighth of the
/// ring), so that a long batch does not keep the kernel from the space.
pub const PUBLISH_BYTES: usize = 128 * 1024;

/// The kernel's ring entry header (`BPF_RINGBUF_HDR_SZ`): a `u32` length with two flag bits,
/// and a `u32` the kernel keeps for itself.
const ENTRY_HEADER: usize = 8;
/// Set in the length while the entry is reserved and not yet submitted.
const BUSY_BIT: u32 = 1 << 31;
/// Set in the length of an entry the program discarded.
const DISCARD_BIT: u32 = 1 << 30;

/// A reader of the `hello_records` ring pinned under a pin directory. Not a loader: any
/// process with CAP_BPF can open it while the program is loaded.
///
/// Blocking: [`wait`](Self::wait) with [`POLL`](Self::POLL), then [`next`](Self::next) until it
/// says `None`. With tokio, register it (it is [`AsRawFd`]) with `tokio::io::unix::AsyncFd`
/// and drain it when the descriptor is readable or `POLL` has passed:
///
/// ```no_run
/// # async fn f() -> anyhow::Result<()> {
/// # use tokio::io::unix::AsyncFd;
/// use outpost_dataplane::HelloRecords;
/// let records = HelloRecords::open(std::path::Path::new(outpost_dataplane::PIN_DIR))?;
/// let mut fd = AsyncFd::new(records)?;
/// loop {
///     if let Ok(ready) = tokio::time::timeout(HelloRecords::POLL, fd.readable_mut()).await {
///         ready?.clear_ready();
///     }
///     while let Some(record) = fd.get_mut().next() {
///         println!("{:?}", record.version);
///     }
/// }
/// # }
/// ```
pub struct HelloRecords {
    map: MapData,
    /// The consumer page (read-write): the position up to which the kernel may reuse space.
    consumer: Mapping,
    /// The producer page, then the data pages twice over (read-only), so that an entry that
    /// wraps around the end reads as one slice.
    producer: Mapping,
    /// Data bytes - 1 (a power of two).
    mask: usize,
    /// Read up to here.
    pos: usize,
    /// Handed back to the kernel up to here.
    published: usize,
    /// The producer position last read.
    produced: usize,
    /// Entries of neither size (a program from another version): skipped.
    skipped: u64,
    /// Records made here from a hello's bytes.
    from_bytes: u64,
    /// Records read since the last [`wait`](Self::wait).
    read: Cell<u64>,
}

// SAFETY: the mappings belong to the value, and are read through `&mut self` only (the
// consumer position, which the kernel reads too, is atomic); nothing ties them to a thread.
unsafe impl Send for HelloRecords {}

impl HelloRecords {
    /// How often a reader looks for records without being woken.
    pub const POLL: Duration = Duration::from_millis(100);
    /// How long [`wait`](Self::wait) pauses after a look that found records, before it looks
    /// again (see there).
    pub const PACE: Duration = Duration::from_millis(1);

    pub fn open(pin_dir: &Path) -> Result<HelloRecords> {
        let path = pin_dir.join(names::HELLO_RECORDS);
        let map = MapData::from_pin(&path).map_err(|e| {
            if path.exists() {
                anyhow!("opening {}: {e}", path.display())
            } else {
                anyhow!(
                    "no ring of hello records pinned at {} (outpost is not loaded, or is of a \
                     version without one)",
                    path.display()
                )
            }
        })?;
        let info = map.info().with_context(|| format!("reading {}", path.display()))?;
        if !matches!(info.map_type(), Ok(MapType::RingBuf)) {
            bail!("{} is not a ring buffer", path.display());
        }
        let size = info.max_entries() as usize;
        if !size.is_power_of_two() {
            bail!("{}: a ring of {size} bytes", path.display());
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)
            .with_context(|| format!("mapping the consumer page of {}", path.display()))?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)
            .with_context(|| format!("mapping the data of {}", path.display()))?;
        let mut records = HelloRecords {
            map,
            consumer,
            producer,
            mask: size - 1,
            pos: 0,
            published: 0,
            produced: 0,
            skipped: 0,
            from_bytes: 0,
            read: Cell::new(0),
        };
        records.pos = records.consumer_pos().load(Ordering::Acquire);
        records.published = records.pos;
        records.produced = records.pos;
        Ok(records)
    }

    /// The next record, if one is waiting; never blocks. When it says `None`, everything read
    /// has been handed back to the kernel.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<HelloRecord> {
        loop {
            if self.pos == self.produced {
                self.publish();
                // Either the kernel's next reserve sees the position just handed back, or this
                // sees what it reserved (the pairing aya's reader and libbpf make too).
                fence(Ordering::SeqCst);
                self.produced = self.producer_pos().load(Ordering::Acquire);
                if self.pos == self.produced {
                    return None;
                }
            }
            let at = self.pos & self.mask;
            // SAFETY: the entry header at `at`, in the first copy of the data pages, 8-byte
            // aligned as every entry is; the kernel writes it with an ordered exchange.
            let header =
                unsafe { (*self.data().add(at).cast::<AtomicU32>()).load(Ordering::Acquire) };
            if header & BUSY_BIT != 0 {
                // Reserved, not submitted yet: the rest comes at the next look.
                self.publish();
                return None;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if ENTRY_HEADER + len > self.mask + 1 {
                // Not a length the kernel writes: give up on what is waiting, not on the ring.
                self.skipped += 1;
                self.pos = self.produced;
                continue;
            }
            let record = if header & DISCARD_BIT != 0 {
                None
            } else {
                // SAFETY: the entry's bytes, inside the double mapping (they end at most a ring
                // past `at`); the kernel reuses them only once the position handed back passes
                // them, which happens below.
                let item =
                    unsafe { std::slice::from_raw_parts(self.data().add(at + ENTRY_HEADER), len) };
                self.decode(item)
            };
            self.pos += (ENTRY_HEADER + len).next_multiple_of(8);
            if self.pos - self.published >= PUBLISH_BYTES {
                self.publish();
            }
            if record.is_some() {
                self.read.set(self.read.get() + 1);
                return record;
            }
        }
    }

    /// The record in an entry of either kind, or `None` (counted) for an entry of another size.
    fn decode(&mut self, item: &[u8]) -> Option<HelloRecord> {
        if item.len() == size_of::<HelloRecord>() {
            // SAFETY: as many bytes as a record, which is plain integers (any bytes are a valid
            // value); read unaligned, as the ring promises 8-byte alignment only.
            return Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        let head_len = size_of::<BytesHeader>();
        if BYTES_CLASSES.iter().any(|n| item.len() == head_len + n) {
            // SAFETY: as above, for the header at the start of the entry.
            let head: BytesHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            // The parse is on the reader's time, not the kernel's.
            let record = record_of_bytes(&head, &item[head_len..]);
            self.from_bytes += 1;
            return Some(record);
        }
        self.skipped += 1;
        None
    }

    /// Hands the space read so far back to the kernel.
    fn publish(&mut self) {
        if self.published != self.pos {
            self.consumer_pos().store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the consumer page starts with the position, an aligned `unsigned long`.
        unsafe { self.consumer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: as above, for the producer page.
        unsafe { self.producer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    /// The first copy of the data pages.
    fn data(&self) -> *const u8 {
        let page = self.producer.len - 2 * (self.mask + 1);
        // SAFETY: the data pages follow the producer page inside the mapping.
        unsafe { self.producer.ptr.cast::<u8>().as_ptr().add(page) }
    }

    /// Takes every record waiting into `out`; how many.
    pub fn drain(&mut self, out: &mut Vec<HelloRecord>) -> usize {
        let before = out.len();
        while let Some(r) = self.next() {
            out.push(r);
        }
        out.len() - before
    }

    /// Blocks until a record is waiting or `timeout` passes (`None`: until the kernel wakes it,
    /// which it does for a batch only); whether one is. Wait only once [`next`](Self::next)
    /// has said `None` (which hands back all that was read), as a drain does.
    ///
    /// After a look that found records, it first pauses for [`PACE`](Self::PACE): the ring is
    /// readable as soon as anything is in it, so a reader that keeps up would otherwise look
    /// again at once, over and over, reading each entry while the kernel writes the next one
    /// beside it. Every such look takes cache lines away from the CPU that sends the next
    /// record (its hello then costs more): with every hello recorded, the recording rows of
    /// the XDP bench cost 1.5-3x the rows without it that way, 1.1-1.35x with the pause. The
    /// ring holds a few thousand records, so a pause of this length loses none below about a
    /// million hellos recorded a second.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.read.replace(0) > 0 {
            let pause = timeout.map_or(Self::PACE, |t| t.min(Self::PACE));
            std::thread::sleep(pause);
        }
        let mut pfd = libc::pollfd { fd: self.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        loop {
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc >= 0 {
                return Ok(rc > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Entries skipped because they were not the size of a record.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Records made so far from hellos the kernel sent as their bytes (the others came as the
    /// records it filled).
    pub fn from_bytes(&self) -> u64 {
        self.from_bytes
    }
}

impl Drop for HelloRecords {
    fn drop(&mut self) {
        self.publish();
    }
}

/// A shared mapping of part of the ring, unmapped on drop.
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        // SAFETY: a new shared mapping of the map's pages; the kernel checks the range and the
        // protection (the producer's pages are read-only to userspace).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

impl AsFd for HelloRecords {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl AsRawFd for HelloRecords {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
