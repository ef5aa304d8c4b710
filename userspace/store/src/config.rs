//! `[store]` in outpost.toml, and the one place that hides a PostgreSQL password.

use std::{fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::StoreError;

/// `[store]` in outpost.toml: where shared state lives. With no `url` (and no `url_file`) the
/// store is embedded SQLite in the data directory; with a `postgres://` URL every edge node
/// that points at the same database shares it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Default: none (embedded SQLite at `<data_dir>/outpost.db`). A PostgreSQL URL,
    /// `postgres://user:password@host:port/dbname`, to share the store between edge nodes.
    /// Several hosts (`postgres://user:password@h1:5432,h2:5432/dbname`) for a primary and its
    /// standbys: connections go to whichever takes writes, found again after a failover.
    pub url: Option<String>,
    /// Default: none. A file holding the PostgreSQL URL (first line), so the password can stay
    /// out of outpost.toml. Set `url` or `url_file`, not both.
    pub url_file: Option<PathBuf>,
    /// Default: 16. PostgreSQL connections this node keeps at most.
    pub pool_size: usize,
    /// Default: 2000. Bound on any single operation, in milliseconds; past it the operation
    /// fails with a timeout (outcome unknown).
    pub timeout_ms: u64,
    /// Default: 3000. Bound on establishing a PostgreSQL connection to one host, at open and
    /// after the database restarts or fails over, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Default: 30000. How often, in milliseconds, expired values and outbox rows finished more
    /// than a day ago are deleted, and the outbox gauges refreshed.
    pub sweep_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            url: None,
            url_file: None,
            pool_size: 16,
            timeout_ms: 2000,
            connect_timeout_ms: 3000,
            sweep_interval_ms: 30_000,
        }
    }
}

/// Debug shows the URL with its password hidden: configs end up in logs.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_file", &self.url_file)
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("sweep_interval_ms", &self.sweep_interval_ms)
            .finish()
    }
}

impl StoreConfig {
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The PostgreSQL URL, from `url` or read from `url_file`; None for SQLite. Also checks the
    /// sizes, so a bad config fails at open rather than on the first request.
    pub(crate) fn resolve_url(&self) -> Result<Option<String>, StoreError> {
        if self.pool_size == 0 {
            return Err(StoreError::Config("pool_size must be at least 1".into()));
        }
        if self.timeout_ms == 0 || self.connect_timeout_ms == 0 || self.sweep_interval_ms == 0 {
            return Err(StoreError::Config(
                "timeout_ms, connect_timeout_ms and sweep_interval_ms must be above 0".into(),
            ));
        }
        let url = match (&self.url, &self.url_file) {
            (Some(_), Some(_)) => {
                return Err(StoreError::Config("set url or url_file, not both".into()))
            }
            (Some(u), None) => u.trim().to_owned(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    StoreError::Config(format!("cannot read url_file {}: {e}", path.display()))
                })?;
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            (None, None) => return Ok(None),
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Config(format!(
                "unsupported store url {:?}: expected postgres://user:password@host:port/db \
                 (or no url for embedded SQLite)",
                redact_url(&url)
            )));
        }
        Ok(Some(url))
    }
}

impl StoreConfig {
    /// What [`Store::open`](crate::Store::open) checks before it touches a database: the sizes,
    /// `url`/`url_file` (readable, one of them), and a PostgreSQL URL that parses. Returns the
    /// backend it names; opens nothing.
    pub fn validate(&self) -> Result<crate::Backend, StoreError> {
        match self.resolve_url()? {
            None => Ok(crate::Backend::Sqlite),
            Some(url) => crate::postgres::parse_url(&url).map(|_| crate::Backend::Postgres),
        }
    }

    /// With a PostgreSQL URL: connects once (each of its hosts within `limit`, until one takes
    /// writes) and runs `SELECT 1` (no migration, nothing written). Returns the server, password hidden; `Ok(None)` for the embedded
    /// store. Blocks the calling thread (not for use inside a runtime).
    pub fn ping(&self, limit: Duration) -> Result<Option<String>, StoreError> {
        let Some(url) = self.resolve_url()? else { return Ok(None) };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("cannot start a runtime: {e}")))?;
        rt.block_on(crate::postgres::ping(&url, limit)).map(Some)
    }
}

/// The URL with any password replaced by `***`: in the user-info part
/// (`postgres://user:pw@host`) and in a `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: a key=value connection string, or garbage. Hide every password= value.
        return redact_param(url, ' ');
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_param(tail, '&'))
}

/// Replaces the value of every `password=` parameter in `s`, parameters separated by `sep`.
fn redact_param(s: &str, sep: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("password=") {
        let boundary = i == 0 || rest[..i].ends_with([sep, '?']);
        let value_start = i + "password=".len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if boundary {
            let end = rest.find(sep).unwrap_or(rest.len());
            out.push_str("***");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        for (url, want) in [
            (
                "postgres://outpost:s3cr:et@127.0.0.1:5433/outpost",
                "postgres://outpost:***@127.0.0.1:5433/outpost",
            ),
            ("postgres://outpost@h/db", "postgres://outpost@h/db"),
            (
                "postgresql://h:5432/db?password=x&user=u",
                "postgresql://h:5432/db?password=***&user=u",
            ),
            ("host=h password=x user=u", "host=h password=*** user=u"),
            ("postgres://u:p@h/db?sslmode=disable", "postgres://u:***@h/db?sslmode=disable"),
            (
                "postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
                "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write",
            ),
            (
                "host=h1,h2 port=5432,5433 password=x target_session_attrs=read-write",
                "host=h1,h2 port=5432,5433 password=*** target_session_attrs=read-write",
            ),
        ] {
            assert_eq!(redact_url(url), want, "input {url}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let cfg = StoreConfig {
            url: Some("postgres://outpost:hunter2@db:5432/outpost".into()),
            ..StoreConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://outpost:***@db:5432/outpost"), "{shown}");
    }

    #[test]
    fn url_and_url_file_are_exclusive_and_checked() {
        let cfg = StoreConfig {
            url: Some("postgres://h/db".into()),
            url_file: Some("/nonexistent".into()),
            ..StoreConfig::default()
        };
        assert!(matches!(cfg.resolve_url(), Err(StoreError::Config(_))));
        let cfg = StoreConfig { url: Some("mysql://u:pw@h/db".into()), ..StoreConfig::default() };
        let err = cfg.resolve_url().unwrap_err().to_string();
        assert!(err.contains("unsupported") && !err.contains("pw"), "{err}");
        let cfg = StoreConfig { pool_size: 0, ..StoreConfig::default() };
        assert!(matches!(cfg.resolve_url(), Err(StoreError::Config(_))));
        assert_eq!(StoreConfig::default().resolve_url(), Ok(None));
    }
}
