//! Splicing a client's TLS connection to a plain TCP connection, byte for byte in both
//! directions, for as long as either side has something to say: what an HTTP/1.1 connection
//! becomes after a `101 Switching Protocols` (a WebSocket), and what any handler that hands a
//! client over to another server would use.
//!
//! Each direction is a loop of one read and one write, with one pooled buffer each
//! ([`io::buf`]): a side that stops reading stops the other side's reads, so nothing queues up
//! beyond the buffers in flight (backpressure, no busy loop). A side's end of stream (the
//! client's close_notify or FIN, the server's FIN) is passed on as a half-close (FIN to the
//! server, close_notify and FIN to the client) and the other direction goes on until it ends
//! too. The splice also ends, abandoning both directions, when:
//! - nothing moved either way for `idle` (each transfer, either way, restarts the wait);
//! - a write does not complete within `write_timeout` (a peer that stopped reading);
//! - `stop` resolves: whoever may end the connection early (a drain, a filter's revocation)
//!   does it through this one future, which the splice only polls.

use std::{
    cell::Cell,
    future::Future,
    time::{Duration, Instant},
};

use crate::{io, tls::TlsConn};

/// Read size on the server side (pooled buffers, see [`io::buf`]).
const READ: usize = io::buf::SIZE;

/// The two directions of a splice, for byte counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the server it was spliced to.
    ClientToServer,
    /// From that server to the client.
    ServerToClient,
}

/// The limits of one splice.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest time with no byte moving either way.
    pub idle: Duration,
    /// Longest wait for one write to either side.
    pub write_timeout: Duration,
}

/// Why a splice ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum End {
    /// Both sides closed their direction.
    Closed,
    /// Nothing moved for [`Limits::idle`].
    Idle,
    /// `stop` resolved.
    Stopped,
    /// A side failed (reset, timed-out write, a client's TLS error).
    Failed(Side, std::io::Error),
    /// The client connection cannot be split (its TLS session failed before).
    Unusable,
}

/// Which side of a splice failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl End {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle",
            End::Stopped => "stopped",
            End::Failed(Side::Client, _) => "client failed",
            End::Failed(Side::Server, _) => "server failed",
            End::Unusable => "unusable",
        }
    }
}

/// Splices `client` and `server` until both directions ended, or the splice is ended (see the
/// module documentation). `from_client` and `from_server` are bytes already read from each
/// side (past the head that switched protocols): they go first. `count` is told every
/// transfer, as it happens.
///
/// The caller closes both connections afterwards: `client` with [`TlsConn::close`], which
/// knows whether a close_notify already went or may still go.
pub async fn splice(
    client: &mut TlsConn,
    from_client: &[u8],
    server: &mut io::Stream,
    from_server: &[u8],
    limits: Limits,
    stop: impl Future<Output = ()>,
    count: &dyn Fn(Direction, usize),
) -> End {
    let Some((mut c_read, mut c_write)) = client.split() else { return End::Unusable };
    let (mut s_read, mut s_write) = server.split();
    let last = Cell::new(Instant::now());
    let moved = |d: Direction, n: usize| {
        last.set(Instant::now());
        count(d, n);
    };

    let up = async {
        let mut buf = io::buf::take();
        buf.extend_from_slice(from_client);
        loop {
            if !buf.is_empty() {
                moved(Direction::ClientToServer, buf.len());
                let (res, b) = io::timeout(limits.write_timeout, s_write.write_all(buf))
                    .await
                    .map_err(|e| (Side::Server, std::io::Error::from(e)))?;
                buf = b;
                buf.clear();
                res.map_err(|e| (Side::Server, e))?;
            }
            match c_read.read(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    io::buf::give(buf);
                    return Err((Side::Client, e));
                }
            }
        }
        io::buf::give(buf);
        s_write.shutdown_write();
        Ok(())
    };

    let down = async {
        if !from_server.is_empty() {
            moved(Direction::ServerToClient, from_server.len());
            c_write.send(from_server).await.map_err(|e| (Side::Client, e))?;
        }
        let mut buf = io::buf::take();
        loop {
            let (res, b) = s_read.read(buf, READ).await;
            buf = b;
            match res {
                Ok(0) => break,
                Ok(n) => moved(Direction::ServerToClient, n),
                Err(e) => {
                    io::buf::give(buf);
                    return Err((Side::Server, e));
                }
            }
            let sent = c_write.send(&buf).await;
            buf.clear();
            if let Err(e) = sent {
                io::buf::give(buf);
                return Err((Side::Client, e));
            }
        }
        io::buf::give(buf);
        c_write.close().await.map_err(|e| (Side::Client, e))
    };

    // Wakes once per `idle` at most while bytes move, and ends the splice once a whole `idle`
    // went by without any.
    let idle = async {
        loop {
            let due = last.get() + limits.idle;
            let now = Instant::now();
            if now >= due {
                return;
            }
            io::sleep(due - now).await;
        }
    };

    tokio::select! {
        biased;
        () = stop => End::Stopped,
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => End::Closed,
            Err((side, e)) => End::Failed(side, e),
        },
        () = idle => End::Idle,
    }
}
