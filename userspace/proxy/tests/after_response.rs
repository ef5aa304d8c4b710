//! Work after the response (`Session::after_response`), in-process: `outpost_proxy::run` with
//! a handler of the test's own that answers at once and leaves slow work behind. The response
//! never waits for that work; a full queue drops work and counts it; SIGTERM's drain waits for
//! what was accepted. One test in this file: it sends SIGTERM to its own process.

use std::{
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::Result;
use outpost_api::{erase, BuildEnv, Built, Flow, Handler, Reply, RouteFactory, RouteSpec, Session};
use outpost_proxy::{Registry, RunOptions};
use outpost_testkit::{curl, http_get, stdout, wait_for_admin, InProcessConfig, TempDir};

/// How long each piece of left-behind work takes once the test lets it start.
const WORK: Duration = Duration::from_secs(1);

/// Answers `done <id>` at once; after the response, waits for the test's gate (a file), then
/// [`WORK`], and appends `<id>` to a file. The gate, not a timer, keeps the work pending while
/// the test checks the responses, however long a loaded machine takes to run them.
struct Slow {
    log: PathBuf,
    gate: PathBuf,
}

impl Handler for Slow {
    type Ctx = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _: &mut ()) -> outpost_api::Result<Flow> {
        let id = s.query().unwrap_or("none").to_owned();
        let (log, gate) = (self.log.clone(), self.gate.clone());
        let line = format!("{id}\n");
        s.after_response(async move {
            while !gate.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(WORK).await;
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
            f.write_all(line.as_bytes()).unwrap();
        });
        Ok(Flow::Respond(Reply::new(200, "text/plain", format!("done {id}\n"))))
    }
}

struct SlowFactory {
    log: PathBuf,
    gate: PathBuf,
}

impl RouteFactory for SlowFactory {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn build(&self, _: &RouteSpec<'_>, _: &BuildEnv) -> Result<Built> {
        let slow = Slow { log: self.log.clone(), gate: self.gate.clone() };
        Ok(Built { handler: erase("slow", slow), background: Vec::new() })
    }
}

fn finished(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Asserts `series` reaches `want` (work is counted once its response is written).
fn expect_metric(admin: u16, series: &str, want: u64) {
    let scrape = || http_get(admin, "/metrics").expect("metrics").1;
    outpost_testkit::expect_counter(scrape, series, want);
}

#[test]
fn work_after_the_response_never_delays_it_is_bounded_and_survives_sigterm() {
    let dir = TempDir::new("after");
    let log = dir.0.join("finished.log");
    let gate = dir.0.join("gate");
    let InProcessConfig { path: config, https, admin } = InProcessConfig::write(
        &dir,
        "shutdown_grace_ms = 10000\n[after_response]\nmax_pending = 2\n[[routes]]\nhandler = \"slow\"\n",
    );
    let registry = Registry::new().route(SlowFactory { log: log.clone(), gate: gate.clone() });
    let server = thread::spawn(move || {
        outpost_proxy::run(RunOptions { config: Some(config), registry, ..RunOptions::default() })
    });
    wait_for_admin(admin);

    // Five requests in a row, each answered before its work could have finished; the queue
    // holds two, so three pieces of work are dropped and counted.
    let url = |id: u32| format!("https://127.0.0.1:{https}/work?{id}");
    for id in 1..=5 {
        let out = curl(&[&url(id)]);
        assert_eq!(stdout(&out), format!("done {id}\n"), "request {id}");
        assert!(
            finished(&log).is_empty(),
            "request {id} was answered after left-behind work had finished: {:?}",
            finished(&log)
        );
    }
    expect_metric(admin, "outpost_after_response_total", 2);
    expect_metric(admin, "outpost_after_response_dropped_total", 3);
    expect_metric(admin, "outpost_after_response_pending", 2);
    assert!(finished(&log).is_empty(), "work finished before its gate: {:?}", finished(&log));

    // The work may start, and SIGTERM comes at once: the drain waits for the accepted work
    // (a second still to go).
    std::fs::write(&gate, b"").unwrap();
    // SAFETY: a signal to this process; outpost's control thread handles it.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    let result = server.join().expect("run panicked");
    assert!(result.is_ok(), "run failed: {result:?}");
    // Both pieces start together at the gate: in either order.
    let mut done = finished(&log);
    done.sort();
    assert_eq!(done, ["1", "2"], "the accepted work must finish during the drain");
}
