//! Listening sockets: one per worker and address, SO_REUSEPORT, so the kernel spreads new
//! connections over the workers and no accept lock is shared.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections per socket.
const BACKLOG: i32 = 1024;

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
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// A plain listener (admin, built-in page): no port sharing.
pub fn bind_plain(addr: SocketAddr) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into()).with_context(|| format!("listening on {addr}"))?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}
