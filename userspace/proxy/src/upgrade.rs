//! Upgrades without a dropped connection: a running `outpost run` hands its listening sockets
//! to a new one (`outpost run --upgrade`, or the running one's own SIGUSR2), which serves from
//! them at once; the old one then drains.
//!
//! The sockets themselves change hands, not their addresses (as nginx on SIGUSR2, Envoy's hot
//! restart and Pingora do): connections the kernel has queued on them are accepted by whichever
//! process asks next, so none is refused or reset. Binding new SO_REUSEPORT sockets instead
//! would not do: the old process closing its own would reset what was queued on them.
//!
//! The exchange, over `<data_dir>/upgrade.sock` (a Unix socket, 0600: only the outpost user):
//! 1. the new process connects and sends `take`;
//! 2. the old one answers one line of JSON (the HTTPS addresses and how many sockets each, the
//!    admin address) with the descriptors in the same message (SCM_RIGHTS);
//! 3. the new process starts its workers on them and sends `ready`;
//! 4. the old one drains: its workers stop accepting (without `shutdown`, which would stop the
//!    shared socket for both), finish what they serve, answer the next request on each
//!    keep-alive connection with `Connection: close`, and exit. An XDP floor it attached stays
//!    attached and pinned, for the new process to own; its counters live in pinned maps and go
//!    on counting.
//!
//! If the new process fails before `ready`, the old one keeps serving as if nothing happened.

use std::{
    io::{BufRead as _, BufReader, IoSlice, IoSliceMut, Write as _},
    mem::MaybeUninit,
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::shared::Shared;

/// How long either side waits for the other at each step.
const STEP: Duration = Duration::from_secs(30);
/// Pause after a failed accept on the upgrade socket.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most descriptors one hand-over carries (the kernel's SCM_RIGHTS limit is 253).
const MAX_FDS: usize = 253;

/// The socket a running edge listens on for its successor.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("upgrade.sock")
}

/// What the old process describes alongside the descriptors, in their order.
#[derive(Serialize, Deserialize)]
struct Offer {
    /// Each HTTPS address, with how many sockets (one per worker) follow for it.
    https: Vec<(SocketAddr, usize)>,
    /// The admin listener's address; its socket comes last.
    admin: SocketAddr,
}

/// The listening sockets of the running edge, duplicated for its successor.
pub struct Handover {
    https: Vec<(SocketAddr, Vec<OwnedFd>)>,
    admin: (SocketAddr, OwnedFd),
}

impl Handover {
    /// Duplicates (the same sockets, new descriptors) of what this process listens on.
    pub fn new(https: &[(SocketAddr, Vec<&TcpListener>)], admin: &TcpListener) -> Result<Self> {
        let dup = |l: &TcpListener| -> Result<OwnedFd> { Ok(l.try_clone()?.into()) };
        let https = https
            .iter()
            .map(|(a, ls)| Ok((*a, ls.iter().map(|l| dup(l)).collect::<Result<Vec<_>>>()?)))
            .collect::<Result<Vec<_>>>()?;
        let count: usize = https.iter().map(|(_, v): &(_, Vec<_>)| v.len()).sum::<usize>() + 1;
        if count > MAX_FDS {
            bail!("{count} listening sockets are more than one hand-over carries ({MAX_FDS})");
        }
        Ok(Handover { https, admin: (admin.local_addr()?, dup(admin)?) })
    }
}

/// Serves the successor's side of the exchange on `<data_dir>/upgrade.sock` until one takes
/// over (then the drain starts) or the process ends. Runs on the control thread.
pub async fn offer(data_dir: PathBuf, handover: Handover, shared: Arc<Shared>) {
    let path = socket_path(&data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "no upgrade socket: upgrades need a restart");
            return;
        }
    };
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket: accept failed");
                crate::io::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Blocking I/O with timeouts on the control thread: an upgrade is rare, and nothing
        // else the control thread does is urgent for a few seconds.
        let result = conn.into_std().and_then(|c| {
            c.set_nonblocking(false)?;
            Ok(c)
        });
        match result.map_err(anyhow::Error::from).and_then(|c| give(c, &handover)) {
            Ok(()) => {
                tracing::info!(
                    "upgrade: the new process serves from our sockets; draining (no new \
                     connections; in-flight requests finish)"
                );
                shared.hand_over();
                // The socket file is the new process's now (it bound its own at that path).
                return;
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "upgrade failed; serving on"),
        }
    }
}

fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The old process's side: `take` in, the offer and the descriptors out, `ready` in.
fn give(mut conn: UnixStream, h: &Handover) -> Result<()> {
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "take" {
        bail!("the upgrade socket got {:?}, not `take`", line.trim());
    }
    let offer =
        Offer { https: h.https.iter().map(|(a, fds)| (*a, fds.len())).collect(), admin: h.admin.0 };
    let mut text = serde_json::to_vec(&offer)?;
    text.push(b'\n');
    let fds: Vec<_> = h
        .https
        .iter()
        .flat_map(|(_, fds)| fds.iter())
        .chain([&h.admin.1])
        .map(|f| f.as_fd())
        .collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        bail!("the descriptors do not fit the control message");
    }
    let sent = retry(|| {
        rustix::net::sendmsg(&conn, &[IoSlice::new(&text)], &mut control, SendFlags::empty())
    })?;
    if sent != text.len() {
        bail!("the offer went out short ({sent} of {} bytes)", text.len());
    }
    conn.flush()?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the new process did not say ready ({:?})", line.trim());
    }
    Ok(())
}

/// The sockets a new process took over, and the line to its predecessor.
pub struct Inherited {
    /// Per HTTPS address, its sockets (one per worker of the old process).
    pub https: Vec<(SocketAddr, Vec<TcpListener>)>,
    pub admin: (SocketAddr, TcpListener),
    conn: UnixStream,
}

impl Inherited {
    /// Tells the old process that this one serves: it drains now.
    pub fn ready(mut self) -> Result<()> {
        self.conn.write_all(b"ready\n").context("telling the old process we serve")
    }
}

/// The new process's side: takes the listening sockets of the edge running with `data_dir`.
pub fn take(data_dir: &Path) -> Result<Inherited> {
    let path = socket_path(data_dir);
    let conn = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to the running edge at {} (is it running with this data_dir?)",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    (&conn).write_all(b"take\n")?;
    let mut text = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = retry(|| {
        rustix::net::recvmsg(
            &conn,
            &mut [IoSliceMut::new(&mut text)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
    })
    .context("receiving the listening sockets")?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let text = &text[..got.bytes];
    let line =
        text.strip_suffix(b"\n").ok_or_else(|| anyhow!("a short offer from the old process"))?;
    let offer: Offer = serde_json::from_slice(line).context("reading the old process's offer")?;
    let wanted: usize = offer.https.iter().map(|(_, n)| n).sum::<usize>() + 1;
    if fds.len() != wanted {
        bail!("the old process sent {} sockets, not {wanted}", fds.len());
    }
    let mut fds = fds.into_iter();
    let mut https = Vec::new();
    for (addr, n) in offer.https {
        let socks: Vec<TcpListener> = fds.by_ref().take(n).map(TcpListener::from).collect();
        https.push((addr, socks));
    }
    let admin = TcpListener::from(fds.next().expect("counted above"));
    Ok(Inherited { https, admin: (offer.admin, admin), conn })
}

/// Runs `op` again when a signal interrupted it (EINTR), as std's own I/O does.
fn retry<T>(mut op: impl FnMut() -> rustix::io::Result<T>) -> std::io::Result<T> {
    loop {
        match op() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(Into::into),
        }
    }
}
