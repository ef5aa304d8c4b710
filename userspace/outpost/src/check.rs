//! `outpost check`: what `outpost run` would refuse, found without serving. The config parses;
//! each configured certificate and key load and make a pair; every secret file (keys, the store
//! URL file, the reservation secret, identity provider client secrets, the admin token) is
//! readable by this user and not by every user; the data directory is writable; `[store]`
//! names a usable store (and with `--connect`, PostgreSQL answers); the routes and applications
//! build. Run it as the service user (`sudo -u outpost outpost check ...`): readability is
//! judged for whoever runs it.
//!
//! Nothing is written where `outpost run` keeps its state: the routes are built against a
//! scratch embedded store and data directory in the temp directory, removed afterwards, and
//! no self-signed certificate is generated.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use outpost_proxy::config::Config;
use outpost_store::{Backend, Store, StoreConfig};

/// Longest `--connect` waits for PostgreSQL (or the config's `connect_timeout_ms`, if shorter).
const CONNECT_LIMIT: Duration = Duration::from_secs(3);

/// Every problem `config` has, one line each; empty when `outpost run` would start with it.
pub fn check(path: Option<&Path>, connect: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let cfg = match outpost_proxy::load_config(path) {
        Ok((_, cfg)) => cfg,
        Err(e) => {
            // Nothing below can be judged without a config.
            problems.push(format!("config: {e:#}"));
            return problems;
        }
    };
    data_dir(&cfg, &mut problems);
    certificates(&cfg, &mut problems);
    for (what, file) in secret_files(&cfg) {
        secret_file(&what, &file, &mut problems);
    }
    let store_config: Option<StoreConfig> = match crate::edge::section(&cfg, "store") {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("store: {e:#}"));
            None
        }
    };
    if let Err(e) = crate::edge::section::<crate::edge::AuditConfig>(&cfg, "audit") {
        problems.push(format!("audit: {e:#}"));
    }
    let backend = store_config.as_ref().and_then(|s| match s.validate() {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(format!("store: {e}"));
            None
        }
    });
    if let (true, Some(Backend::Postgres), Some(s)) = (connect, backend, &store_config) {
        let limit = CONNECT_LIMIT.min(Duration::from_millis(s.connect_timeout_ms));
        if let Err(e) = s.ping(limit) {
            problems.push(format!("store: {e}"));
        }
    }
    // The reservation application refuses a node-local secret on a shared store; the scratch
    // store below is embedded, so that rule is checked here.
    let reserve = cfg.section("reserve");
    if backend == Some(Backend::Postgres) && reserve.is_some_and(|r| r.get("secret_file").is_none())
    {
        problems
            .push("[reserve]: secret_file is required with a shared (PostgreSQL) store".to_owned());
    }
    routes(&cfg, &mut problems);
    problems
}

/// `outpost run` creates the data directory and writes its token, certificate and database
/// there.
fn data_dir(cfg: &Config, problems: &mut Vec<String>) {
    let dir = cfg.data_dir();
    // The nearest existing ancestor is where a missing directory would be created.
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        problems.push(format!(
            "data_dir {}: {} is not a directory",
            dir.display(),
            existing.display()
        ));
    } else if !writable(existing) {
        let what = if existing == dir { "is" } else { "cannot be created: its parent is" };
        problems.push(format!(
            "data_dir {} {what} not writable by this user ({})",
            dir.display(),
            existing.display()
        ));
    }
}

/// Each `[[tls.certs]]` pair, loaded as `outpost run` loads it (rustls, the ring provider):
/// the chain parses, the key parses, and the key is the leaf certificate's.
fn certificates(cfg: &Config, problems: &mut Vec<String>) {
    for c in &cfg.tls.certs {
        let mut one = cfg.tls.clone();
        one.certs = vec![c.clone()];
        if let Err(e) = outpost_proxy::tls::server_config(&one, &cfg.data_dir(), cfg.http.h2) {
            problems.push(format!("tls certificate {:?}: {e:#}", c.names));
        }
    }
}

/// Files that hold secrets, by what names them in the config.
fn secret_files(cfg: &Config) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = cfg
        .tls
        .certs
        .iter()
        .map(|c| (format!("tls key for {:?}", c.names), c.key.clone()))
        .collect();
    let path_at = |section: &str, key: &str| -> Option<PathBuf> {
        cfg.section(section)?.get(key)?.as_str().map(PathBuf::from)
    };
    if let Some(p) = path_at("store", "url_file") {
        out.push(("[store] url_file".into(), p));
    }
    if let Some(p) = path_at("reserve", "secret_file") {
        out.push(("[reserve] secret_file".into(), p));
    }
    let providers = cfg.section("access").and_then(|a| a.get("providers")?.as_array().cloned());
    for p in providers.unwrap_or_default() {
        if let Some(file) = p.get("client_secret_file").and_then(|f| f.as_str()) {
            let name = p.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            out.push((format!("[[access.providers]] {name} client_secret_file"), file.into()));
        }
    }
    let token = outpost_proxy::admin::token_path(&cfg.data_dir());
    if token.exists() {
        out.push(("admin token".into(), token));
    }
    out
}

/// Readable by this user, and not by every user (the admin token: by nobody else at all,
/// which `outpost run` itself insists on).
fn secret_file(what: &str, file: &Path, problems: &mut Vec<String>) {
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("{what} {}: {e}", file.display()));
            return;
        }
    };
    if let Err(e) = std::fs::File::open(file) {
        problems.push(format!("{what} {}: not readable by this user: {e}", file.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    let (mask, who) = if what == "admin token" { (0o077, "others") } else { (0o004, "every user") };
    if mode & mask != 0 {
        problems.push(format!(
            "{what} {}: readable by {who} (mode {mode:o}): `chmod {} {}`",
            file.display(),
            if mask == 0o077 { "600" } else { "o-r" },
            file.display()
        ));
    }
}

/// The routes and the applications, built as `outpost run` builds them, against a scratch
/// embedded store and data directory (removed before returning).
fn routes(cfg: &Config, problems: &mut Vec<String>) {
    let scratch = std::env::temp_dir().join(format!("outpost-check-{}", std::process::id()));
    let built = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&scratch)?;
        let store = Store::open(&StoreConfig::default(), &scratch)?;
        let (registry, _) = crate::edge::registry(&store);
        let env = outpost_api::BuildEnv {
            node: cfg.node_name(),
            audit: outpost_api::Audit::new(cfg.node_name(), None),
            // `outpost run` serves the built-in page on a port of its own; routes to it only
            // need an address to build, and nothing is sent to it here.
            builtin: Some(([127, 0, 0, 1], 1).into()),
            data_dir: scratch.clone(),
        };
        let result = outpost_proxy::router::Router::build(cfg, &registry, &env).map(|_| ());
        store.shutdown();
        result
    })();
    if let Err(e) = built {
        problems.push(format!("routes: {e:#}"));
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// access(2) W_OK|X_OK: what this user may do, ACLs and capabilities included.
fn writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}
