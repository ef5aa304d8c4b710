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
//!    admin address) with the descriptors in the same message (SCM_RIGHTS), then one line with
//!    its counters ([`Snapshot`]) and how long its drain may take;
//! 3. the new process adds those counters to its own, starts its workers on the sockets and
//!    sends `ready`;
//! 4. the old one drains: its workers stop accepting (without `shutdown`, which would stop the
//!    shared socket for both), finish what they serve, answer the next request on each
//!    keep-alive connection with `Connection: close`. An XDP floor it attached stays attached
//!    and pinned, for the new process to own; its counters live in pinned maps and go on
//!    counting;
//! 5. drained, the old one sends one more line, what it counted since its snapshot, which the
//!    new one adds in turn, and exits.
//!
//! So the counters of `/metrics` go on: from the hand-over the new process shows at least what
//! the old one had counted by then, and once the old one is gone, the two processes' sums.
//! Each wait is bounded; a snapshot that does not come (an older binary sends none, and says
//! so in its offer) or a new process gone before the last line only costs those counts.
//!
//! If the new process fails before `ready`, the old one keeps serving as if nothing happened
//! (the counters it sent were only a copy).

use std::{
    io::{self, BufRead as _, BufReader, Cursor, IoSlice, IoSliceMut, Read as _, Write as _},
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

use crate::{
    metrics::{Metrics, Snapshot},
    shared::Shared,
};

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
    /// A [`Counters`] line follows (false from a binary older than that line).
    #[serde(default)]
    counters: bool,
}

/// The old process's counters at the hand-over.
#[derive(Serialize, Deserialize)]
struct Counters {
    /// Its `shutdown_grace_ms`: the last line comes about that long after `ready`.
    drain_ms: u64,
    snapshot: Snapshot,
}

/// The listening sockets of the running edge, duplicated for its successor.
pub struct Handover {
    https: Vec<(SocketAddr, Vec<OwnedFd>)>,
    admin: (SocketAddr, OwnedFd),
    /// The drain's grace period, announced with the counters.
    grace: Duration,
}

impl Handover {
    /// Duplicates (the same sockets, new descriptors) of what this process listens on; `grace`
    /// bounds the drain after a hand-over.
    pub fn new(
        https: &[(SocketAddr, Vec<&TcpListener>)],
        admin: &TcpListener,
        grace: Duration,
    ) -> Result<Self> {
        let dup = |l: &TcpListener| -> Result<OwnedFd> { Ok(l.try_clone()?.into()) };
        let https = https
            .iter()
            .map(|(a, ls)| Ok((*a, ls.iter().map(|l| dup(l)).collect::<Result<Vec<_>>>()?)))
            .collect::<Result<Vec<_>>>()?;
        let count: usize = https.iter().map(|(_, v): &(_, Vec<_>)| v.len()).sum::<usize>() + 1;
        if count > MAX_FDS {
            bail!("{count} listening sockets are more than one hand-over carries ({MAX_FDS})");
        }
        Ok(Handover { https, admin: (admin.local_addr()?, dup(admin)?), grace })
    }
}

/// Serves the successor's side of the exchange on `<data_dir>/upgrade.sock` until one takes
/// over (then the drain starts, and the line to the successor is returned, for the drain's
/// counts) or the process ends. Runs on the control thread.
pub async fn offer(data_dir: PathBuf, handover: Handover, shared: Arc<Shared>) -> Option<Heir> {
    let path = socket_path(&data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "no upgrade socket: upgrades need a restart");
            return None;
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
        let given =
            result.map_err(anyhow::Error::from).and_then(|c| give(c, &handover, &shared.metrics));
        match given {
            Ok(heir) => {
                tracing::info!(
                    "upgrade: the new process serves from our sockets; draining (no new \
                     connections; in-flight requests finish)"
                );
                shared.hand_over();
                // The socket file is the new process's now (it bound its own at that path).
                return Some(heir);
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

/// The old process's side: `take` in, the offer and the descriptors out, the counters out,
/// `ready` in.
fn give(mut conn: UnixStream, h: &Handover, metrics: &Metrics) -> Result<Heir> {
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "take" {
        bail!("the upgrade socket got {:?}, not `take`", line.trim());
    }
    let offer = Offer {
        https: h.https.iter().map(|(a, fds)| (*a, fds.len())).collect(),
        admin: h.admin.0,
        counters: true,
    };
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
    // From here on what this process counts goes to the successor in the last line, and
    // its own `/metrics` shows the snapshot.
    let counters = Counters {
        drain_ms: h.grace.as_millis().try_into().unwrap_or(u64::MAX),
        snapshot: metrics.freeze(),
    };
    let acknowledged = send_line(&mut conn, &counters).and_then(|()| {
        line.clear();
        reader.read_line(&mut line)?;
        match line.trim() {
            "ready" => Ok(()),
            other => bail!("the new process did not say ready ({other:?})"),
        }
    });
    if let Err(e) = acknowledged {
        metrics.thaw();
        return Err(e);
    }
    Ok(Heir { conn, sent: counters.snapshot })
}

/// The line from a drained process to the one that took over: what it counted since the
/// hand-over goes there when the drain is done.
pub struct Heir {
    conn: UnixStream,
    /// What the successor has already.
    sent: Snapshot,
}

impl Heir {
    /// Sends what `metrics` counted since the hand-over (the workers are done). If the new
    /// process is gone or stuck, those counts are lost: this one exits all the same.
    pub fn send_rest(mut self, metrics: &Metrics) {
        let rest = metrics.snapshot().since(&self.sent);
        match send_line(&mut self.conn, &rest) {
            Ok(()) => tracing::info!("upgrade: sent the new process what the drain counted"),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "upgrade: the new process did not take what the drain counted"
            ),
        }
    }
}

/// One line of JSON (the socket's write timeout bounds it).
fn send_line(conn: &mut UnixStream, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_vec(value)?;
    text.push(b'\n');
    conn.write_all(&text)?;
    Ok(())
}

/// The line a new process reads its predecessor on: what the offer's message held past its
/// own line (nothing, in practice), then the socket.
type Lines = BufReader<io::Chain<Cursor<Vec<u8>>, UnixStream>>;

/// The sockets a new process took over, and the line to its predecessor.
pub struct Inherited {
    /// Per HTTPS address, its sockets (one per worker of the old process).
    pub https: Vec<(SocketAddr, Vec<TcpListener>)>,
    pub admin: (SocketAddr, TcpListener),
    conn: Lines,
    /// Where the predecessor's counters went, and how long its drain may take; `None` when
    /// it sent none.
    counters: Option<(Arc<Metrics>, Duration)>,
}

impl Inherited {
    /// Tells the old process that this one serves: it drains now. A thread then waits (at
    /// most the old process's grace period and [`STEP`]) for what its drain counts.
    pub fn ready(self) -> Result<()> {
        // Sockets left here (addresses no longer in `listen`) close now, with this.
        let Inherited { mut conn, counters, .. } = self;
        let mut socket: &UnixStream = conn.get_ref().get_ref().1;
        socket.write_all(b"ready\n").context("telling the old process we serve")?;
        let Some((metrics, drain)) = counters else { return Ok(()) };
        std::thread::Builder::new().name("outpost-upgrade".into()).spawn(move || {
            match rest(&mut conn, drain + STEP) {
                Ok(rest) => {
                    metrics.absorb(&rest);
                    tracing::info!("upgrade: added what the old process counted while draining");
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "upgrade: the counts of the old process's drain are lost"
                ),
            }
        })?;
        Ok(())
    }
}

/// What the old process counted while draining, sent when it is done.
fn rest(conn: &mut Lines, limit: Duration) -> Result<Snapshot> {
    conn.get_ref().get_ref().1.set_read_timeout(Some(limit))?;
    read_line(conn).context("waiting for the old process's last counts")
}

/// One line of JSON; end of file is an error.
fn read_line<T: serde::de::DeserializeOwned>(lines: &mut Lines) -> Result<T> {
    let mut line = String::new();
    if lines.read_line(&mut line)? == 0 || !line.ends_with('\n') {
        bail!("the old process closed the line");
    }
    Ok(serde_json::from_str(&line)?)
}

/// The new process's side: takes the listening sockets of the edge running with `data_dir`,
/// and adds the counters it sends to `metrics`.
pub fn take(data_dir: &Path, metrics: &Arc<Metrics>) -> Result<Inherited> {
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
    let end = text
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| anyhow!("a short offer from the old process"))?;
    let offer: Offer =
        serde_json::from_slice(&text[..end]).context("reading the old process's offer")?;
    let mut conn = BufReader::new(Cursor::new(text[end + 1..].to_vec()).chain(conn));
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
    let mut counters = None;
    if offer.counters {
        let c: Counters = read_line(&mut conn).context("reading the old process's counters")?;
        // Before this process serves: no scrape of it shows less than the old one had.
        metrics.absorb(&c.snapshot);
        counters = Some((metrics.clone(), Duration::from_millis(c.drain_ms)));
    }
    Ok(Inherited { https, admin: (offer.admin, admin), conn, counters })
}

/// Runs `op` again when a signal interrupted it (EINTR), as std's own I/O does.
fn retry<T>(mut op: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener, time::Instant};

    use super::*;
    use crate::metrics::Proto;

    fn requests(m: &Metrics) -> u64 {
        m.snapshot()
            .counters
            .get("outpost_requests_total{class=\"2xx\",proto=\"http/1.1\"}")
            .copied()
            .unwrap_or(0)
    }

    /// Both sides of the exchange in one process: the sockets and the counters change hands,
    /// and what the old side counts after its snapshot follows once it is done.
    #[test]
    fn the_counters_go_with_the_sockets() {
        let dir = outpost_testkit::TempDir::new("upgrade-exchange");
        let https = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = https.local_addr().unwrap();
        let handover =
            Handover::new(&[(at, vec![&https])], &admin, Duration::from_millis(100)).unwrap();
        let listener = UnixListener::bind(socket_path(&dir.0)).unwrap();
        let old = Metrics::new();
        for _ in 0..5 {
            old.request(Proto::Http11, 200, false);
        }
        let old_side = {
            let old = old.clone();
            std::thread::spawn(move || {
                let (conn, _) = listener.accept().unwrap();
                let heir = give(conn, &handover, &old).unwrap();
                // The drain: three more, then the rest goes out.
                for _ in 0..3 {
                    old.request(Proto::Http11, 200, false);
                }
                heir.send_rest(&old);
            })
        };
        let new = Metrics::new();
        new.request(Proto::Http11, 200, false);
        let inherited = take(&dir.0, &new).unwrap();
        assert_eq!(inherited.https.len(), 1);
        assert_eq!(inherited.https[0].0, at);
        assert_eq!(requests(&new), 6, "seeded before serving");
        inherited.ready().unwrap();
        old_side.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while requests(&new) < 9 {
            assert!(Instant::now() < deadline, "the rest never came: {}", requests(&new));
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(requests(&new), 9, "5 + 3 from the old process, 1 of its own");
    }

    /// An older binary's offer has no `counters`: none are waited for.
    #[test]
    fn an_offer_without_counters_reads_as_none() {
        let o: Offer = serde_json::from_str(r#"{"https":[],"admin":"127.0.0.1:9901"}"#).unwrap();
        assert!(!o.counters);
    }
}
