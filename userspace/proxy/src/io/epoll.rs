//! tokio on epoll: the same API as `uring.rs`, so the proxy can run where io_uring cannot.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(super) fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&rt, fut))
}

pub struct Listener(tokio::net::TcpListener);

impl Listener {
    pub(super) fn from_std(l: std::net::TcpListener) -> io::Result<Listener> {
        l.set_nonblocking(true)?;
        Ok(Listener(tokio::net::TcpListener::from_std(l)?))
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

pub struct Stream(tokio::net::TcpStream);

impl Stream {
    pub(super) async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Stream> {
        super::tokio_connect(addr, limit).await.map(Stream)
    }

    /// Reads into the spare capacity of `buf`.
    pub(super) async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let res = self.0.read_buf(&mut buf).await;
        (res, buf)
    }

    /// Waits for readiness holding no buffer, then reads into a pooled one.
    pub(super) async fn read_idle(&mut self) -> (io::Result<usize>, Vec<u8>) {
        loop {
            if let Err(e) = self.0.readable().await {
                return (Err(e), Vec::new());
            }
            let mut buf = super::buf::take();
            match self.0.try_read_buf(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => super::buf::give(buf),
                res => return (res, buf),
            }
        }
    }

    pub(super) async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let res = self.0.write_all(&buf).await;
        (res, buf)
    }

    /// [`read`](Self::read) through a shared reference, for a stream split in two halves.
    pub(super) async fn read_shared(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            if let Err(e) = self.0.readable().await {
                return (Err(e), buf);
            }
            match self.0.try_read_buf(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                res => return (res, buf),
            }
        }
    }

    /// [`write_all`](Self::write_all) through a shared reference, for a stream split in two
    /// halves.
    pub(super) async fn write_all_shared(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut at = 0;
        while at < buf.len() {
            if let Err(e) = self.0.writable().await {
                return (Err(e), buf);
            }
            match self.0.try_write(&buf[at..]) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
