//! tokio-uring: the only file that names it.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use tokio_uring::buf::BoundedBuf;

/// Submission queue entries per ring. Each connection has at most one read or write in flight,
/// and a full queue is flushed to the kernel rather than refused, so this bounds batching, not
/// connections.
const RING_ENTRIES: u32 = 1024;

pub(super) fn probe() -> io::Result<()> {
    runtime(8).map(drop)
}

pub(super) fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
    Ok(runtime(RING_ENTRIES)?.block_on(fut))
}

/// A runtime whose ring runs completion work cooperatively (`IORING_SETUP_COOP_TASKRUN`,
/// Linux 5.19) and is used by its creating thread only (`IORING_SETUP_SINGLE_ISSUER`, 6.0),
/// or a plain ring on an older kernel.
///
/// Without cooperative task running, every socket wakeup that completes a read interrupts the
/// worker with an IPI to run the read at once, while the sender still holds the socket lock
/// (it is waking us from inside its receive path): the worker then spins on that lock. With
/// it, a running worker does the work at its next system call, and a sleeping one is still
/// woken at once, so nothing waits longer.
fn runtime(entries: u32) -> io::Result<tokio_uring::Runtime> {
    let tuned =
        tokio_uring::Runtime::new(tokio_uring::builder().entries(entries).uring_builder(
            tokio_uring::uring_builder().setup_coop_taskrun().setup_single_issuer(),
        ));
    match tuned {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tokio_uring::Runtime::new(tokio_uring::builder().entries(entries))
        }
        other => other,
    }
}

pub struct Listener(tokio_uring::net::TcpListener);

impl Listener {
    pub(super) fn from_std(l: std::net::TcpListener) -> io::Result<Listener> {
        // io_uring completes operations on a blocking socket asynchronously; a non-blocking one
        // would make it return EAGAIN instead of waiting.
        l.set_nonblocking(false)?;
        Ok(Listener(tokio_uring::net::TcpListener::from_std(l)))
    }

    pub(super) async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        Ok((Stream(s), a))
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub struct Stream(tokio_uring::net::TcpStream);

impl Stream {
    /// Connects through the runtime's tokio reactor, then moves the socket to the ring. A uring
    /// connect that times out cannot be cancelled through tokio-uring and would keep its socket
    /// until the kernel gives up (minutes, for an address that drops SYNs); a reactor connect
    /// closes the socket as soon as it is dropped.
    pub(super) async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Stream> {
        let s = super::tokio_connect(addr, limit).await?.into_std()?;
        s.set_nonblocking(false)?;
        Ok(Stream(tokio_uring::net::TcpStream::from_std(s)))
    }

    /// Reads into the spare capacity of `buf`.
    pub(super) async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = self.0.read(buf.slice(len..cap)).await;
        (res, slice.into_inner())
    }

    pub(super) async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, slice) = self.0.write_all(buf.slice_full()).await;
        (res, slice.into_inner())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
