//! Versioned migrations, one list per backend, applied in order at open. `schema_version` keeps
//! one row per applied version; the database's version is its largest. A database newer than
//! [`SCHEMA_VERSION`] is refused before anything is written to it.
//!
//! Times are Unix milliseconds in BIGINT columns on both backends: one representation, the
//! same comparisons, and PostgreSQL computes "now" from its own clock.

/// The newest schema this binary knows; the last entry of each list below.
pub const SCHEMA_VERSION: i64 = 1;

/// (version, SQL) for SQLite. Keys compare as bytes (SQLite's default BINARY collation).
pub(crate) const SQLITE: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE kv (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID;
    CREATE INDEX kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
    -- AUTOINCREMENT: ids are never reused after the sweeper deletes rows, so a late
    -- complete() from a stale worker cannot hit someone else's row.
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        next_at INTEGER NOT NULL,
        lease_until INTEGER,
        owner TEXT,
        done_at INTEGER,
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox (topic, next_at, id) WHERE done_at IS NULL;
    CREATE INDEX outbox_done ON outbox (done_at) WHERE done_at IS NOT NULL;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        node TEXT NOT NULL,
        client TEXT,
        host TEXT,
        path TEXT,
        user_name TEXT,
        kind TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX audit_time ON audit (time_ms, id);
    CREATE INDEX audit_user ON audit (user_name, time_ms);
    CREATE INDEX audit_kind ON audit (kind, time_ms);",
)];

/// (version, SQL) for PostgreSQL. `COLLATE "C"` orders keys bytewise, as on SQLite, whatever
/// locale the database was created with.
pub(crate) const POSTGRES: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE kv (
        ns TEXT NOT NULL,
        key TEXT COLLATE \"C\" NOT NULL,
        value BYTEA NOT NULL,
        expires_at BIGINT,
        PRIMARY KEY (ns, key)
    );
    CREATE INDEX kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        topic TEXT NOT NULL,
        payload BYTEA NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        next_at BIGINT NOT NULL,
        lease_until BIGINT,
        owner TEXT,
        done_at BIGINT,
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox (topic, next_at, id) WHERE done_at IS NULL;
    CREATE INDEX outbox_done ON outbox (done_at) WHERE done_at IS NOT NULL;
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        node TEXT NOT NULL,
        client TEXT,
        host TEXT,
        path TEXT,
        user_name TEXT,
        kind TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX audit_time ON audit (time_ms, id);
    CREATE INDEX audit_user ON audit (user_name, time_ms);
    CREATE INDEX audit_kind ON audit (kind, time_ms);",
)];

/// What to run to bring a database at version `found` up to date, or why not.
pub(crate) fn pending(
    migrations: &'static [(i64, &'static str)],
    found: i64,
) -> Result<impl Iterator<Item = &'static (i64, &'static str)>, crate::StoreError> {
    if found > SCHEMA_VERSION {
        return Err(crate::StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    Ok(migrations.iter().filter(move |(v, _)| *v > found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_end_at_the_schema_version() {
        for list in [SQLITE, POSTGRES] {
            assert_eq!(list.last().map(|m| m.0), Some(SCHEMA_VERSION));
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0), "versions must increase");
        }
    }

    #[test]
    fn newer_is_refused() {
        assert!(matches!(
            pending(SQLITE, SCHEMA_VERSION + 1),
            Err(crate::StoreError::SchemaTooNew { .. })
        ));
        assert_eq!(pending(SQLITE, 0).map(|p| p.count()).ok(), Some(SQLITE.len()));
    }
}
