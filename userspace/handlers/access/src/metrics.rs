//! Counters per endpoint and outcome, and time spent per endpoint, as Prometheus text
//! (`outpost_access_requests_total{endpoint,outcome}`, `outpost_access_seconds` as a summary:
//! p50, p99, sum and count). Kept across reloads. The access check on every request touches
//! atomics only; the login endpoints (a few requests per login) also fill a histogram.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::Duration,
};

use hdrhistogram::Histogram;

/// The endpoints, each with its own series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The access check in front of protected routes.
    Check,
    Login,
    Callback,
    Authorized,
    Logout,
    Keys,
}

const ENDPOINTS: [(Endpoint, &str); 6] = [
    (Endpoint::Check, "check"),
    (Endpoint::Login, "login"),
    (Endpoint::Callback, "callback"),
    (Endpoint::Authorized, "authorized"),
    (Endpoint::Logout, "logout"),
    (Endpoint::Keys, "keys"),
];

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A valid token: on to the origin.
    Pass,
    /// An expired token renewed from a live session.
    Renewed,
    /// A bypass path.
    Bypass,
    /// A browser sent to log in.
    Redirect,
    /// 401 JSON for a non-navigation request.
    Unauthorized,
    /// A user the policy does not admit.
    Denied,
    /// The login page.
    Page,
    /// Off to the identity provider.
    ToProvider,
    /// A live auth-host session let the user through without the provider.
    Session,
    /// A completed login, redemption or logout.
    Success,
    /// A replayed or expired one-time value, or one from another browser.
    Replay,
    /// The provider failed, refused, or sent an invalid token.
    ProviderError,
    /// Bad input: 4xx.
    BadRequest,
    /// The store could not answer: 503.
    Unavailable,
    /// Served (keys).
    Served,
}

const OUTCOMES: [(Outcome, &str); 15] = [
    (Outcome::Pass, "pass"),
    (Outcome::Renewed, "renewed"),
    (Outcome::Bypass, "bypass"),
    (Outcome::Redirect, "redirect"),
    (Outcome::Unauthorized, "unauthorized"),
    (Outcome::Denied, "denied"),
    (Outcome::Page, "page"),
    (Outcome::ToProvider, "to_provider"),
    (Outcome::Session, "session"),
    (Outcome::Success, "success"),
    (Outcome::Replay, "replay"),
    (Outcome::ProviderError, "provider_error"),
    (Outcome::BadRequest, "bad_request"),
    (Outcome::Unavailable, "unavailable"),
    (Outcome::Served, "served"),
];

pub struct Metrics {
    counts: [[AtomicU64; OUTCOMES.len()]; ENDPOINTS.len()],
    micros: [AtomicU64; ENDPOINTS.len()],
    timed: [AtomicU64; ENDPOINTS.len()],
    /// Microseconds, 1 µs to 1 min, 3 significant digits; none for the check (hot path).
    histograms: [Mutex<Option<Histogram<u64>>>; ENDPOINTS.len()],
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            counts: Default::default(),
            micros: Default::default(),
            timed: Default::default(),
            histograms: std::array::from_fn(|i| {
                Mutex::new((ENDPOINTS[i].0 != Endpoint::Check).then(|| {
                    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
                }))
            }),
        }
    }
}

fn index<T: PartialEq + Copy>(table: &[(T, &str)], v: T) -> usize {
    table.iter().position(|(t, _)| *t == v).unwrap_or(0)
}

impl Metrics {
    pub fn count(&self, e: Endpoint, o: Outcome) {
        self.counts[index(&ENDPOINTS, e)][index(&OUTCOMES, o)].fetch_add(1, Relaxed);
    }

    /// Server-side time of one request of `e` (the provider's own time excluded by callers).
    pub fn time(&self, e: Endpoint, d: Duration) {
        let i = index(&ENDPOINTS, e);
        let us = d.as_micros() as u64;
        self.micros[i].fetch_add(us, Relaxed);
        self.timed[i].fetch_add(1, Relaxed);
        if e != Endpoint::Check {
            if let Some(h) = self.histograms[i].lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                h.saturating_record(us.max(1));
            }
        }
    }

    pub fn get(&self, e: Endpoint, o: Outcome) -> u64 {
        self.counts[index(&ENDPOINTS, e)][index(&OUTCOMES, o)].load(Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP outpost_access_requests_total Requests seen by each Access endpoint, by outcome.\n\
             # TYPE outpost_access_requests_total counter\n",
        );
        for (ei, (_, en)) in ENDPOINTS.iter().enumerate() {
            for (oi, (_, on)) in OUTCOMES.iter().enumerate() {
                let v = self.counts[ei][oi].load(Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "outpost_access_requests_total{{endpoint=\"{en}\",outcome=\"{on}\"}} {v}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP outpost_access_seconds Server-side time of Access endpoints (provider time excluded).\n\
             # TYPE outpost_access_seconds summary\n",
        );
        for (i, (_, en)) in ENDPOINTS.iter().enumerate() {
            if let Some(h) = self.histograms[i].lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                if !h.is_empty() {
                    for q in [0.5, 0.99] {
                        let v = h.value_at_quantile(q) as f64 / 1e6;
                        let _ = writeln!(
                            out,
                            "outpost_access_seconds{{endpoint=\"{en}\",quantile=\"{q}\"}} {v}"
                        );
                    }
                }
            }
            let sum = self.micros[i].load(Relaxed) as f64 / 1e6;
            let n = self.timed[i].load(Relaxed);
            let _ = writeln!(out, "outpost_access_seconds_sum{{endpoint=\"{en}\"}} {sum}");
            let _ = writeln!(out, "outpost_access_seconds_count{{endpoint=\"{en}\"}} {n}");
        }
    }
}
