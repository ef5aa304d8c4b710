//! The one error type of the store. Every message is one line and never carries a secret:
//! PostgreSQL URLs are shown through [`crate::config::redact_url`], and messages coming from a
//! driver are scrubbed of the password before they are wrapped.

use std::fmt;

/// Why a store operation (or opening the store) failed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The backend cannot be reached or stopped answering: PostgreSQL down or restarting, a
    /// connection lost mid-operation, a data directory that cannot be created, or the store
    /// already shut down. Usually nothing was written; a connection lost while a write was
    /// being committed leaves its outcome unknown (the message says so). Retry later what is
    /// safe to repeat.
    Unavailable(String),
    /// The operation did not finish within `timeout_ms`. Its outcome is unknown: it may have
    /// been applied.
    Timeout,
    /// The database was migrated by a newer outpost (schema version `found`) than this binary
    /// knows (`supported`). The store refused to open it and changed nothing.
    SchemaTooNew {
        /// The version recorded in the database's `schema_version` table.
        found: i64,
        /// The newest version this binary can migrate to.
        supported: i64,
    },
    /// The SQLite data directory is held by another outpost process (an exclusive `flock` on
    /// `<data_dir>/outpost.db.lock`).
    Locked(String),
    /// The database file exists but is not a database this store can read.
    Corrupt(String),
    /// The `[store]` configuration is invalid (bad URL, unreadable `url_file`, zero sizes).
    Config(String),
    /// Anything else the database reported (a constraint it should not hit, bad data read
    /// back). Not expected in normal operation.
    Other(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "store unavailable: {}", one_line(m)),
            StoreError::Timeout => f.write_str("store operation timed out (outcome unknown)"),
            StoreError::SchemaTooNew { found, supported } => write!(
                f,
                "the database has schema version {found}, newer than this outpost supports \
                 ({supported}): upgrade outpost; the database was left untouched"
            ),
            StoreError::Locked(m) => f.write_str(&one_line(m)),
            StoreError::Corrupt(m) => write!(f, "store corrupt: {}", one_line(m)),
            StoreError::Config(m) => write!(f, "store config: {}", one_line(m)),
            StoreError::Other(m) => write!(f, "store error: {}", one_line(m)),
        }
    }
}

impl std::error::Error for StoreError {}

/// Driver messages can span lines (PostgreSQL's DETAIL/HINT); logs want one.
fn one_line(m: &str) -> String {
    if m.contains(['\n', '\r']) {
        m.split(['\n', '\r']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
    } else {
        m.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line() {
        let e = StoreError::Other("ERROR: x\nDETAIL: y\n".into());
        assert_eq!(e.to_string(), "store error: ERROR: x DETAIL: y");
        let e = StoreError::SchemaTooNew { found: 9, supported: 1 };
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
