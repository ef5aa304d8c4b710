//! wrk (Debian's, OpenSSL for TLS) as a second client of the proxy scenario: a load generator
//! the bench did not write, so that a number seen through both is not an artefact of ours.
//!
//! wrk runs closed loop and keep-alive, like `outpost-load gen` without `--rate`: `-c`
//! connections, each sending its next request when the previous answer is in, for `-d` whole
//! seconds. Its latency is from each request's write to its response. Unlike our generator it
//! opens its connections inside the measured time (64 TLS handshakes: milliseconds) and neither
//! checks nor reports what TLS it negotiated (OpenSSL's defaults pick TLS 1.3 with every server
//! here). A Lua `done()` hook writes wrk's own summary as JSON; the bench turns it into a
//! [`RunResult`] beside our generator's.

use std::{collections::BTreeMap, fs, net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::{
    cpus::Pin,
    gen::{Latency, RunResult, PERCENTILES},
    procs::{self, Child, Stderr},
};

/// Debian's wrk.
pub const WRK: &str = "/usr/bin/wrk";

/// The `done()` hook: wrk's summary as one JSON object in `$OUTPOST_WRK_JSON`. Also sets the
/// Host header the generator sends. Latency is in microseconds, as wrk keeps it.
const SCRIPT: &str = r#"-- Written by outpost-load (benches/load/wrk.rs).
local host = os.getenv("OUTPOST_WRK_HOST")
if host then
   wrk.headers["Host"] = host
end

function done(summary, latency, requests)
   local ps = {}
   for _, p in ipairs({ @PERCENTILES@ }) do
      local v
      if p <= 0 then v = latency.min elseif p >= 100 then v = latency.max else v = latency:percentile(p) end
      ps[#ps + 1] = string.format("[%.2f,%d]", p, v)
   end
   local mean, stdev = 0, 0
   if summary.requests > 0 then
      mean, stdev = latency.mean, latency.stdev
   end
   local e = summary.errors
   local out = string.format(
      '{"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency":{"min_us":%d,"max_us":%d,"mean_us":%.3f,"stdev_us":%.3f,"percentiles":[%s]}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, mean, stdev, table.concat(ps, ","))
   local f = assert(io.open(os.getenv("OUTPOST_WRK_JSON"), "w"))
   f:write(out)
   f:close()
end
"#;

/// One wrk run.
pub struct WrkRun<'a> {
    pub label: String,
    pub target: SocketAddr,
    pub tls: bool,
    /// Host header (TLS: SNI is `localhost`, a name in every system's certificate).
    pub host: String,
    pub connections: usize,
    pub threads: usize,
    /// Whole seconds (`-d`).
    pub seconds: u64,
    /// Per-request timeout (`--timeout`), seconds.
    pub timeout_s: u64,
    pub pin: &'a Pin,
}

/// What `done()` wrote.
#[derive(Deserialize)]
struct Summary {
    duration_us: u64,
    requests: u64,
    errors: Errors,
    latency: WrkLatency,
}

#[derive(Deserialize)]
struct Errors {
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
}

#[derive(Deserialize)]
struct WrkLatency {
    max_us: u64,
    mean_us: f64,
    percentiles: Vec<(f64, u64)>,
}

/// Whether Debian's wrk is there: `Err` says what to do, in one line.
pub fn available() -> Result<()> {
    if !Path::new(WRK).is_file() {
        bail!("{WRK} is missing: `cargo xtask setup` installs Debian's wrk (apt-get install wrk)");
    }
    Ok(())
}

impl WrkRun<'_> {
    /// Runs wrk to the end (bounded by `-d` and a margin past it); its JSON, its text report and
    /// the command line go to `runs` as `<stem>.json` / `<stem>.txt`.
    pub fn run(&self, work: &Path, runs: &Path, stem: &str) -> Result<RunResult> {
        available()?;
        let script = work.join("wrk-done.lua");
        let pcts: Vec<String> = PERCENTILES.iter().map(f64::to_string).collect();
        fs::write(&script, SCRIPT.replace("@PERCENTILES@", &pcts.join(", ")))?;
        let json = runs.join(format!("{stem}.wrk.json"));
        let _ = fs::remove_file(&json);
        let url = format!(
            "{}://localhost:{}/",
            if self.tls { "https" } else { "http" },
            self.target.port()
        );
        if !self.target.ip().is_loopback() {
            bail!("wrk is only pointed at loopback here, not {}", self.target);
        }
        let threads = self.threads.clamp(1, self.connections.max(1));
        let argv = self.pin.wrap(&[
            "env".into(),
            format!("OUTPOST_WRK_JSON={}", json.display()),
            format!("OUTPOST_WRK_HOST={}", self.host),
            WRK.into(),
            format!("-t{threads}"),
            format!("-c{}", self.connections),
            format!("-d{}s", self.seconds.max(1)),
            "--timeout".into(),
            format!("{}s", self.timeout_s.max(1)),
            "--latency".into(),
            "-s".into(),
            script.display().to_string(),
            url,
        ]);
        let cpu0 = children_cpu_seconds();
        let mut child = Child::spawn(&self.label, &argv, work, Stderr::File)?;
        let limit = Duration::from_secs(self.seconds + self.timeout_s + 30);
        let status = child.wait_exit(limit);
        procs::check_interrupted()?;
        let client_cpu_s = children_cpu_seconds() - cpu0;
        let text = child.take_stdout(Duration::from_secs(2)).join("\n");
        fs::write(runs.join(format!("{stem}.wrk.txt")), format!("$ {}\n{text}\n", child.command))?;
        match status {
            Some(s) if s.success() => {}
            Some(s) => bail!("wrk failed ({s}): {}", child.stderr_tail(5)),
            None => bail!("wrk did not finish within {limit:?}"),
        }
        let summary: Summary = serde_json::from_str(
            &fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?,
        )
        .with_context(|| format!("parsing {}", json.display()))?;
        Ok(self.result(&summary, child.command.clone(), client_cpu_s))
    }

    fn result(&self, s: &Summary, command: String, client_cpu_s: f64) -> RunResult {
        let e = &s.errors;
        let kinds: BTreeMap<String, u64> = [
            ("connect", e.connect),
            ("read", e.read),
            ("write", e.write),
            ("status", e.status),
            ("timeout", e.timeout),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
        // wrk counts a response with an error status among its requests; it is not a success.
        let ok = s.requests.saturating_sub(e.status);
        let elapsed = (s.duration_us as f64 / 1e6).max(1e-3);
        let at = |p: f64| {
            s.latency.percentiles.iter().find(|(q, _)| (q - p).abs() < 1e-9).map_or(0, |(_, v)| *v)
        };
        RunResult {
            label: self.label.clone(),
            command,
            mode: "closed".into(),
            op: "get".into(),
            new_conn: false,
            tls: self.tls,
            connections: self.connections,
            rate: None,
            elapsed_s: elapsed,
            intended: 0,
            ok,
            errors: kinds.values().sum(),
            first_error: kinds.keys().next().map(|k| format!("wrk counted {k} errors")),
            error_kinds: kinds,
            throughput: ok as f64 / elapsed,
            latency: Latency {
                count: s.requests,
                mean_us: s.latency.mean_us,
                p50_us: at(50.0),
                p90_us: at(90.0),
                p99_us: at(99.0),
                p999_us: at(99.9),
                max_us: s.latency.max_us,
                percentiles: s.latency.percentiles.clone(),
            },
            outcomes: BTreeMap::new(),
            held: 0,
            client_cpu_s,
            tls_negotiated: None,
        }
    }
}

/// User + system CPU seconds of this process's children that were waited for: around one child
/// run (and no other child reaped meanwhile), the delta is that child's CPU.
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_becomes_a_run_result() {
        let text = r#"{"duration_us":2000000,"requests":1000,"bytes":1,"errors":{"connect":0,"read":0,"write":0,"status":10,"timeout":2},"latency":{"min_us":5,"max_us":900,"mean_us":50.5,"stdev_us":3.0,"percentiles":[[0.00,5],[50.00,40],[99.00,300],[99.90,800],[100.00,900]]}}"#;
        let s: Summary = serde_json::from_str(text).expect("parses");
        let pin = Pin::none();
        let run = WrkRun {
            label: "x".into(),
            target: "127.0.0.1:1".parse().expect("addr"),
            tls: true,
            host: "edge.test".into(),
            connections: 4,
            threads: 1,
            seconds: 2,
            timeout_s: 5,
            pin: &pin,
        };
        let r = run.result(&s, "wrk".into(), 0.5);
        assert_eq!((r.ok, r.errors), (990, 12), "{text}");
        assert_eq!((r.latency.p50_us, r.latency.p99_us, r.latency.p999_us), (40, 300, 800));
        assert!((r.throughput - 495.0).abs() < 1e-9);
    }
}
