//! Subdomain reservations at the edge: put in a name and an email, get a mail, confirm, and the
//! name under the zone is held for you. One reservation per email, one holder per name, a
//! blocklist, and no double booking whatever the load and however many edge nodes share the
//! store: uniqueness is decided by the store, in the same transaction that queues the mail.
//!
//! Registered by the binary as [`ReserveApp::new`]`(store)`; configured by `[reserve]`
//! ([`config::ReserveConfig`]); operated with `outpost reservations ...` ([`cli`]) and the
//! admin API ([`admin`]).
//!
//! # Layout
//! - [`app`]: the application: routes on the reservation host, admin endpoints, the outbox
//!   mail sender, the expiry sweep.
//! - [`handlers`]: the four endpoints (form page, reserve, confirm, availability): parse →
//!   apply → respond; CSRF, body limit, rate limits, answers in HTML or JSON.
//! - [`model`]: reservations as store rows, each change one store transaction.
//! - [`names`]: DNS label rules, IDNA, the blocklist. [`email`]: address rules.
//! - [`secret`]: confirm tokens (only their hash is stored), the sealed token in the outbox,
//!   CSRF tokens.
//! - [`mail`]: the confirmation mail and its SMTP delivery. [`pages`]: templates.
//! - [`limits`]: per-address and per-email rate limits. [`cli`]: operator commands.
//!
//! # Answers of `POST /reserve`
//! 201 pending (also for a repeat by the same email, which sends the mail again), 409
//! `name_taken` / `email_taken` / `already_confirmed`, 400 with a `code` and a sentence
//! (`name_*`, `email_*`, `bad_json`, `bad_form`), 403 `blocked` or `csrf`, 413
//! `body_too_large`, 415 `unsupported_media_type`, 429 `rate_limited` / `mail_limit` with
//! `Retry-After`, 503 `unavailable` with nothing half-written (the transaction did not
//! commit). `GET /confirm`: 200 confirmed or already confirmed, 410 expired, 404 invalid.
//!
//! # Audit events
//! `reserve.reserve` (every answer of `POST /reserve`, outcome `success`, `denied`,
//! `limited` or `error`, reason the answer's code and name), `reserve.confirm` (`success`,
//! `already`, `expired`, `invalid`), `reserve.expiry` (a pending hold ended unconfirmed;
//! reported once across nodes), `reserve.release` (operator, CLI or admin API).
//!
//! # Crates, and why
//! - `lettre` (SMTP): the maintained Rust mail crate: async on tokio, rustls (ring, the
//!   provider the proxy already uses) with opportunistic or required STARTTLS or implicit
//!   TLS, a connection pool, multipart building with correct header encoding.
//! - `idna`: the servo/rust-url implementation of UTS #46 and punycode, the same rules as
//!   browsers' URL parsing, so a name is checked exactly as a browser would resolve it.
//! - `askama`: templates compiled with the crate (a typo in a template or a missing field is a
//!   build error), HTML auto-escaping by file type, no runtime template loading.
//! - `governor`: GCRA rate limiting, keyed, lock-free per key; the well-kept standard. Per
//!   node on purpose: see [`limits`].
//! - `serde_urlencoded`: form bodies and query strings into typed structs through serde, the
//!   same derive as the JSON body.
//! - `ring`: SHA-256, the CSPRNG, HMAC and ChaCha20-Poly1305 for tokens; already in the tree
//!   as rustls' crypto provider, so no second crypto library.

//!
//! # Tests and what they need
//! `cargo test -p outpost-reserve` starts everything itself and stops it by PID: the real
//! `outpost` binary (`$OUTPOST_BIN`, else `target/debug/outpost`), PostgreSQL
//! (`outpost_store::testing::TestPostgres`, Debian `postgresql`), an SMTP server (Debian
//! `python3-aiosmtpd`), and Chromium (Debian `chromium`, driven by npm `playwright-core`:
//! `npm ci` in `tests/browser`). A missing tool fails the test with the command that installs
//! it. Chromium's screenshots stay under `target/tmp/reserve-browser/`.
//!
//! # Benchmark
//! `benches/reserve.rs` (`reserve-bench`): a launch spike through the edge over TLS, embedded
//! and PostgreSQL, against pgbench running the reservation's own transaction.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod email;
pub mod handlers;
pub mod limits;
pub mod mail;
pub mod model;
pub mod names;
pub mod pages;
pub mod secret;

pub use app::ReserveApp;
pub use config::ReserveConfig;
