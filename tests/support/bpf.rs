//! Running the XDP programs on crafted packets with BPF_PROG_TEST_RUN, katran-style: a table of
//! fixtures, each run against the real maps (policy written through the real control API) with
//! its counter changes checked.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{anyhow, ensure, Context as _, Result};
use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use dataplane::{
    Dataplane, HelloRecord, HelloRecords, Mode, Outcome, PinnedMaps, Stats, Verdict, Version,
};
use outpost_common::{budget::Bucket, maps::FlowKey};

use crate::packet::{hex, Packet};

/// XDP actions (uapi `enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub fn action_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "?",
    }
}

/// The object loaded (not attached) with its maps pinned in a directory of its own, removed on
/// drop.
pub struct Harness {
    dp: Dataplane,
    maps: PinnedMaps,
    pin_dir: PathBuf,
    records: HelloRecords,
}

/// What one run returned.
pub struct Run {
    pub action: u32,
    pub output: Vec<u8>,
    /// Mean time per run as the kernel measured it, truncated to whole nanoseconds.
    pub per_run: Duration,
    /// Mean time per run from this thread's CPU time around the call, in nanoseconds with
    /// their fractions: the kernel's figure is whole nanoseconds, a step of 15 % against a
    /// baseline of 6 ns. It includes the call's own setup (a few µs, negligible over a million
    /// runs) and excludes time the thread spent off its CPU, as the kernel's does.
    pub cpu_ns: f64,
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Harness {
    pub fn new(tag: &str) -> Result<Harness> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/outpost-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let dp = Dataplane::load(&pin_dir).context(
            "loading the XDP object (these tests need root and a kernel with BPF_PROG_TEST_RUN)",
        )?;
        let maps = dp.maps()?;
        // Opened from the pin, as a reader other than the loader opens it.
        let records = HelloRecords::open(&pin_dir)?;
        Ok(Harness { dp, maps, pin_dir, records })
    }

    /// Switches the kernel's recording of hellos (see `PinnedMaps::set_recording`).
    pub fn set_recording(&mut self, enabled: bool, sample: u32) -> Result<()> {
        self.maps.set_recording(enabled, sample)?;
        ensure!(self.maps.recording()? == (enabled, sample), "recording setting not kept");
        Ok(())
    }

    /// Every hello record waiting in the ring.
    pub fn take_records(&mut self) -> Vec<HelloRecord> {
        let mut out = Vec::new();
        self.records.drain(&mut out);
        out
    }

    /// Where the object's maps are pinned (a reader of the records in another thread opens
    /// them from here).
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// The ring reader, for waiting on it.
    pub fn records(&self) -> &HelloRecords {
        &self.records
    }

    pub fn set_policy(&mut self, min: Version, mode: Mode, ports: &[u16]) -> Result<()> {
        self.maps.set_policy(dataplane::Policy::new(min, mode))?;
        self.maps.set_ports(ports)
    }

    /// Sets a whole policy, the protected ports and the ports with a mode of their own.
    pub fn set_full_policy(
        &mut self,
        policy: dataplane::Policy,
        ports: &[u16],
        port_modes: &BTreeMap<u16, Mode>,
    ) -> Result<()> {
        self.maps.set_policy(policy)?;
        self.maps.set_ports(ports)?;
        self.maps.set_port_modes(port_modes)
    }

    /// Starts the global redirect budget afresh (its period ends at once). Rows take tokens
    /// from it within the same second; per-source budgets need no reset, as each row uses
    /// source networks of its own.
    pub fn reset_global_budget(&mut self) -> Result<()> {
        let path = self.pin_dir.join(outpost_common::maps::REDIRECT_GLOBAL);
        let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
        let mut global: Array<MapData, Bucket> = Array::try_from(Map::Array(data))?;
        Ok(global.set(0, Bucket::default(), 0)?)
    }

    /// Whether the program recorded the connection `key` as passed on to the legacy responder
    /// (taking the record, as userspace does).
    pub fn take_redirect(&mut self, key: &FlowKey) -> bool {
        self.maps.take_redirect(key)
    }

    pub fn stats(&self) -> Result<Stats> {
        self.maps.stats()
    }

    /// Runs `program` on `packet` `repeat` times.
    pub fn run(&mut self, program: &str, packet: &[u8], repeat: u32) -> Result<Run> {
        let prog = self.dp.program(program)?;
        // Room for the frame; XDP may not grow it here but the kernel wants headroom.
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let start = thread_cpu();
        let r = prog.test_run(opts).map_err(|e| anyhow!("BPF_PROG_TEST_RUN: {e}"))?;
        let cpu_ns = (thread_cpu() - start).as_nanos() as f64 / repeat.max(1) as f64;
        out.truncate(r.data_size_out as usize);
        Ok(Run { action: r.return_value, output: out, per_run: r.duration, cpu_ns })
    }

    /// The verifier's count of processed instructions for `program`.
    pub fn verified_insns(&mut self, program: &str) -> Result<Option<u32>> {
        Ok(self.dp.program(program)?.info()?.verified_instruction_count())
    }
}

/// Keeps the calling thread on one CPU: BPF_PROG_TEST_RUN runs the program on the caller's
/// CPU, and the kernel samples hellos per CPU, so "one in N" is exact only on one.
pub fn stay_on_one_cpu() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|c| libc::CPU_ISSET(*c, &set))
            .ok_or_else(|| anyhow!("no CPU in this thread's affinity"))?;
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// One packet of a fixture and what must come of it.
pub struct Step {
    pub packet: Vec<u8>,
    pub action: u32,
    /// The frame after the program; `None` means unchanged.
    pub output: Option<Vec<u8>>,
}

/// A row of the table.
pub struct Fixture {
    pub name: String,
    pub policy: (Version, Mode, Vec<u16>),
    /// Redirect budget (per second: in all, per source network) and ports with their own mode.
    pub budget: (u32, u32),
    pub port_modes: BTreeMap<u16, Mode>,
    /// Connections the program must have recorded as redirected (client, server), and those
    /// it must not have.
    pub redirected: Vec<(Packet, bool)>,
    pub steps: Vec<Step>,
    /// Expected growth of version × verdict counters; every other one must stay.
    pub versions: Vec<(Version, Verdict, u64)>,
    /// Expected growth of outcome counters besides `packets` (one per step); every other one
    /// must stay.
    pub outcomes: Vec<(Outcome, u64)>,
}

impl Fixture {
    pub fn new(name: impl Into<String>) -> Fixture {
        Fixture {
            name: name.into(),
            policy: (Version::Tls12, Mode::Reject, vec![443]),
            budget: (
                outpost_common::version::DEFAULT_REDIRECT_RATE,
                outpost_common::version::DEFAULT_REDIRECT_PER_SOURCE,
            ),
            port_modes: BTreeMap::new(),
            redirected: Vec::new(),
            steps: Vec::new(),
            versions: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    pub fn policy(mut self, min: Version, mode: Mode, ports: &[u16]) -> Fixture {
        self.policy = (min, mode, ports.to_vec());
        self
    }

    /// The redirect budget: `rate` a second in all, `per_source` per source network.
    pub fn budget(mut self, rate: u32, per_source: u32) -> Fixture {
        self.budget = (rate, per_source);
        self
    }

    pub fn port_mode(mut self, port: u16, mode: Mode) -> Fixture {
        self.port_modes.insert(port, mode);
        self
    }

    /// A legacy hello passed on to the legacy responder within the budget: passed untouched,
    /// counted as redirected, and its connection recorded for userspace.
    pub fn redirected(mut self, hello: &Packet, version: Version) -> Fixture {
        self.redirected.push((hello.clone(), true));
        self.step(hello.build(), XDP_PASS, None)
            .counts(version, Verdict::Redirect, 1)
            .outcome(Outcome::DecidedFirst, 1)
    }

    /// A legacy hello over the redirect budget (or one the responder cannot complete):
    /// rejected, and not recorded as redirected.
    pub fn rejected_not_redirected(mut self, hello: &Packet, version: Version) -> Fixture {
        self.redirected.push((hello.clone(), false));
        self.rejected_first(hello, version)
    }

    pub fn step(mut self, packet: Vec<u8>, action: u32, output: Option<Vec<u8>>) -> Fixture {
        self.steps.push(Step { packet, action, output });
        self
    }

    pub fn counts(mut self, version: Version, verdict: Verdict, n: u64) -> Fixture {
        self.versions.push((version, verdict, n));
        self
    }

    pub fn outcome(mut self, outcome: Outcome, n: u64) -> Fixture {
        self.outcomes.push((outcome, n));
        self
    }

    /// A hello rejected from its first segment: passed up as a reset to the server, counted.
    pub fn rejected_first(self, hello: &Packet, version: Version) -> Fixture {
        self.step(hello.build(), XDP_PASS, Some(hello.as_reset_to_server().build()))
            .counts(version, Verdict::Reject, 1)
            .outcome(Outcome::DecidedFirst, 1)
            .outcome(Outcome::ResetServer, 1)
    }

    /// A later segment of a rejected flow (the client's retransmission): a reset back to the
    /// client, not counted as a hello again.
    pub fn client_reset(self, segment: &Packet) -> Fixture {
        self.step(segment.build(), XDP_TX, Some(segment.as_reset_to_client().build()))
            .outcome(Outcome::FlowRepeat, 1)
            .outcome(Outcome::ResetClient, 1)
    }

    /// Runs the row once and checks actions, output bytes and counters.
    pub fn check(&self, h: &mut Harness) -> Result<()> {
        let (min, mode, ports) = &self.policy;
        let mut policy = dataplane::Policy::new(*min, *mode);
        (policy.redirect_rate, policy.redirect_per_source) = self.budget;
        h.set_full_policy(policy, ports, &self.port_modes)?;
        h.reset_global_budget()?;
        let before = h.stats()?;
        for (i, step) in self.steps.iter().enumerate() {
            let run = h.run(outpost_common::maps::PROG_FLOOR, &step.packet, 1)?;
            let want = step.output.as_deref().unwrap_or(&step.packet);
            let bytes_ok = step.action == XDP_DROP || run.output == want;
            ensure!(
                run.action == step.action && bytes_ok,
                "step {i}: got {} want {}\ninput:\n{}\nexpected:\n{}\nactual:\n{}",
                action_name(run.action),
                action_name(step.action),
                hex(&step.packet),
                hex(want),
                hex(&run.output)
            );
        }
        let delta = h.stats()?.since(&before);
        let mut want = Stats::default();
        for &(v, d, n) in &self.versions {
            want.versions[v as usize][d as usize] += n;
        }
        want.outcomes[Outcome::Packets as usize] = self.steps.len() as u64;
        for &(o, n) in &self.outcomes {
            want.outcomes[o as usize] += n;
        }
        ensure!(
            delta == want,
            "counters moved differently\nexpected:\n{}\nactual:\n{}",
            want.to_json(),
            delta.to_json()
        );
        for (packet, expected) in &self.redirected {
            let (client, server) = packet.sockets();
            let recorded = h.take_redirect(&FlowKey::of_connection(client, server));
            ensure!(
                recorded == *expected,
                "{client} -> {server}: recorded as redirected: {recorded}, expected {expected}"
            );
        }
        Ok(())
    }
}
