//! What a floor would refuse, from the hellos counted so far: the share of hellos, and whose
//! (fingerprints with names, server names), before the floor is raised.
//!
//! A hello is refused when its offered version is below the floor, by the same rule the data
//! plane applies ([`Policy::verdict`]): an unknown version is never refused. The verdicts the
//! hellos got under the policy in force do not matter here.

use std::collections::HashMap;
use std::fmt::Write as _;

use outpost_common::{Mode, Policy, Verdict, Version};
use serde::Serialize;

use crate::table::{ClientTable, Fingerprint};
use crate::text::share;

/// A fingerprint the floor would refuse.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefusedClient {
    /// The JA4, or `unknown` (records whose lists were cut).
    pub ja4: String,
    pub name: Option<&'static str>,
    /// Its hellos that would be refused.
    pub count: u64,
    /// The versions those hellos offered (`TLS1.0`, …), lowest first.
    pub versions: Vec<&'static str>,
}

/// A server name whose clients the floor would refuse.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefusedSni {
    /// Escaped as in the table; null for hellos without one.
    pub sni: Option<String>,
    pub count: u64,
}

/// The answer to "what if the floor were `floor`?".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Simulation {
    /// The floor proposed (`TLS1.2`).
    pub floor: &'static str,
    /// Hellos counted.
    pub total: u64,
    /// Of those, how many the floor would refuse.
    pub refused: u64,
    /// `refused / total`, 0 without hellos.
    pub share: f64,
    /// Refused hellos in rows evicted to `other`: their fingerprints are no longer known.
    pub refused_other: u64,
    /// By count, most first.
    pub clients: Vec<RefusedClient>,
    /// By count, most first.
    pub snis: Vec<RefusedSni>,
}

/// What `floor` would refuse of what `table` counted.
pub fn simulate(table: &ClientTable, floor: Version) -> Simulation {
    let policy = Policy::new(floor, Mode::Reject);
    let refused = |v: Version| policy.verdict(v) != Verdict::Pass;

    let mut clients: HashMap<Fingerprint, (u64, Vec<Version>)> = HashMap::new();
    let mut snis: HashMap<Option<String>, u64> = HashMap::new();
    for (fingerprint, sni, version, count) in table.sni_counts() {
        if !refused(version) {
            continue;
        }
        let c = clients.entry(fingerprint).or_default();
        c.0 += count;
        if !c.1.contains(&version) {
            c.1.push(version);
        }
        *snis.entry(sni).or_default() += count;
    }
    let other = table.other_counts();
    let refused_other: u64 = Version::ALL
        .into_iter()
        .filter(|v| refused(*v))
        .map(|v| other[v as usize].iter().sum::<u64>())
        .sum();

    let mut clients: Vec<RefusedClient> = clients
        .into_iter()
        .map(|(f, (count, mut versions))| {
            versions.sort_unstable();
            RefusedClient {
                ja4: f.as_str().to_owned(),
                name: f.name(),
                count,
                versions: versions.into_iter().map(Version::name).collect(),
            }
        })
        .collect();
    clients.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.ja4.cmp(&b.ja4)));
    let mut snis: Vec<RefusedSni> =
        snis.into_iter().map(|(sni, count)| RefusedSni { sni, count }).collect();
    snis.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.sni.cmp(&b.sni)));

    let total = table.total();
    let refused_total = clients.iter().map(|c| c.count).sum::<u64>() + refused_other;
    Simulation {
        floor: floor.name(),
        total,
        refused: refused_total,
        share: if total == 0 { 0.0 } else { refused_total as f64 / total as f64 },
        refused_other,
        clients,
        snis,
    }
}

/// Lines of each list shown by [`Simulation::render_text`].
const SHOWN: usize = 20;

impl Simulation {
    /// For people: the share, then the clients and server names refused (first 20 of each).
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "A floor of {} would refuse {} of {} hellos ({}).",
            self.floor,
            self.refused,
            self.total,
            share(self.refused, self.total)
        );
        if self.refused == 0 {
            return o;
        }
        let _ = writeln!(o, "\nClients refused:");
        for c in self.clients.iter().take(SHOWN) {
            let _ = writeln!(
                o,
                "  {:>8}  {:>6}  {}  {}  ({})",
                c.count,
                share(c.count, self.total),
                c.ja4,
                c.name.unwrap_or("unknown client"),
                c.versions.join(", ")
            );
        }
        more(&mut o, self.clients.len());
        if self.refused_other > 0 {
            let _ = writeln!(
                o,
                "  {:>8}  {:>6}  (in rows evicted from the table: fingerprints not kept)",
                self.refused_other,
                share(self.refused_other, self.total)
            );
        }
        let _ = writeln!(o, "\nServer names they asked for:");
        for s in self.snis.iter().take(SHOWN) {
            let _ = writeln!(
                o,
                "  {:>8}  {:>6}  {}",
                s.count,
                share(s.count, self.total),
                s.sni.as_deref().unwrap_or("(none)")
            );
        }
        more(&mut o, self.snis.len());
        o
    }
}

fn more(o: &mut String, n: usize) {
    if n > SHOWN {
        let _ = writeln!(o, "  … and {} more", n - SHOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_common::record::{HelloRecord, FLAG_SNI};

    fn hello(seed: u16, version: Version, sni: &[u8]) -> HelloRecord {
        let mut r = HelloRecord::new();
        r.version = version as u8;
        r.legacy_version = 0x0301;
        r.n_ciphers = 1;
        r.ciphers[0] = seed;
        if !sni.is_empty() {
            r.flags |= FLAG_SNI;
            r.sni[..sni.len()].copy_from_slice(sni);
            r.sni_len = sni.len() as u8;
        }
        r
    }

    #[test]
    fn refuses_below_the_floor_only() {
        let mut t = ClientTable::new(4);
        let plan = [
            (1, Version::Tls10, &b"pos.example"[..], 5),
            (2, Version::Tls11, b"pos.example", 3),
            (1, Version::Tls11, b"api.example", 2),
            (3, Version::Tls13, b"www.example", 40),
        ];
        for (seed, v, sni, n) in plan {
            for i in 0..n {
                t.observe(&hello(seed, v, sni), i);
            }
        }
        // Evicts the api.example row (2 TLS 1.1 hellos) into other.
        t.observe(&hello(4, Version::Unknown, b""), 1);
        let s = simulate(&t, Version::Tls12);
        assert_eq!((s.total, s.refused, s.refused_other), (51, 10, 2));
        assert!((s.share - 10.0 / 51.0).abs() < 1e-9, "{}", s.share);
        assert_eq!(s.clients.len(), 2);
        assert_eq!((s.clients[0].count, &s.clients[0].versions), (5, &vec!["TLS1.0"]));
        assert_eq!(s.snis, [RefusedSni { sni: Some("pos.example".into()), count: 8 }]);
        let none = simulate(&t, Version::Tls10);
        assert_eq!((none.refused, none.clients.len()), (0, 0));
        assert!(none.render_text().contains("would refuse 0 of 51 hellos (0.0%)"));
        let all = simulate(&t, Version::Unknown);
        assert_eq!(all.refused, 50, "unknown is never refused");
        let text = s.render_text();
        assert!(text.contains("A floor of TLS1.2 would refuse 10 of 51 hellos (19.6%)"), "{text}");
        assert!(text.contains("pos.example"), "{text}");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["floor"], "TLS1.2");
        assert_eq!(v["clients"][0]["versions"][0], "TLS1.0");
    }

    #[test]
    fn empty_table() {
        let s = simulate(&ClientTable::default(), Version::Tls13);
        assert_eq!((s.total, s.refused, s.share), (0, 0, 0.0));
        assert!(s.render_text().contains("0 of 0 hellos (-)"));
    }
}
