//! A snapshot of the data plane's counters.

use std::fmt::{self, Write as _};

use outpost_common::{maps::Outcome, Verdict, Version};
use serde_json::{json, Map, Value};

/// Hellos by `[Version as usize][Verdict as usize]`: the table the kernel and the userspace
/// floor both keep.
pub type VersionTable = [[u64; Verdict::COUNT]; Version::COUNT];

/// Counter growth of a version table since `earlier`.
pub fn versions_since(now: &VersionTable, earlier: &VersionTable) -> VersionTable {
    let mut d = *now;
    for (row, old) in d.iter_mut().zip(earlier) {
        for (c, o) in row.iter_mut().zip(old) {
            *c = c.saturating_sub(*o);
        }
    }
    d
}

/// `{"TLS1.0": {"pass": n, "drop": n, "reject": n, "redirect": n}, …}`
pub fn versions_json(t: &VersionTable) -> Value {
    let mut versions = Map::new();
    for v in Version::ALL {
        let mut row = Map::new();
        for d in Verdict::ALL {
            row.insert(d.name().into(), json!(t[v as usize][d as usize]));
        }
        versions.insert(v.name().into(), Value::Object(row));
    }
    Value::Object(versions)
}

/// The table as text, a row per version.
pub fn write_versions(out: &mut String, t: &VersionTable) -> fmt::Result {
    write!(out, "{:<10}", "version")?;
    for d in Verdict::ALL {
        write!(out, " {:>12}", d.name())?;
    }
    writeln!(out)?;
    for v in Version::ALL {
        write!(out, "{:<10}", v.name())?;
        for n in t[v as usize] {
            write!(out, " {n:>12}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Hellos by `[Version as usize][Verdict as usize]`.
    pub versions: VersionTable,
    /// By `Outcome as usize`.
    pub outcomes: [u64; Outcome::COUNT as usize],
}

impl Stats {
    pub fn hellos(&self, version: Version, verdict: Verdict) -> u64 {
        self.versions[version as usize][verdict as usize]
    }

    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize]
    }

    /// Records of sampled hellos the kernel put in its ring.
    pub fn records_sent(&self) -> u64 {
        self.outcome(Outcome::RecordSent)
    }

    /// Records of sampled hellos lost: the ring was full (no reader, or a slow one), or the
    /// partial record of a followed hello was evicted.
    pub fn records_dropped(&self) -> u64 {
        self.outcome(Outcome::RecordDropped)
    }

    /// Counter growth since `earlier`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let mut d = self.clone();
        d.versions = versions_since(&self.versions, &earlier.versions);
        for (c, o) in d.outcomes.iter_mut().zip(&earlier.outcomes) {
            *c = c.saturating_sub(*o);
        }
        d
    }

    /// `{"versions": {"TLS1.0": {"pass": n, "drop": n, "reject": n, "redirect": n}, …},
    /// "parse": {…}}`
    pub fn to_json(&self) -> Value {
        let mut parse = Map::new();
        for o in Outcome::ALL {
            parse.insert(o.name().into(), json!(self.outcome(o)));
        }
        json!({ "versions": versions_json(&self.versions), "parse": parse })
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_versions(&mut out, &self.versions)?;
        writeln!(out)?;
        writeln!(out, "{:<28} {:>12}", "parse outcome", "count")?;
        for o in Outcome::ALL {
            writeln!(out, "{:<28} {:>12}", o.name(), self.outcome(o))?;
        }
        f.write_str(&out)
    }
}
