//! The I/O seam: every call that depends on the runtime goes through here.
//!
//! Three backends with one API: [`Backend::Uring`] (tokio-uring: one io_uring per worker thread,
//! completion-based reads and writes), [`Backend::Compio`] (compio: the same, plus multishot
//! accept and receive into provided buffers) and [`Backend::Epoll`] (plain tokio on a
//! current-thread runtime). The rest of the proxy never names a runtime crate: each lives in its
//! own file here.
//!
//! The API is shaped for completion I/O: reads and writes take an owned buffer and give it
//! back, so the kernel can own it while the operation is in flight. Every backend runs one
//! single-threaded runtime per thread, so tasks are `!Send`; [`spawn`], [`timeout`] and
//! [`sleep`] go to the runtime of the calling thread. tokio's own types (`tokio::sync`,
//! `tokio::select!`, and tokio timers and sockets in handlers) work on every backend: the tokio
//! backends are tokio, and a compio worker enters the handle of a tokio runtime (`compio.rs`).
//!
//! Cancellation: dropping a uring read does not cancel it (the kernel keeps the buffer and the
//! file until it completes). The proxy only ever drops a read to close the connection, and
//! [`Stream`] shuts the socket down when it is dropped, which completes such reads at once.
//! compio cancels a dropped operation; a connection's multishot receive stays armed across
//! reads until its [`Stream`] goes.

pub mod buf;
mod compio;
mod epoll;
mod uring;

use std::{
    cell::Cell,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

/// Which runtime drives sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// tokio-uring: reads, writes and accepts are io_uring operations.
    Uring,
    /// tokio on epoll.
    Epoll,
    /// compio: io_uring with multishot accept and receive into provided buffers.
    Compio,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
            Backend::Compio => "compio",
        }
    }

    /// Whether this backend can start on this machine (io_uring may be disabled by
    /// `kernel.io_uring_disabled`, seccomp or a memlock limit).
    pub fn probe(self) -> io::Result<()> {
        match self {
            Backend::Uring => uring::probe(),
            Backend::Epoll => Ok(()),
            Backend::Compio => compio::probe(),
        }
    }

    /// Runs `fut` to completion on a new runtime of this backend, on the calling thread. Tasks
    /// still running when it returns are dropped.
    pub fn block_on<F: Future>(self, fut: F) -> io::Result<F::Output> {
        let _current = CurrentGuard::set(self);
        match self {
            Backend::Uring => uring::block_on(fut),
            Backend::Epoll => epoll::block_on(fut),
            Backend::Compio => compio::block_on(fut),
        }
    }
}

thread_local! {
    /// The backend whose runtime runs on this thread, for calls that create sockets.
    static CURRENT: Cell<Option<Backend>> = const { Cell::new(None) };
}

struct CurrentGuard(Option<Backend>);

impl CurrentGuard {
    fn set(b: Backend) -> CurrentGuard {
        CurrentGuard(CURRENT.with(|c| c.replace(Some(b))))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

fn current() -> io::Result<Backend> {
    CURRENT.with(Cell::get).ok_or_else(|| io::Error::other("no outpost runtime on this thread"))
}

/// A listening socket registered with the current thread's runtime.
pub struct Listener(ListenerInner);

enum ListenerInner {
    Uring(uring::Listener),
    Epoll(epoll::Listener),
    Compio(compio::Listener),
}

impl Listener {
    /// Takes over a bound, listening socket. Must run inside [`Backend::block_on`].
    pub fn from_std(l: std::net::TcpListener) -> io::Result<Listener> {
        Ok(Listener(match current()? {
            Backend::Uring => ListenerInner::Uring(uring::Listener::from_std(l)?),
            Backend::Epoll => ListenerInner::Epoll(epoll::Listener::from_std(l)?),
            Backend::Compio => ListenerInner::Compio(compio::Listener::from_std(l)?),
        }))
    }

    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (s, a) = match &self.0 {
            ListenerInner::Uring(l) => l.accept().await.map(|(s, a)| (Stream::Uring(s), a))?,
            ListenerInner::Epoll(l) => l.accept().await.map(|(s, a)| (Stream::Epoll(s), a))?,
            ListenerInner::Compio(l) => {
                l.accept().await.map(|(s, a)| (Stream::Compio(Box::new(s)), a))?
            }
        };
        // No TCP_NODELAY call here: accepted sockets inherit it from the listener, which
        // `listen` sets (one setsockopt per listener, not one per connection).
        Ok((s, a))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            ListenerInner::Uring(l) => l.local_addr(),
            ListenerInner::Epoll(l) => l.local_addr(),
            ListenerInner::Compio(l) => l.local_addr(),
        }
    }

    /// Stops listening: the kernel refuses new connections to this socket at once and a
    /// pending accept completes with an error (Linux: `shutdown` on a listening socket), so no
    /// connection is accepted only to be dropped.
    pub fn close(&self) {
        let fd = match &self.0 {
            ListenerInner::Uring(l) => l.as_raw_fd(),
            ListenerInner::Epoll(l) => l.as_raw_fd(),
            ListenerInner::Compio(l) => l.as_raw_fd(),
        };
        // SAFETY: a socket this listener owns; shutdown takes no memory.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// Buffer an idle io_uring read holds: a request that fits one small TLS record arrives in
/// one read (nginx's `client_header_buffer_size` is 1 KiB for the same reason). Just under
/// 1 KiB: glibc serves up to 1032 bytes from its per-thread cache; a larger request goes
/// through its bins and can trigger a consolidation of the fast bins on every request.
pub const IDLE_READ: usize = 1000;

/// A connected TCP socket. Dropping it shuts the socket down (see the module docs).
pub enum Stream {
    Uring(uring::Stream),
    Epoll(epoll::Stream),
    /// Boxed: compio's stream is 208 bytes against tokio-uring's 8, and a stream is moved (into
    /// and out of the pool, through the request path's futures) several times a request.
    Compio(Box<compio::Stream>),
}

impl Stream {
    /// Connects to `addr` within `limit`.
    pub async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Stream> {
        let s = match current()? {
            Backend::Uring => Stream::Uring(uring::Stream::connect(addr, limit).await?),
            Backend::Epoll => Stream::Epoll(epoll::Stream::connect(addr, limit).await?),
            Backend::Compio => {
                Stream::Compio(Box::new(compio::Stream::connect(addr, limit).await?))
            }
        };
        s.set_nodelay();
        Ok(s)
    }

    /// Reads once into the spare capacity of `buf` (at least `want` bytes of it, reserved
    /// first), appending. `Ok(0)` is end of stream.
    pub async fn read(&mut self, mut buf: Vec<u8>, want: usize) -> (io::Result<usize>, Vec<u8>) {
        buf.reserve(want.max(1));
        match self {
            Stream::Uring(s) => s.read(buf).await,
            Stream::Epoll(s) => s.read(buf).await,
            Stream::Compio(s) => s.read(buf).await,
        }
    }

    /// Reads once when the connection may stay idle for long (waiting for the next request):
    /// no full-size buffer is held while nothing arrives. epoll waits for readiness with no
    /// buffer, then reads into a pooled one; compio's receive holds none either (the kernel
    /// picks a provided buffer when bytes arrive); tokio-uring must lend the kernel a buffer for
    /// the whole wait, so it lends a small one ([`IDLE_READ`] bytes) and the caller reads the
    /// rest of a larger message with [`read`](Self::read). `Ok(0)` is end of stream.
    pub async fn read_idle(&mut self) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Uring(s) => s.read(buf::take_idle()).await,
            Stream::Epoll(s) => s.read_idle().await,
            Stream::Compio(s) => s.read_idle().await,
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if buf.is_empty() {
            return (Ok(()), buf);
        }
        match self {
            Stream::Uring(s) => s.write_all(buf).await,
            Stream::Epoll(s) => s.write_all(buf).await,
            Stream::Compio(s) => s.write_all(buf).await,
        }
    }

    /// Both directions at once: a read and a write may be in flight together (a splice, an
    /// HTTP/2 connection; see `tls::TlsConn::split`). Each half keeps the rules of the whole: an
    /// owned buffer per operation, a dropped read only to close the connection.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        let fd = self.fd();
        let (r, w) = match self {
            Stream::Uring(s) => (ReadInner::Uring(&*s), WriteInner::Uring(&*s)),
            Stream::Epoll(s) => (ReadInner::Epoll(&*s), WriteInner::Epoll(&*s)),
            Stream::Compio(s) => {
                let (r, w) = s.split();
                (ReadInner::Compio(r), WriteInner::Compio(w))
            }
        };
        (ReadHalf(r), WriteHalf { inner: w, fd })
    }

    fn fd(&self) -> i32 {
        match self {
            Stream::Uring(s) => s.as_raw_fd(),
            Stream::Epoll(s) => s.as_raw_fd(),
            Stream::Compio(s) => s.as_raw_fd(),
        }
    }

    /// This end's address (for an accepted socket, where the client reached us, even when the
    /// listener is bound to a wildcard address).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        // SAFETY: a socket this stream owns, borrowed for the call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd()) };
        socket2::SockRef::from(&fd)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Sends FIN; reads still work (lingering close).
    pub fn shutdown_write(&self) {
        // SAFETY: a socket this stream owns.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
    }

    fn set_nodelay(&self) {
        let one: libc::c_int = 1;
        // SAFETY: a socket this stream owns; the option value outlives the call.
        unsafe {
            libc::setsockopt(
                self.fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }

    /// For a pooled idle connection: true when the peer has neither closed it nor sent
    /// anything unasked (either makes the connection unusable for the next request).
    pub fn idle_and_open(&mut self) -> bool {
        // compio's receive may have taken such bytes out of the socket already.
        if let Stream::Compio(s) = self {
            if !s.nothing_received() {
                return false;
            }
        }
        let mut b = 0u8;
        // SAFETY: one byte of valid memory; MSG_PEEK leaves the stream untouched.
        let n = unsafe {
            libc::recv(
                self.fd(),
                (&mut b as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

/// The read side of a [`Stream`] (see [`Stream::split`]).
pub struct ReadHalf<'a>(ReadInner<'a>);

enum ReadInner<'a> {
    Uring(&'a uring::Stream),
    Epoll(&'a epoll::Stream),
    Compio(compio::ReadHalf<'a>),
}

impl ReadHalf<'_> {
    /// As [`Stream::read`].
    pub async fn read(&mut self, mut buf: Vec<u8>, want: usize) -> (io::Result<usize>, Vec<u8>) {
        buf.reserve(want.max(1));
        match &mut self.0 {
            ReadInner::Uring(s) => s.read(buf).await,
            ReadInner::Epoll(s) => s.read_shared(buf).await,
            ReadInner::Compio(s) => s.read(buf).await,
        }
    }
}

/// The write side of a [`Stream`] (see [`Stream::split`]).
pub struct WriteHalf<'a> {
    inner: WriteInner<'a>,
    fd: i32,
}

enum WriteInner<'a> {
    Uring(&'a uring::Stream),
    Epoll(&'a epoll::Stream),
    Compio(compio::WriteHalf<'a>),
}

impl WriteHalf<'_> {
    /// As [`Stream::write_all`].
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if buf.is_empty() {
            return (Ok(()), buf);
        }
        match &mut self.inner {
            WriteInner::Uring(s) => s.write_all(buf).await,
            WriteInner::Epoll(s) => s.write_all_shared(buf).await,
            WriteInner::Compio(s) => s.write_all(buf).await,
        }
    }

    /// Sends FIN: this direction is done; the other goes on (a half-close).
    pub fn shutdown_write(&self) {
        // SAFETY: a socket the stream owns, borrowed for as long as this half.
        unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: a socket this stream owns. Completes any read the kernel still holds.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
    }
}

/// Connects through the runtime's tokio reactor within `limit` (both tokio backends start
/// there).
async fn tokio_connect(addr: SocketAddr, limit: Duration) -> io::Result<tokio::net::TcpStream> {
    tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Runs `fut` for at most `limit`.
///
/// A future rather than an `async fn`: an `async fn` keeps its argument `fut` and the future
/// it awaits side by side in its state, so every wrapped future would take its size twice in
/// the task that awaits it (an idle connection's task is sized by its timed read).
// Inlined, like the constructors below, so that the future is built where the caller keeps it:
// out of line, each I/O operation's future (up to 550 bytes) was copied twice more on its way.
#[inline(always)]
pub fn timeout<F: Future>(limit: Duration, fut: F) -> Timeout<F> {
    let timer = match CURRENT.with(Cell::get) {
        Some(Backend::Compio) => {
            Timer::Compio { sleep: compio::sleep_until(std::time::Instant::now() + limit) }
        }
        _ => Timer::Tokio { sleep: tokio::time::sleep(limit) },
    };
    Timeout { fut, timer }
}

/// Runs `fut` until `deadline` (see [`timeout`]).
#[inline(always)]
pub fn timeout_at<F: Future>(deadline: std::time::Instant, fut: F) -> Timeout<F> {
    Timeout { fut, timer: timer_until(deadline) }
}

/// A timer of this thread's runtime that ends at `deadline`.
#[inline(always)]
fn timer_until(deadline: std::time::Instant) -> Timer {
    match CURRENT.with(Cell::get) {
        Some(Backend::Compio) => Timer::Compio { sleep: compio::sleep_until(deadline) },
        _ => Timer::Tokio { sleep: tokio::time::sleep_until(deadline.into()) },
    }
}

/// A timer for many operations in turn, each with its own time limit ([`Deadline::within`]):
/// one per connection and purpose (the client's writes, the waits for its requests, the waits
/// on its origin), whose limit is the same each time, so that each deadline is later than the
/// one before.
///
/// tokio moves a timer to a later deadline with one atomic update (its wheel finds the new
/// deadline when the old one comes, and files the timer again there), where a timer per
/// operation ([`timeout`]) entered the runtime's wheel and left it again every time: on a
/// keep-alive connection, a few times a request. compio has no such move: its timer is
/// replaced in place each time.
#[derive(Default)]
pub struct Deadline(Option<Pin<Box<Timer>>>);

impl Deadline {
    /// Runs `fut` for at most `limit` (as [`timeout`]), on this timer.
    #[inline(always)]
    pub fn within<F: Future>(&mut self, limit: Duration, fut: F) -> Timeout<F, Pin<&mut Timer>> {
        self.until(std::time::Instant::now() + limit, fut)
    }

    /// Runs `fut` until `deadline` (as [`timeout_at`]), on this timer.
    #[inline(always)]
    pub fn until<F: Future>(
        &mut self,
        deadline: std::time::Instant,
        fut: F,
    ) -> Timeout<F, Pin<&mut Timer>> {
        let timer = match (&mut self.0, CURRENT.with(Cell::get)) {
            (Some(timer), Some(Backend::Compio)) => {
                timer.set(timer_until(deadline));
                timer
            }
            (Some(timer), _) => {
                if let TimerProj::Tokio { sleep } = timer.as_mut().project() {
                    sleep.reset(deadline.into());
                }
                timer
            }
            (slot @ None, _) => slot.insert(Box::pin(timer_until(deadline))),
        };
        Timeout { fut, timer: timer.as_mut() }
    }
}

pin_project_lite::pin_project! {
    /// [`timeout`], [`timeout_at`] and [`Deadline`]: the output of the wrapped future, or
    /// [`Elapsed`]. The future is held beside its timer (its own, or a [`Deadline`]'s) rather
    /// than inside tokio's `Timeout`, which would move it once more.
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<F, T = Timer> {
        #[pin]
        fut: F,
        #[pin]
        timer: T,
    }
}

pin_project_lite::pin_project! {
    /// The timer of the runtime on the thread that made it.
    #[project = TimerProj]
    pub enum Timer {
        Tokio { #[pin] sleep: tokio::time::Sleep },
        Compio { sleep: compio::Sleep },
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            TimerProj::Tokio { sleep } => sleep.poll(cx),
            TimerProj::Compio { sleep } => sleep.as_mut().poll(cx),
        }
    }
}

impl<F: Future, T: Future<Output = ()>> Future for Timeout<F, T> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        this.timer.poll(cx).map(|()| Err(Elapsed))
    }
}

pub async fn sleep(d: Duration) {
    match CURRENT.with(Cell::get) {
        Some(Backend::Compio) => compio::sleep(d).await,
        _ => tokio::time::sleep(d).await,
    }
}

/// The time limit ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for io::Error {
    fn from(_: Elapsed) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "timed out")
    }
}

/// Spawns a task on this thread's runtime.
pub fn spawn<F: Future + 'static>(fut: F) -> JoinHandle<F::Output> {
    JoinHandle(match CURRENT.with(Cell::get) {
        Some(Backend::Compio) => JoinInner::Compio(compio::spawn(fut)),
        _ => JoinInner::Tokio(tokio::task::spawn_local(fut)),
    })
}

/// A spawned task. Awaiting it gives the task's output, or `Err` if it panicked or was
/// cancelled; dropping it lets the task run on, detached.
pub struct JoinHandle<T>(JoinInner<T>);

enum JoinInner<T> {
    Tokio(tokio::task::JoinHandle<T>),
    Compio(compio::JoinHandle<T>),
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            JoinInner::Tokio(h) => Pin::new(h).poll(cx).map(|r| r.map_err(|_| JoinError)),
            JoinInner::Compio(h) => Pin::new(h).poll(cx).map(|r| r.map_err(|()| JoinError)),
        }
    }
}

/// The task panicked or was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinError;
