//! Which host a new connection goes to, for a URL naming several
//! (`postgres://h1,h2/db?target_session_attrs=read-write`): the current primary, found again by
//! itself after a failover.
//!
//! tokio-postgres walks a host list too, but always from the first host, and bounds only each
//! TCP connect. A host that accepts TCP and then says nothing (a frozen server, a proxy in front
//! of a dead one) stalls its walk until the pool gives up, so the next host is never tried; a
//! host whose packets vanish costs every new connection its whole connect timeout, longer than
//! an operation may wait, so after a failover the pool would never get a connection at all.
//! Here each host gets its own bound (`connect_timeout_ms`, covering TCP, startup,
//! authentication and the read-write check), the walk starts at the host that last accepted,
//! and it runs as a task of its own: it finishes, and remembers the host that answered, even
//! when the operation that needed the connection stopped waiting.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_postgres::{config::Host, tls::NoTlsStream, Client, Config, Connection, NoTls, Socket};

use crate::StoreError;

/// The hosts of one URL, each as a config of its own.
pub(crate) struct Hosts {
    /// One single-host config per host, in the URL's order.
    each: Vec<Config>,
    /// `host:port` per host, for messages.
    shown: Vec<String>,
    /// The host that last accepted a connection: tried first.
    preferred: AtomicUsize,
    /// Bound on one host's attempt.
    limit: Duration,
    /// Why the last walk found no host, one clause per host (for the error at open).
    last_failure: Mutex<Option<String>>,
}

/// A walk that found no host: the last driver error (None when every host timed out) and one
/// clause per host.
pub(crate) struct Failure {
    pub(crate) last: Option<tokio_postgres::Error>,
    pub(crate) summary: String,
}

impl Hosts {
    /// Splits `c` into one config per host; `limit` bounds each host's attempt. Refuses a
    /// config tokio-postgres would refuse at connect time (no host, a port count that matches
    /// neither one nor the host count), so `outpost check` reports it.
    pub(crate) fn new(c: &Config, limit: Duration) -> Result<Hosts, StoreError> {
        let n = c.get_hosts().len().max(c.get_hostaddrs().len());
        if n == 0 {
            return Err(StoreError::Config("the PostgreSQL url names no host".into()));
        }
        let (hosts, addrs) = (c.get_hosts().len(), c.get_hostaddrs().len());
        if hosts != 0 && addrs != 0 && hosts != addrs {
            return Err(StoreError::Config(format!(
                "the PostgreSQL url names {hosts} hosts but {addrs} hostaddrs"
            )));
        }
        let ports = c.get_ports().len();
        if ports > 1 && ports != n {
            return Err(StoreError::Config(format!(
                "the PostgreSQL url names {n} hosts but {ports} ports: give one port for all, \
                 or one per host"
            )));
        }
        let each: Vec<Config> = (0..n).map(|i| single_host(c, i)).collect();
        let shown = each.iter().map(show).collect();
        Ok(Hosts {
            each,
            shown,
            preferred: AtomicUsize::new(0),
            limit,
            last_failure: Mutex::new(None),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.each.len()
    }

    /// The longest a walk can take: every host timing out.
    pub(crate) fn walk_limit(&self) -> Duration {
        self.limit * u32::try_from(self.len()).unwrap_or(u32::MAX)
    }

    /// Why the last walk failed, host by host.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connects to the first host that accepts (read-write, if the URL asks for it), starting
    /// with the one that accepted last, then the others in the URL's order.
    pub(crate) async fn connect(
        &self,
    ) -> Result<(Client, Connection<Socket, NoTlsStream>), Failure> {
        let first = self.preferred.load(Ordering::Relaxed).min(self.len() - 1);
        let order = std::iter::once(first).chain((0..self.len()).filter(|&i| i != first));
        let mut why = Vec::with_capacity(self.len());
        let mut last = None;
        for i in order {
            match tokio::time::timeout(self.limit, self.each[i].connect(NoTls)).await {
                Ok(Ok(pair)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(pair);
                }
                Ok(Err(e)) => {
                    why.push(format!("{}: {}", self.shown[i], super::chain(&e)));
                    last = Some(e);
                }
                Err(_) => why.push(format!("{}: no answer within {:?}", self.shown[i], self.limit)),
            }
        }
        let summary = why.join("; ");
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary.clone());
        Err(Failure { last, summary })
    }
}

/// The pool's way of connecting: a walk over [`Hosts`], spawned so that it completes even when
/// the checkout waiting on it is dropped.
pub(crate) struct Walk(pub(crate) Arc<Hosts>);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl deadpool_postgres::Connect for Walk {
    fn connect(
        &self,
        _: &Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let hosts = self.0.clone();
        let walk = tokio::spawn(async move {
            let (client, connection) = hosts.connect().await.map_err(|f| f.into_error())?;
            // Ends when the server goes away or the client is dropped (deadpool aborts it too).
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok((client, driver))
        });
        // A JoinError means the store's runtime is stopping: no connection either way.
        Box::pin(async move { walk.await.unwrap_or_else(|_| Err(timed_out())) })
    }
}

impl Failure {
    fn into_error(self) -> tokio_postgres::Error {
        self.last.unwrap_or_else(timed_out)
    }
}

/// tokio-postgres's own "timeout waiting for server": the driver offers no other way to make
/// an error of its type, and the `postgres` crate builds its timeouts with this one too.
fn timed_out() -> tokio_postgres::Error {
    tokio_postgres::Error::__private_api_timeout()
}

/// Host `i` of `c` (with its hostaddr and port) and every other setting of `c`.
fn single_host(c: &Config, i: usize) -> Config {
    let mut one = Config::new();
    if let Some(user) = c.get_user() {
        one.user(user);
    }
    if let Some(password) = c.get_password() {
        one.password(password);
    }
    if let Some(db) = c.get_dbname() {
        one.dbname(db);
    }
    if let Some(options) = c.get_options() {
        one.options(options);
    }
    if let Some(name) = c.get_application_name() {
        one.application_name(name);
    }
    match c.get_hosts().get(i) {
        Some(Host::Tcp(h)) => {
            one.host(h);
        }
        Some(Host::Unix(path)) => {
            one.host_path(path);
        }
        None => {}
    }
    if let Some(addr) = c.get_hostaddrs().get(i) {
        one.hostaddr(*addr);
    }
    if let Some(port) = c.get_ports().get(i).or(c.get_ports().first()) {
        one.port(*port);
    }
    if let Some(t) = c.get_connect_timeout() {
        one.connect_timeout(*t);
    }
    if let Some(t) = c.get_tcp_user_timeout() {
        one.tcp_user_timeout(*t);
    }
    one.keepalives(c.get_keepalives()).keepalives_idle(c.get_keepalives_idle());
    if let Some(t) = c.get_keepalives_interval() {
        one.keepalives_interval(t);
    }
    if let Some(n) = c.get_keepalives_retries() {
        one.keepalives_retries(n);
    }
    one.ssl_mode(c.get_ssl_mode())
        .ssl_negotiation(c.get_ssl_negotiation())
        .target_session_attrs(c.get_target_session_attrs())
        .channel_binding(c.get_channel_binding())
        .load_balance_hosts(c.get_load_balance_hosts());
    one
}

/// `host:port` of a single-host config.
fn show(c: &Config) -> String {
    let port = c.get_ports().first().copied().unwrap_or(5432);
    match (c.get_hosts().first(), c.get_hostaddrs().first()) {
        (Some(Host::Tcp(h)), _) if h.contains(':') => format!("[{h}]:{port}"),
        (Some(Host::Tcp(h)), _) => format!("{h}:{port}"),
        (Some(Host::Unix(p)), _) => format!("{}:{port}", p.display()),
        (None, Some(a)) if a.is_ipv6() => format!("[{a}]:{port}"),
        (None, Some(a)) => format!("{a}:{port}"),
        (None, None) => format!("?:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Config {
        url.parse().unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn each_host_keeps_every_other_setting() {
        let query = "connect_timeout=3&target_session_attrs=read-write&application_name=edge\
                     &keepalives_idle=20&options=-c%20x%3Dy&sslmode=disable&channel_binding=disable\
                     &load_balance_hosts=disable&tcp_user_timeout=5";
        let multi = parse(&format!("postgres://u:pw@a:1,b:2,[::1]:3/db?{query}"));
        let hosts = Hosts::new(&multi, Duration::from_secs(1)).expect("hosts");
        assert_eq!(hosts.shown, ["a:1", "b:2", "[::1]:3"]);
        for (i, host) in ["a:1", "b:2", "[::1]:3"].iter().enumerate() {
            let alone = parse(&format!("postgres://u:pw@{host}/db?{query}"));
            assert_eq!(
                format!("{:?}", hosts.each[i]),
                format!("{alone:?}"),
                "host {i} of the multi-host url"
            );
        }
        // In a URL, a host without a port gets the default; in key=value form one port serves
        // every host.
        let hosts = Hosts::new(&parse("postgresql://a,b:6543/db"), Duration::from_secs(1));
        assert_eq!(hosts.expect("hosts").shown, ["a:5432", "b:6543"]);
        let hosts = Hosts::new(&parse("host=a,b port=6543 dbname=db"), Duration::from_secs(1));
        assert_eq!(hosts.expect("hosts").shown, ["a:6543", "b:6543"]);
    }

    #[test]
    fn refuses_what_the_driver_would_refuse_at_connect() {
        let limit = Duration::from_secs(1);
        let err = Hosts::new(&parse("host=a,b,c port=1,2 dbname=db"), limit).err();
        assert!(
            matches!(&err, Some(StoreError::Config(m)) if m.contains("3 hosts but 2 ports")),
            "{err:?}"
        );
        let err = Hosts::new(&parse("postgres:///db"), limit).err();
        assert!(matches!(&err, Some(StoreError::Config(m)) if m.contains("no host")), "{err:?}");
    }
}
