//! Listening sockets: one per worker and address, SO_REUSEPORT, so the kernel spreads new
//! connections over the workers and no accept lock is shared.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections per socket.
const BACKLOG: i32 = 1024;
/// How long the kernel holds a connection that has sent nothing before handing it to
/// accept() anyway (TCP_DEFER_ACCEPT, seconds).
const DEFER_ACCEPT_SECS: libc::c_int = 5;

/// `count` sockets bound to `addr` with SO_REUSEPORT. Port 0 picks one port for all of them.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let l = bind_one(addr).with_context(|| format!("listening on {addr}"))?;
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:443` and `0.0.0.0:443` can then both be configured.
        s.set_only_v6(true)?;
    }
    // Inherited by every accepted socket (see `bind_plain`).
    s.set_tcp_nodelay(true)?;
    // In TLS the client speaks first: a connection reaches accept() once its first bytes (the
    // ClientHello) are in. One whose hello the XDP floor turns into a reset, or that gives up
    // while its hello is being dropped, never costs the proxy an accept, a task or a buffer.
    set_defer_accept(&s, DEFER_ACCEPT_SECS)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

fn set_defer_accept(s: &Socket, secs: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and a c_int option value that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A plain listener (admin, built-in page): no port sharing.
pub fn bind_plain(addr: SocketAddr) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Inherited by every accepted socket: responses go out in few writes, and waiting for
    // ACKs (Nagle) would only add latency.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into()).with_context(|| format!("listening on {addr}"))?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}
