//! compio: the only file that names it.
//!
//! What it does that tokio-uring cannot: the driver submits and waits in one `io_uring_enter`,
//! a listener keeps one multishot accept armed (one submission for many connections), and a
//! connection keeps one multishot receive armed into the ring's provided buffers: no buffer is
//! lent to the kernel while a connection is idle, and no receive is resubmitted per read.
//!
//! The price of provided buffers is a copy: the kernel fills a buffer of the ring's pool, and
//! the bytes move from it into the caller's `Vec` (the seam hands out owned buffers). Requests
//! are small, so the copy is a few hundred bytes per read.
//!
//! The rest of the process is tokio (tokio::sync, the handlers' clients, the control thread):
//! every compio worker enters the handle of one small tokio runtime driven by its own thread,
//! so tokio timers and sockets created on a worker work there, with their wakeups crossing
//! threads. The seam's own timers ([`Sleep`]) are compio's, on the worker's ring.

use std::{
    cell::RefCell,
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    num::NonZero,
    os::fd::{AsRawFd, FromRawFd, RawFd},
    pin::Pin,
    sync::OnceLock,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use compio::{
    buf::{BufResult, IntoInner},
    driver::{
        op::{AcceptMulti, RecvFlags, RecvMulti},
        BufferRef, ProactorBuilder, SharedFd, ToSharedFd,
    },
    io::{AsyncReadExt, AsyncWriteExt},
    runtime::{SubmitMulti, SubmitMultiManaged},
};
use futures_core::{FusedStream, Stream as _};

use super::{buf, IDLE_READ};

/// Submission queue entries per ring (as `uring.rs`).
const RING_ENTRIES: u32 = 1024;
/// Provided buffers per ring. They are taken only while bytes wait to be read, so they bound
/// reads completed and not yet consumed, not connections; when they run out, a receive falls
/// back to a plain one into the caller's buffer. 4 MiB of address space, touched as used.
const POOL_BUFFERS: u16 = 256;

pub(super) fn probe() -> io::Result<()> {
    runtime(8).map(drop)
}

pub(super) fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
    let rt = runtime(RING_ENTRIES)?;
    let _tokio = tokio_handle()?.enter();
    Ok(rt.block_on(fut))
}

/// A ring used by its creating thread only (`IORING_SETUP_SINGLE_ISSUER`) that runs completion
/// work cooperatively (`IORING_SETUP_COOP_TASKRUN`; why: `uring.rs`), with a pool of provided
/// buffers one TLS record each; a plain ring on a kernel without those flags.
fn runtime(entries: u32) -> io::Result<compio::runtime::Runtime> {
    let build = |tuned: bool| {
        let mut p = ProactorBuilder::new();
        p.capacity(entries)
            .single_issuer(tuned)
            .coop_taskrun(tuned)
            .buffer_pool_size(NonZero::new(POOL_BUFFERS).expect("a non-zero constant"))
            .buffer_pool_buffer_len(buf::SIZE);
        compio::runtime::Runtime::builder().with_proactor(p).build()
    };
    match build(true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => build(false),
        other => other,
    }
}

/// The tokio runtime whose handle compio workers enter: one thread, started on first use.
fn tokio_handle() -> io::Result<tokio::runtime::Handle> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("outpost-tokio")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match rt {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(io::Error::other(format!("starting the tokio runtime: {e}"))),
    }
}

/// A task on this thread's compio runtime. Dropping the handle detaches the task (compio's own
/// handle would cancel it; tokio's, which the seam promises, detaches).
pub struct JoinHandle<T>(Option<compio::runtime::JoinHandle<T>>);

pub(super) fn spawn<F: Future + 'static>(fut: F) -> JoinHandle<F::Output> {
    JoinHandle(Some(compio::runtime::spawn(fut)))
}

impl<T> Future for JoinHandle<T> {
    /// `Err` when the task panicked or was cancelled.
    type Output = Result<T, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = self.0.as_mut().expect("a task awaited after it finished");
        let out = ready!(Pin::new(task).poll(cx));
        self.0 = None;
        Poll::Ready(out.map_err(drop))
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.detach();
        }
    }
}

/// A timer on this thread's compio runtime (the runtime's own timers: its ring waits no longer
/// than the next one).
pub type Sleep = Pin<Box<dyn Future<Output = ()>>>;

pub(super) fn sleep_until(deadline: Instant) -> Sleep {
    Box::pin(compio::time::sleep_until(deadline))
}

pub(super) async fn sleep(d: Duration) {
    compio::time::sleep(d).await
}

type Accepts = SubmitMulti<AcceptMulti<SharedFd<socket2::Socket>>>;

pub struct Listener {
    socket: compio::net::TcpListener,
    /// The multishot accept, armed at the first accept and re-armed whenever it ends.
    accepts: RefCell<Option<Accepts>>,
}

impl Listener {
    pub(super) fn from_std(l: std::net::TcpListener) -> io::Result<Listener> {
        // As in `uring.rs`: io_uring waits on a blocking socket instead of failing with EAGAIN.
        l.set_nonblocking(false)?;
        Ok(Listener { socket: compio::net::TcpListener::from_std(l)?, accepts: RefCell::new(None) })
    }

    pub(super) async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let s = poll_fn(|cx| self.poll_accept(cx)).await?;
        // A multishot accept returns no address; one getpeername per connection.
        let peer = s.peer_addr()?.as_socket().ok_or_else(|| io::Error::other("not IP"))?;
        Ok((Stream::new(compio::net::TcpStream::from_std(s.into())?), peer))
    }

    /// The next connection of the multishot accept (the cell is borrowed within one poll only).
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<socket2::Socket>> {
        let mut slot = self.accepts.borrow_mut();
        loop {
            let op = slot.get_or_insert_with(|| {
                compio::runtime::submit_multi(AcceptMulti::new(self.socket.to_shared_fd()))
            });
            let Some(BufResult(res, _)) = ready!(Pin::new(&mut *op).poll_next(cx)) else {
                *slot = None;
                continue;
            };
            if !op.is_terminated() {
                let fd = res? as RawFd;
                // SAFETY: the kernel installed `fd` for this completion and handed it to us
                // alone; nothing else owns or closes it.
                return Poll::Ready(Ok(unsafe { socket2::Socket::from_raw_fd(fd) }));
            }
            // The last completion of the multishot: the socket, if any, is in the operation.
            let done = slot.take().map(SubmitMulti::try_take);
            res?;
            match done {
                Some(Ok(op)) => return Poll::Ready(Ok(op.into_inner())),
                _ => return Poll::Ready(Err(io::Error::other("multishot accept lost its socket"))),
            }
        }
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

type Receives = SubmitMultiManaged<RecvMulti<SharedFd<socket2::Socket>>>;

/// What the multishot receive produced next.
enum Received {
    Data(BufferRef),
    Eof,
    /// The receive ended without data (provided buffers ran out, or the kernel ended it): the
    /// bytes are still in the socket.
    Ended,
}

pub struct Stream {
    inner: compio::net::TcpStream,
    rx: Rx,
}

/// A connection's receive side.
#[derive(Default)]
pub struct Rx {
    /// The multishot receive into provided buffers, armed at the first read.
    recv: Option<Receives>,
    /// Bytes received and not yet handed out: a provided buffer and how much of it is taken.
    pending: Option<(BufferRef, usize)>,
}

/// The read half of a split [`Stream`].
pub struct ReadHalf<'a> {
    inner: &'a compio::net::TcpStream,
    rx: &'a mut Rx,
}

/// The write half of a split [`Stream`].
pub struct WriteHalf<'a>(&'a compio::net::TcpStream);

impl Stream {
    fn new(inner: compio::net::TcpStream) -> Stream {
        Stream { inner, rx: Rx::default() }
    }

    /// Connects with a ring operation; a connect that times out is cancelled and its socket
    /// closed when the future is dropped.
    pub(super) async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Stream> {
        match compio::time::timeout(limit, compio::net::TcpStream::connect(addr)).await {
            Ok(s) => Ok(Stream::new(s?)),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    /// Reads into the spare capacity of `buf`.
    pub(super) async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.rx.read(&self.inner, buf).await
    }

    /// See [`Rx::nothing_received`].
    pub(super) fn nothing_received(&mut self) -> bool {
        self.rx.nothing_received()
    }

    /// Waits holding no buffer (the kernel picks a provided one when bytes arrive), then
    /// copies them into a pooled buffer: a small one when they fit.
    pub(super) async fn read_idle(&mut self) -> (io::Result<usize>, Vec<u8>) {
        let rx = &mut self.rx;
        if rx.pending.is_none() {
            match rx.receive(&self.inner).await {
                Ok(Received::Data(b)) => rx.pending = Some((b, 0)),
                Ok(Received::Eof) => return (Ok(0), Vec::new()),
                Ok(Received::Ended) => {
                    let BufResult(res, buf) = (&self.inner).append(buf::take()).await;
                    return (res, buf);
                }
                Err(e) => return (Err(e), Vec::new()),
            }
        }
        let left = rx.pending.as_ref().map_or(0, |(b, at)| b.len() - at);
        let mut out = if left <= IDLE_READ { buf::take_idle() } else { buf::take() };
        let n = rx.take_pending(&mut out);
        (Ok(n), out)
    }

    pub(super) async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let BufResult(res, buf) = (&self.inner).write_all(buf).await;
        (res, buf)
    }

    /// Both halves, usable at once (the write half needs only the socket).
    pub(super) fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (ReadHalf { inner: &self.inner, rx: &mut self.rx }, WriteHalf(&self.inner))
    }
}

impl ReadHalf<'_> {
    pub(super) async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.rx.read(self.inner, buf).await
    }
}

impl WriteHalf<'_> {
    pub(super) async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let BufResult(res, buf) = self.0.write_all(buf).await;
        (res, buf)
    }
}

impl Rx {
    /// Whether nothing arrived since the last read: no bytes held back, and no completion of
    /// the multishot receive waiting. That receive stays armed while the connection is idle
    /// and takes what arrives out of the socket, where a peek no longer sees it.
    pub(super) fn nothing_received(&mut self) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let Some(recv) = self.recv.as_mut() else {
            return true;
        };
        // Data, the end of the stream, an error or the receive's end: whichever, the
        // connection is not reused (a real read polls it again with its own waker).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(recv).poll_next(&mut cx).is_pending()
    }

    async fn read(
        &mut self,
        inner: &compio::net::TcpStream,
        buf: Vec<u8>,
    ) -> (io::Result<usize>, Vec<u8>) {
        let mut buf = buf;
        if self.pending.is_none() {
            match self.receive(inner).await {
                Ok(Received::Data(b)) => self.pending = Some((b, 0)),
                Ok(Received::Eof) => return (Ok(0), buf),
                Ok(Received::Ended) => {
                    let mut r = inner;
                    let BufResult(res, buf) = r.append(buf).await;
                    return (res, buf);
                }
                Err(e) => return (Err(e), buf),
            }
        }
        let n = self.take_pending(&mut buf);
        (Ok(n), buf)
    }

    /// Moves pending bytes into the spare capacity of `buf`; the buffer goes back to the ring's
    /// pool once emptied.
    fn take_pending(&mut self, buf: &mut Vec<u8>) -> usize {
        let Some((b, at)) = &mut self.pending else { return 0 };
        let n = (buf.capacity() - buf.len()).min(b.len() - *at);
        buf.extend_from_slice(&b[*at..*at + n]);
        *at += n;
        if *at == b.len() {
            self.pending = None;
        }
        n
    }

    /// The next completion of the multishot receive, arming it first if needed.
    async fn receive(&mut self, inner: &compio::net::TcpStream) -> io::Result<Received> {
        if self.recv.is_none() {
            let fd = inner.to_shared_fd();
            let op = compio::runtime::Runtime::with_current(|rt| {
                let pool = rt.buffer_pool()?;
                // Length 0: each completion fills up to one whole provided buffer.
                let op = RecvMulti::new(fd, &pool, 0, RecvFlags::empty())?;
                io::Result::Ok(rt.submit_multi(op).into_managed(pool))
            })?;
            self.recv = Some(op);
        }
        let recv = self.recv.as_mut().expect("armed above");
        let next = poll_fn(|cx| Pin::new(&mut *recv).poll_next(cx)).await;
        if recv.is_terminated() {
            self.recv = None;
        }
        match next {
            Some(Ok(Some(b))) if !b.is_empty() => Ok(Received::Data(b)),
            Some(Ok(_)) => Ok(Received::Eof),
            // ENOBUFS, which compio reports as `ResourceBusy`.
            Some(Err(e)) if e.kind() == io::ErrorKind::ResourceBusy => Ok(Received::Ended),
            Some(Err(e)) => Err(e),
            None => Ok(Received::Ended),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}
