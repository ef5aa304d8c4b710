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

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Map, MapData, RingBuf};
use outpost_common::{
    hello::record_of_bytes,
    maps as names,
    record::{BytesHeader, HelloRecord, BYTES_CLASSES},
};

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
    ring: RingBuf<MapData>,
    /// Entries of neither size (a program from another version): skipped.
    skipped: u64,
    /// Records made here from a hello's bytes.
    from_bytes: u64,
}

impl HelloRecords {
    /// How often a reader looks for records without being woken.
    pub const POLL: Duration = Duration::from_millis(100);

    pub fn open(pin_dir: &Path) -> Result<HelloRecords> {
        let path = pin_dir.join(names::HELLO_RECORDS);
        let data = MapData::from_pin(&path).map_err(|e| {
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
        let ring = RingBuf::try_from(Map::RingBuf(data))
            .with_context(|| format!("{} is not a ring buffer", path.display()))?;
        Ok(HelloRecords { ring, skipped: 0, from_bytes: 0 })
    }

    /// The next record, if one is waiting; never blocks.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<HelloRecord> {
        loop {
            let item = self.ring.next()?;
            if item.len() == size_of::<HelloRecord>() {
                // SAFETY: as many bytes as a record, which is plain integers (any bytes are a
                // valid value); read unaligned, as the ring promises 8-byte alignment only.
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
        }
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
    /// which it does for a batch only); whether one is.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
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

impl AsFd for HelloRecords {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for HelloRecords {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
