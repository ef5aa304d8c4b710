//! What every store test file shares: one backend under test (SQLite in a temp dir, or a
//! database of its own on a PostgreSQL this test binary started), and raw access to it.

#![allow(dead_code)]

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use outpost_store::{
    testing::{TempDir, TestPostgres},
    Store, StoreConfig,
};

/// One PostgreSQL per test binary while any test uses it; the last user's drop stops it.
pub fn shared_pg() -> Arc<TestPostgres> {
    static PG: Mutex<Weak<TestPostgres>> = Mutex::new(Weak::new());
    let mut slot = PG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = slot.upgrade() {
        return pg;
    }
    let pg = Arc::new(TestPostgres::start());
    *slot = Arc::downgrade(&pg);
    pg
}

/// The backend a test runs against.
pub struct Harness {
    /// The data directory (SQLite's database; unused but required with PostgreSQL).
    pub dir: TempDir,
    pub pg: Option<(Arc<TestPostgres>, String, String)>,
}

impl Harness {
    pub fn sqlite() -> Harness {
        Harness { dir: TempDir::new("outpost-store-test"), pg: None }
    }

    /// A fresh database named after the test on the shared server.
    pub fn postgres(test: &str) -> Harness {
        let pg = shared_pg();
        let db = format!("t_{test}_{}", outpost_store::testing::random_hex(4));
        let url = pg.create_database(&db);
        Harness { dir: TempDir::new("outpost-store-test"), pg: Some((pg, db, url)) }
    }

    pub fn name(&self) -> &'static str {
        if self.pg.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    pub fn cfg(&self) -> StoreConfig {
        StoreConfig {
            url: self.pg.as_ref().map(|(_, _, url)| url.clone()),
            ..StoreConfig::default()
        }
    }

    pub fn open(&self) -> Store {
        self.open_with(self.cfg())
    }

    pub fn open_with(&self, cfg: StoreConfig) -> Store {
        Store::open(&cfg, self.dir.path())
            .unwrap_or_else(|e| panic!("open {} store: {e}", self.name()))
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("outpost.db")
    }

    /// One integer from `sql`, read beside the store (SQLite: a second connection; PostgreSQL:
    /// psql as superuser).
    pub fn scalar(&self, sql: &str) -> i64 {
        match &self.pg {
            Some((pg, db, _)) => {
                let out = pg.psql(db, sql);
                out.parse().unwrap_or_else(|e| panic!("{sql}: {out:?} is not an integer: {e}"))
            }
            None => {
                let conn = rusqlite::Connection::open(self.db_path()).expect("open raw sqlite");
                conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// Runs a statement beside the store.
    pub fn execute(&self, sql: &str) {
        match &self.pg {
            Some((pg, db, _)) => {
                pg.psql(db, sql);
            }
            None => {
                let conn = rusqlite::Connection::open(self.db_path()).expect("open raw sqlite");
                conn.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }
}

/// Generates `<test>::sqlite` and `<test>::postgres` for each async fn `<test>(Harness)`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::Harness::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::common::Harness::postgres(stringify!($name))).await
            }
        }
    )*};
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
