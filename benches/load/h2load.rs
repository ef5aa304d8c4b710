//! nghttp2's h2load (Debian `nghttp2-client`, OpenSSL) as the h2 scenario's client: HTTP/2 over
//! TLS, `-c` connections with `-m` concurrent streams each, closed loop, for `-D` seconds, on one
//! thread per client CPU. A warm-up is a run of its own (h2load's `--warm-up-time` would fall
//! inside the window the edge's CPU is read in).
//!
//! h2load prints no percentiles; its per-request log (`--log-file`: start, status, microseconds
//! to the end of the response) goes into the same HdrHistogram as the generator's latencies.
//! In timing mode h2load ignores `-n`: a run is bounded by `-D` and by the bench's kill limit
//! past it, so its count is bounded only through its time.

use std::{collections::BTreeMap, fs, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{
    cpus::Pin,
    gen::{self, Latency, RunResult},
    procs::{self, Child, Stderr},
    wrk::children_cpu_seconds,
};

/// Debian's h2load.
pub const H2LOAD: &str = "/usr/bin/h2load";

/// Whether h2load is there: `Err` says what to do, in one line.
pub fn available() -> Result<()> {
    if !Path::new(H2LOAD).is_file() {
        bail!("{H2LOAD} is missing: `cargo xtask setup` installs Debian's nghttp2-client");
    }
    Ok(())
}

/// One h2load run against `https://localhost:<port>/` (SNI and `:authority` localhost, a name
/// in every system's certificate).
pub struct H2loadRun<'a> {
    pub label: String,
    pub port: u16,
    pub connections: usize,
    /// Concurrent streams per connection (`-m`).
    pub streams: usize,
    pub threads: usize,
    pub seconds: f64,
    pub pin: &'a Pin,
}

/// What h2load's summary says, beside the latencies of its log.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    /// "finished in X s, Y req/s": Y, over the main duration (the warm-up not counted).
    req_s: f64,
    /// succeeded, failed, errored, timeout.
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
    /// "TLS Protocol", "Cipher", "Server Temp Key", "Application protocol".
    negotiated: Vec<String>,
    /// "Application protocol: h2".
    protocol: Option<String>,
}

impl H2loadRun<'_> {
    /// Runs h2load to the end; its text report (headed by the command line) goes to
    /// `runs/<stem>.h2load.txt`, its per-request log to `<stem>.h2load.log` (deleted once read).
    pub fn run(&self, work: &Path, runs: &Path, stem: &str) -> Result<RunResult> {
        available()?;
        let log = runs.join(format!("{stem}.h2load.log"));
        let _ = fs::remove_file(&log);
        let threads = self.threads.clamp(1, self.connections.max(1));
        let argv = self.pin.wrap(&[
            H2LOAD.into(),
            format!("-c{}", self.connections),
            format!("-m{}", self.streams),
            format!("-t{threads}"),
            format!("-D{}", self.seconds.max(1.0).round()),
            format!("--log-file={}", log.display()),
            format!("https://localhost:{}/", self.port),
        ]);
        let cpu0 = children_cpu_seconds();
        let mut child = Child::spawn(&self.label, &argv, work, Stderr::File)?;
        let limit = Duration::from_secs_f64(self.seconds + 30.0);
        let status = child.wait_exit(limit);
        procs::check_interrupted()?;
        let client_cpu_s = children_cpu_seconds() - cpu0;
        let text = child.take_stdout(Duration::from_secs(2)).join("\n");
        fs::write(
            runs.join(format!("{stem}.h2load.txt")),
            format!("$ {}\n{text}\n", child.command),
        )?;
        match status {
            Some(s) if s.success() => {}
            Some(s) => bail!("h2load failed ({s}): {}{}", text.trim(), child.stderr_tail(5)),
            None => bail!("h2load did not finish within {limit:?}"),
        }
        let summary = parse_summary(&text);
        if summary.protocol.as_deref() != Some("h2") {
            bail!("h2load did not negotiate h2: {}", summary.negotiated.join(", "));
        }
        let log_text =
            fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        let _ = fs::remove_file(&log);
        let latency = log_latency(&log_text)?;
        Ok(self.result(&summary, latency, child.command.clone(), client_cpu_s))
    }

    fn result(&self, s: &Summary, latency: Latency, command: String, cpu: f64) -> RunResult {
        let kinds: BTreeMap<String, u64> =
            [("failed", s.failed), ("errored", s.errored), ("timeout", s.timeout)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_owned(), n))
                .collect();
        let elapsed = if s.req_s > 0.0 { s.succeeded as f64 / s.req_s } else { self.seconds };
        RunResult {
            label: self.label.clone(),
            command,
            mode: "closed".into(),
            op: "get".into(),
            new_conn: false,
            tls: true,
            connections: self.connections,
            rate: None,
            elapsed_s: elapsed,
            intended: 0,
            ok: s.succeeded,
            errors: kinds.values().sum(),
            first_error: kinds.keys().next().map(|k| format!("h2load counted {k} requests")),
            error_kinds: kinds,
            throughput: s.req_s,
            latency,
            outcomes: BTreeMap::new(),
            held: 0,
            client_cpu_s: cpu,
            tls_negotiated: Some(s.negotiated.join(", ")),
        }
    }
}

fn parse_summary(text: &str) -> Summary {
    let mut s = Summary::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 10.00s, 12345.67 req/s, 1.23MB/s": the time includes the warm-up,
            // the rate is over the main duration only.
            let rate = rest.split(',').nth(1).unwrap_or("").trim().trim_end_matches(" req/s");
            s.req_s = rate.parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else { continue };
                let n = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => s.succeeded = n,
                    "failed" => s.failed = n,
                    "errored" => s.errored = n,
                    "timeout" => s.timeout = n,
                    _ => {}
                }
            }
        } else if let Some((k, v)) = line.split_once(": ") {
            if ["TLS Protocol", "Cipher", "Server Temp Key", "Application protocol"].contains(&k) {
                s.negotiated.push(v.trim().to_owned());
                if k == "Application protocol" {
                    s.protocol = Some(v.trim().to_owned());
                }
            }
        }
    }
    s
}

/// Latencies of the successful requests in h2load's log (`start_us \t status \t duration_us`).
fn log_latency(text: &str) -> Result<Latency> {
    let mut hist = gen::new_hist();
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(_), Some(status), Some(us)) = (cols.next(), cols.next(), cols.next()) else {
            bail!("h2load log line {line:?}");
        };
        if !status.starts_with('2') {
            continue;
        }
        let us: u64 = us.trim().parse().with_context(|| format!("h2load log line {line:?}"))?;
        hist.saturating_record(us.max(1));
    }
    Ok(Latency::from_hist(&hist))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "starting benchmark...
spawning thread #0: 64 total client(s). Timing-based test with 1s of warm-up time and 5s of main duration for measurements.
Warm-up started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is started for thread #0.

finished in 5.00s, 20360.40 req/s, 5.92MB/s
requests: 101802 total, 102442 started, 101802 done, 101800 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 101802 2xx, 0 3xx, 0 4xx, 0 5xx";

    #[test]
    fn summary_of_a_timed_run() {
        let s = parse_summary(OUTPUT);
        assert_eq!(
            (s.req_s, s.succeeded, s.failed, s.protocol.as_deref()),
            (20360.40, 101_800, 2, Some("h2")),
            "{OUTPUT}"
        );
        assert_eq!(s.negotiated[0], "TLSv1.3");
    }

    #[test]
    fn log_percentiles() {
        let log: String = (1..=1000).map(|i| format!("1700000000000000\t200\t{i}\n")).collect();
        let l = log_latency(&(log + "1700000000000000\t-1\t9999999\n")).expect("parses");
        assert_eq!((l.count, l.p50_us, l.max_us), (1000, 500, 1000));
        assert!(log_latency("garbage\n").is_err());
    }
}
