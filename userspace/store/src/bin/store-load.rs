//! `outpost-store-load`: opens a store and writes unique keys with many concurrent tasks,
//! printing each key on stdout (one line, flushed) only once the store acknowledged it. The
//! durability tests SIGKILL it mid-load and check that every printed key survived.
//!
//! `outpost-store-load <data_dir> [url] [tasks] [seconds]`: SQLite in `data_dir` without a url
//! (or with `-`). Keys are `<task>-<n>` in namespace `load`, each value the key itself. Stops
//! by itself after `seconds` (default 60) so a test that forgot it cannot leave it running.

use std::{
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use outpost_store::{Store, StoreConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: outpost-store-load <data_dir> [url|-] [tasks] [seconds]");
        return ExitCode::FAILURE;
    };
    let url = args.get(1).filter(|u| u.as_str() != "-").cloned();
    let tasks: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(60);
    let cfg = StoreConfig { url, ..StoreConfig::default() };
    let store = match Store::open(&cfg, &dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outpost-store-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let (store, out) = (store.clone(), out.clone());
            set.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let key = format!("{t}-{n}");
                    n += 1;
                    if store.put("load", &key, key.as_bytes(), None).await.is_ok() {
                        // Printed only after the store said Ok: the test's list of promises.
                        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = writeln!(out, "{key}");
                        let _ = out.flush();
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    ExitCode::SUCCESS
}
