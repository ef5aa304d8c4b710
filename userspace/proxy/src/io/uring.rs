//! tokio-uring: the only file that names it.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
    time::Duration,
};

use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

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
        Ok((Stream(Rc::new(s)), a))
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

/// A connected socket. Reads and writes are IORING_OP_RECV and IORING_OP_SEND, which go
/// to the socket layer directly, where tokio-uring's own (IORING_OP_READ and _WRITE) pass
/// through the file layer's read and write paths first. Each operation holds the socket (an
/// `Rc`) until it completes, as tokio-uring's do, so an operation that outlives its future
/// (dropped at a timeout) never reaches a later socket given the same descriptor.
pub struct Stream(Rc<tokio_uring::net::TcpStream>);

impl Stream {
    /// Connects through the runtime's tokio reactor, then moves the socket to the ring. A uring
    /// connect that times out cannot be cancelled through tokio-uring and would keep its socket
    /// until the kernel gives up (minutes, for an address that drops SYNs); a reactor connect
    /// closes the socket as soon as it is dropped.
    pub(super) async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Stream> {
        let s = super::tokio_connect(addr, limit).await?.into_std()?;
        s.set_nonblocking(false)?;
        Ok(Stream(Rc::new(tokio_uring::net::TcpStream::from_std(s))))
    }

    /// Reads into the spare capacity of `buf`.
    pub(super) async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        // SAFETY (of the kernel's write): `buf` moves into the operation's data, which
        // tokio-uring keeps until the completion arrives, even if this future is dropped;
        // its heap block does not move with it.
        let spare = unsafe { buf.as_mut_ptr().add(len) };
        let sqe = opcode::Recv::new(self.fd(), spare, op_len(buf.capacity() - len)).build();
        let (res, mut buf) = self.submit(sqe, buf).await;
        if let Ok(n) = res {
            // SAFETY: the kernel wrote `n` bytes into the spare capacity after `len`.
            unsafe { buf.set_len(len + n) };
        }
        (res, buf)
    }

    pub(super) async fn write_all(&self, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut at = 0;
        while at < buf.len() {
            // SAFETY: as in `read`; the kernel only reads `buf[at..]`.
            let rest = unsafe { buf.as_ptr().add(at) };
            let sqe = opcode::Send::new(self.fd(), rest, op_len(buf.len() - at))
                .flags(libc::MSG_NOSIGNAL)
                .build();
            let (res, back) = self.submit(sqe, buf).await;
            buf = back;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Submits `sqe`, which uses `buf` and this socket, both held until it completes; its
    /// result and the buffer back.
    async fn submit(&self, sqe: squeue::Entry, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        UnsubmittedOneshot::new(InFlight { _sock: self.0.clone(), buf }, Completed, sqe)
            .submit()
            .await
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.0.as_raw_fd())
    }
}

/// An operation's length: a longer buffer is sent or filled in parts (a short send is
/// sent on; a short read is what a read is).
fn op_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What an operation holds while the kernel may use it.
struct InFlight {
    _sock: Rc<tokio_uring::net::TcpStream>,
    buf: Vec<u8>,
}

/// A completed operation: its byte count (or error) and its buffer.
struct Completed;

impl OneshotOutputTransform for Completed {
    type Output = (io::Result<usize>, Vec<u8>);
    type StoredData = InFlight;

    fn transform_oneshot_output(self, op: InFlight, cqe: cqueue::Entry) -> Self::Output {
        let res = match cqe.result() {
            n if n >= 0 => Ok(n as usize),
            e => Err(io::Error::from_raw_os_error(-e)),
        };
        (res, op.buf)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
