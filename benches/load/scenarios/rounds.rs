//! Interleaved rounds: every system measured `rounds` times, taking turns (round `r` starts with
//! system `r`), each row the median of its runs. Other work on a shared machine then falls on
//! every system alike instead of on whichever ran during it.

use super::*;

pub(super) struct Rounds {
    /// Per system (in the order given), its measured runs.
    pub runs: Vec<Vec<Measured>>,
    /// Per system, why it has no row.
    pub failed: Vec<Option<String>>,
}

/// One system's medians.
pub(super) struct Row<'a> {
    pub median_run: &'a Measured,
    pub rps: f64,
    pub min: f64,
    pub max: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub edge_us_per_op: f64,
    pub client_cpu_s: f64,
    pub others_cpu_s: f64,
}

impl Row<'_> {
    pub fn cells(&self, name: &str) -> Vec<String> {
        vec![
            name.to_owned(),
            format!("{:.0}", self.rps),
            format!("{:.0}-{:.0}", self.min, self.max),
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            self.errors.to_string(),
            format!("{:.1}", self.edge_us_per_op),
            format!("{:.2}", self.client_cpu_s),
            format!("{:.2}", self.others_cpu_s),
        ]
    }
}

impl Rounds {
    /// Runs `load(system, target, round)` for each available system, `ctx.sizes.rounds` times,
    /// interleaved, measuring the edge's and the origin's CPU around each run.
    pub fn run(
        ctx: &Ctx,
        systems: &[Sys],
        origin: &Running,
        load: impl FnMut(&Sys, SocketAddr, usize) -> Result<RunResult>,
    ) -> Result<Rounds> {
        Self::run_n(ctx.sizes.rounds, systems, origin, load)
    }

    /// [`Rounds::run`] with `rounds` rounds.
    pub fn run_n(
        rounds: usize,
        systems: &[Sys],
        origin: &Running,
        load: impl FnMut(&Sys, SocketAddr, usize) -> Result<RunResult>,
    ) -> Result<Rounds> {
        Self::run_warm(rounds, systems, origin, |_, _, _| Ok(()), load)
    }

    /// [`Rounds::run_n`] with `warm(system, target, round)` before each measured run, outside
    /// its window: a client whose own warm-up would fall inside it (h2load's) warms up there.
    pub fn run_warm(
        rounds: usize,
        systems: &[Sys],
        origin: &Running,
        mut warm: impl FnMut(&Sys, SocketAddr, usize) -> Result<()>,
        mut load: impl FnMut(&Sys, SocketAddr, usize) -> Result<RunResult>,
    ) -> Result<Rounds> {
        let origin_addr = loopback(origin.port);
        let n = systems.len();
        let mut runs: Vec<Vec<Measured>> = (0..n).map(|_| Vec::new()).collect();
        let mut failed: Vec<Option<String>> =
            systems.iter().map(|s| s.target(origin_addr).err().map(str::to_owned)).collect();
        for round in 0..rounds {
            for k in 0..n {
                let i = (k + round) % n;
                if failed[i].is_some() {
                    continue;
                }
                let s = &systems[i];
                let Ok((target, edge)) = s.target(origin_addr) else { continue };
                let measured = warm(s, target, round + 1)
                    .and_then(|()| measure(edge, origin, || load(s, target, round + 1)));
                match measured {
                    Ok(m) => runs[i].push(m),
                    Err(e) => {
                        procs::check_interrupted()?;
                        eprintln!("outpost-load: {}: not available: {e:#}", s.name);
                        failed[i] = Some(format!("{e:#}"));
                    }
                }
            }
        }
        Ok(Rounds { runs, failed })
    }

    /// System `i`'s medians (its CPU is the origin's when it has no TLS: the direct rows).
    pub fn row(&self, i: usize, tls: bool) -> Result<Row<'_>, &str> {
        if let Some(why) = &self.failed[i] {
            return Err(why);
        }
        let runs = &self.runs[i];
        if runs.is_empty() {
            return Err("no run");
        }
        let med_f = |f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        let med_u = |f: &dyn Fn(&Measured) -> u64| med_f(&|m| f(m) as f64) as u64;
        let rps: Vec<f64> = runs.iter().map(|m| m.run.throughput).collect();
        let rps_median = median(rps.clone());
        let median_run = runs
            .iter()
            .min_by(|a, b| {
                let d = |m: &Measured| (m.run.throughput - rps_median).abs();
                d(a).total_cmp(&d(b))
            })
            .expect("not empty");
        Ok(Row {
            median_run,
            rps: rps_median,
            min: rps.iter().copied().fold(f64::INFINITY, f64::min),
            max: rps.iter().copied().fold(0.0, f64::max),
            p50_us: med_u(&|m| m.run.latency.p50_us),
            p99_us: med_u(&|m| m.run.latency.p99_us),
            p999_us: med_u(&|m| m.run.latency.p999_us),
            errors: runs.iter().map(|m| m.run.errors).sum(),
            edge_us_per_op: med_f(&|m| {
                let cpu = if tls { m.edge_cpu_s } else { m.origin_cpu_s };
                cpu * 1e6 / m.run.ok.max(1) as f64
            }),
            client_cpu_s: med_f(&|m| m.run.client_cpu_s),
            others_cpu_s: med_f(&|m| m.others_cpu_s()),
        })
    }

    fn index(systems: &[Sys], name: &str) -> Option<usize> {
        systems.iter().position(|s| s.name == name)
    }

    pub fn median_rps(&self, systems: &[Sys], name: &str) -> Option<f64> {
        let i = Self::index(systems, name)?;
        self.row(i, systems[i].tls).ok().map(|r| r.rps)
    }

    pub fn median_p99(&self, systems: &[Sys], name: &str) -> Option<f64> {
        let i = Self::index(systems, name)?;
        self.row(i, systems[i].tls).ok().map(|r| r.p99_us as f64)
    }

    /// The notes every interleaved scenario prints under its table: the CPU split, the other
    /// work on the machine, and what each system negotiated.
    pub fn notes(&self, systems: &[Sys], split: &Split) -> [String; 3] {
        [
            split.describe(),
            format!(
                "other work on the machine: up to {:.2} CPUs during a run",
                self.others_cpus_max()
            ),
            negotiated_note(
                systems
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| self.runs[i].first().map(|m| (s.name.as_str(), &m.run))),
            ),
        ]
    }

    /// Most CPUs other work used during any run (CPU seconds over wall seconds).
    pub fn others_cpus_max(&self) -> f64 {
        self.runs
            .iter()
            .flatten()
            .map(|m| m.others_cpu_s() / m.wall_s.max(1e-3))
            .fold(0.0, f64::max)
    }

    pub fn json(&self, systems: &[Sys]) -> Value {
        systems
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let runs: Vec<Value> = self.runs[i].iter().map(Measured::json).collect();
                // "not available" is what the CI run looks for.
                let why = self.failed[i].as_ref().map(|w| format!("not available: {w}"));
                json!({"system": s.name, "runs": runs, "why": why})
            })
            .collect::<Vec<_>>()
            .into()
    }
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `met`, `not met` or `not measured` for `a / b ≥ target`.
pub(super) fn target_verdict(a: Option<f64>, b: Option<f64>, target: f64) -> &'static str {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b >= target => "met",
        (Some(_), Some(b)) if b > 0.0 => "not met",
        _ => "not measured",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_verdicts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(target_verdict(Some(8.0), Some(10.0), 0.8), "met");
        assert_eq!(target_verdict(Some(7.9), Some(10.0), 0.8), "not met");
        assert_eq!(target_verdict(None, Some(10.0), 0.8), "not measured");
    }
}
