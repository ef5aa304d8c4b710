//! The edge's flame graph: `perf record` on its PID while it serves at maximum load, the stacks
//! folded by `inferno-collapse-perf` and drawn by `inferno-flamegraph`.
//!
//! Call graphs are unwound from copies of the stack (`--call-graph dwarf`): a release build has
//! no frame pointers, so `fp` would cut most stacks short. Hardware cycles are sampled where the
//! machine has a PMU; on virtual machines without one (this project's) perf would fall back to
//! the software clock anyway, and here it is chosen explicitly (`-e cpu-clock`) and said.
//! Every tool is required: `cargo xtask setup` installs them, and a missing one is an error that
//! names the fix.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cpus::Pin, procs};

/// Samples per second: enough for a readable graph in 10 s, few enough that unwinding them
/// afterwards takes seconds.
const FREQ: u32 = 499;
/// Bytes of stack copied per sample for DWARF unwinding.
const STACK_BYTES: u32 = 16_384;
const PERF: &str = "perf";

/// A flame graph written to disk, and how it was sampled.
#[derive(Debug, serde::Serialize)]
pub struct Flame {
    pub svg: PathBuf,
    pub folded: PathBuf,
    /// perf's event: `cycles` or `cpu-clock`.
    pub event: String,
    /// Why the event is what it is.
    pub event_note: String,
    /// Stacks perf could not unwind to their root (rooted at `[unknown]`), a share of the
    /// samples' weight.
    pub unrooted_share: f64,
    pub seconds: f64,
    /// Samples in the folded stacks.
    pub samples: u64,
    /// The `perf record` command line.
    pub command: String,
}

/// What to sample: a hardware cycle counter when there is one, else the software clock.
pub fn choose_event() -> Result<(String, String)> {
    let out = Command::new(PERF)
        .args(["stat", "-x,", "-e", "cycles", "--", "true"])
        .stdout(Stdio::null())
        .output()
        .with_context(|| {
            format!("running `{PERF}`: `cargo xtask setup` installs Debian's linux-perf")
        })?;
    let text = String::from_utf8_lossy(&out.stderr);
    let counted =
        out.status.success() && text.lines().any(|l| l.contains("cycles") && !l.contains("<not"));
    Ok(if counted {
        ("cycles".into(), "hardware cycles (the machine has a PMU)".into())
    } else {
        (
            "cpu-clock".into(),
            "no hardware cycle counter here (`perf stat -e cycles`: not supported): sampled on \
             the software clock, -e cpu-clock"
                .into(),
        )
    })
}

/// Checks that perf and inferno are there before a load run is spent on them.
pub fn tools() -> Result<(PathBuf, PathBuf)> {
    choose_event()?;
    Ok((tool("inferno-collapse-perf")?, tool("inferno-flamegraph")?))
}

/// Samples `pid` (all its threads) for `seconds` while the caller keeps it loaded, and writes
/// `<dir>/<stem>.svg` and `<dir>/<stem>.folded`. perf itself runs on `pin`'s CPUs.
pub fn record(
    pid: u32,
    seconds: f64,
    pin: &Pin,
    dir: &Path,
    stem: &str,
    title: &str,
) -> Result<Flame> {
    let (collapse, flamegraph) = tools()?;
    let (event, event_note) = choose_event()?;
    let data = dir.join(format!("{stem}.perf.data"));
    let argv = pin.wrap(&[
        PERF.into(),
        "record".into(),
        "-e".into(),
        event.clone(),
        "-F".into(),
        FREQ.to_string(),
        "--call-graph".into(),
        format!("dwarf,{STACK_BYTES}"),
        "-p".into(),
        pid.to_string(),
        "-o".into(),
        data.display().to_string(),
        "--".into(),
        "sleep".into(),
        format!("{seconds:.1}"),
    ]);
    let command = procs::shell_line(&argv);
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    procs::run(&argv_ref, Duration::from_secs_f64(seconds + 60.0)).with_context(|| {
        format!(
            "`perf record` on the edge failed (kernel.perf_event_paranoid is {}; the bench \
             needs root or a value ≤ 1)",
            fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default().trim()
        )
    })?;
    let script = dir.join(format!("{stem}.perf.txt"));
    let folded = dir.join(format!("{stem}.folded"));
    let svg = dir.join(format!("{stem}.svg"));
    let data_s = data.display().to_string();
    // Unwinding thousands of DWARF stacks takes a while on a busy machine.
    to_file(&[PERF, "script", "-i", &data_s], &script, Duration::from_secs(600))?;
    let script_s = script.display().to_string();
    to_file(&[&collapse.display().to_string(), &script_s], &folded, Duration::from_secs(300))?;
    // One header line per sample, its stack indented below it. (The folded counts are the
    // samples' periods: nanoseconds for cpu-clock, not samples.)
    let samples = std::io::BufRead::lines(std::io::BufReader::new(fs::File::open(&script)?))
        .map_while(Result::ok)
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
        .count() as u64;
    if samples == 0 {
        bail!("perf recorded no sample of PID {pid} in {seconds} s ({})", data.display());
    }
    let (mut total, mut unrooted) = (0u64, 0u64);
    for line in fs::read_to_string(&folded)?.lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else { continue };
        let n: u64 = n.parse().unwrap_or(0);
        total += n;
        if stack.contains("[unknown]") {
            unrooted += n;
        }
    }
    let unrooted_share = unrooted as f64 / total.max(1) as f64;
    let folded_s = folded.display().to_string();
    let full_title = format!("{title}; {event}, {FREQ} Hz, {samples} samples");
    to_file(
        &[&flamegraph.display().to_string(), "--title", &full_title, &folded_s],
        &svg,
        Duration::from_secs(300),
    )?;
    // perf.data and its text are large (tens of MB); the folded stacks keep what the graph shows.
    let _ = fs::remove_file(&data);
    let _ = fs::remove_file(&script);
    Ok(Flame { svg, folded, event, event_note, unrooted_share, seconds, samples, command })
}

/// Runs `argv` with its stdout into `out` (its stderr beside it, kept only on failure), at most
/// `limit`.
fn to_file(argv: &[&str], out: &Path, limit: Duration) -> Result<()> {
    let line = procs::shell_line(argv);
    let err_path = out.with_extension("stderr");
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let err = fs::File::create(&err_path)?;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let err = fs::read_to_string(&err_path).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(5).collect();
                bail!(
                    "`{line}` failed ({status}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let _ = fs::remove_file(&err_path);
            return Ok(());
        }
        if Instant::now() > deadline || procs::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `name` on PATH, or in cargo's bin directory (`cargo install` puts inferno there, and a
/// shell that did not source cargo's env may not have it on PATH).
fn tool(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).with_context(|| {
        format!("{name} not found: `cargo xtask setup` installs it (cargo install inferno)")
    })
}
