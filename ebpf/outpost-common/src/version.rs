//! Protocol versions, policy modes and verdicts.

/// A protocol version a client offered, as the classifier decided it.
///
/// The discriminants index the version × verdict counters, so they are dense and stable.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    Sslv2 = 0,
    Sslv3 = 1,
    Tls10 = 2,
    Tls11 = 3,
    Tls12 = 4,
    Tls13 = 5,
    /// Nothing known was offered: an unknown `legacy_version`, or a `supported_versions` list of
    /// GREASE and future values only. Never below the floor: unknown is not legacy.
    Unknown = 6,
}

impl Version {
    /// Every version, in counter order.
    pub const ALL: [Version; 7] = [
        Version::Sslv2,
        Version::Sslv3,
        Version::Tls10,
        Version::Tls11,
        Version::Tls12,
        Version::Tls13,
        Version::Unknown,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The version a TLS `ProtocolVersion` value names; SSLv3 (0x0300) to TLS 1.3 (0x0304).
    /// GREASE (0x?a?a), drafts (0x7fxx) and anything else are not known versions.
    #[inline(always)]
    pub const fn from_wire(v: u16) -> Option<Version> {
        match v {
            0x0300 => Some(Version::Sslv3),
            0x0301 => Some(Version::Tls10),
            0x0302 => Some(Version::Tls11),
            0x0303 => Some(Version::Tls12),
            0x0304 => Some(Version::Tls13),
            _ => None,
        }
    }

    #[inline(always)]
    pub const fn from_u8(v: u8) -> Option<Version> {
        match v {
            0 => Some(Version::Sslv2),
            1 => Some(Version::Sslv3),
            2 => Some(Version::Tls10),
            3 => Some(Version::Tls11),
            4 => Some(Version::Tls12),
            5 => Some(Version::Tls13),
            6 => Some(Version::Unknown),
            _ => None,
        }
    }

    /// The name used by `outpost stats` and `/metrics`.
    pub const fn name(self) -> &'static str {
        match self {
            Version::Sslv2 => "SSLv2",
            Version::Sslv3 => "SSLv3",
            Version::Tls10 => "TLS1.0",
            Version::Tls11 => "TLS1.1",
            Version::Tls12 => "TLS1.2",
            Version::Tls13 => "TLS1.3",
            Version::Unknown => "unknown",
        }
    }
}

/// What the data plane does with a hello below the floor.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Count it and let it through: shadow mode, to see who would be cut off before a cut-off.
    Observe = 0,
    /// Drop it silently; the client times out.
    Drop = 1,
    /// Reset the connection on both sides: the client learns at once, the server keeps nothing.
    Reject = 2,
    /// Within the redirect budget, pass TLS 1.0/1.1 (and, under a 1.3 floor, 1.2) hellos on to
    /// the legacy responder, which completes the old handshake and answers a 403 page that says
    /// why; over budget, and for SSLv2/SSLv3 (which the responder cannot complete), reject.
    Redirect = 3,
}

impl Mode {
    #[inline(always)]
    pub const fn from_u8(v: u8) -> Option<Mode> {
        match v {
            0 => Some(Mode::Observe),
            1 => Some(Mode::Drop),
            2 => Some(Mode::Reject),
            3 => Some(Mode::Redirect),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Drop => "drop",
            Mode::Reject => "reject",
            Mode::Redirect => "redirect",
        }
    }

    /// The mode a config file or the command line names.
    pub fn from_name(name: &str) -> Option<Mode> {
        match name {
            "observe" => Some(Mode::Observe),
            "drop" => Some(Mode::Drop),
            "reject" => Some(Mode::Reject),
            "redirect" => Some(Mode::Redirect),
            _ => None,
        }
    }
}

/// What happened to one hello. Discriminants index the version × verdict counters.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    Reject = 2,
    /// Passed on to the legacy responder, within the redirect budget.
    Redirect = 3,
}

impl Verdict {
    pub const ALL: [Verdict; 4] =
        [Verdict::Pass, Verdict::Drop, Verdict::Reject, Verdict::Redirect];
    pub const COUNT: usize = Self::ALL.len();

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
            Verdict::Redirect => "redirect",
        }
    }
}

/// The policy the data plane enforces; one entry of the `policy` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lowest [`Version`] let through, as its discriminant.
    pub min_version: u8,
    /// [`Mode`] for hellos below `min_version`, as its discriminant; a port may have a mode of
    /// its own (the `port_modes` map).
    pub mode: u8,
    /// Non-zero once userspace wrote the policy; a zeroed map entry means [`Policy::DEFAULT`].
    pub configured: u8,
    pub _pad: u8,
    /// Redirect budget of the whole data plane: hellos passed on to the legacy responder per
    /// second (see [`crate::budget`]); over it, `redirect` rejects. 0: none are.
    pub redirect_rate: u32,
    /// The same per source network (IPv4 /24, IPv6 /48).
    pub redirect_per_source: u32,
}

/// Redirect budget by default: per second, in all and per source network.
pub const DEFAULT_REDIRECT_RATE: u32 = 200;
pub const DEFAULT_REDIRECT_PER_SOURCE: u32 = 5;

impl Policy {
    /// TLS 1.2 and up, in reject mode.
    pub const DEFAULT: Policy = Policy::new(Version::Tls12, Mode::Reject);

    pub const fn new(min_version: Version, mode: Mode) -> Policy {
        Policy {
            min_version: min_version as u8,
            mode: mode as u8,
            configured: 1,
            _pad: 0,
            redirect_rate: DEFAULT_REDIRECT_RATE,
            redirect_per_source: DEFAULT_REDIRECT_PER_SOURCE,
        }
    }

    /// The verdict for a hello offering `offered` in this policy's own mode.
    #[inline(always)]
    pub fn verdict(&self, offered: Version) -> Verdict {
        self.verdict_in(self.mode, offered)
    }

    /// The verdict for a hello offering `offered` under `mode` (the policy's, or its port's).
    /// Unknown versions pass: a version this code does not know is a newer one, not a legacy
    /// one. A mode out of range (a map written by something else) fails open. `Redirect` is
    /// what the budget is then asked about: over it the hello is rejected after all. SSLv2 and
    /// SSLv3 are rejected outright in redirect mode: the responder cannot complete them.
    #[inline(always)]
    pub fn verdict_in(&self, mode: u8, offered: Version) -> Verdict {
        if offered == Version::Unknown || (offered as u8) >= self.min_version {
            return Verdict::Pass;
        }
        match Mode::from_u8(mode) {
            Some(Mode::Drop) => Verdict::Drop,
            Some(Mode::Reject) => Verdict::Reject,
            Some(Mode::Redirect) if offered <= Version::Sslv3 => Verdict::Reject,
            Some(Mode::Redirect) => Verdict::Redirect,
            Some(Mode::Observe) | None => Verdict::Pass,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_floor_and_mode() {
        let p = Policy::new(Version::Tls12, Mode::Reject);
        assert_eq!(p.verdict(Version::Sslv2), Verdict::Reject);
        assert_eq!(p.verdict(Version::Tls11), Verdict::Reject);
        assert_eq!(p.verdict(Version::Tls12), Verdict::Pass);
        assert_eq!(p.verdict(Version::Tls13), Verdict::Pass);
        assert_eq!(p.verdict(Version::Unknown), Verdict::Pass);
        let p = Policy::new(Version::Tls13, Mode::Drop);
        assert_eq!(p.verdict(Version::Tls12), Verdict::Drop);
        let p = Policy::new(Version::Tls13, Mode::Observe);
        assert_eq!(p.verdict(Version::Sslv3), Verdict::Pass);
        let garbage = Policy { mode: 9, ..Policy::new(Version::Tls12, Mode::Reject) };
        assert_eq!(garbage.verdict(Version::Tls10), Verdict::Pass);
    }

    #[test]
    fn redirect_is_for_what_the_responder_can_complete() {
        let p = Policy::new(Version::Tls12, Mode::Redirect);
        assert_eq!(p.verdict(Version::Tls10), Verdict::Redirect);
        assert_eq!(p.verdict(Version::Tls11), Verdict::Redirect);
        assert_eq!(p.verdict(Version::Sslv3), Verdict::Reject);
        assert_eq!(p.verdict(Version::Sslv2), Verdict::Reject);
        assert_eq!(p.verdict(Version::Tls12), Verdict::Pass);
        assert_eq!(p.verdict(Version::Unknown), Verdict::Pass);
        let p = Policy::new(Version::Tls13, Mode::Reject);
        assert_eq!(p.verdict_in(Mode::Redirect as u8, Version::Tls12), Verdict::Redirect);
        assert_eq!(p.verdict_in(Mode::Observe as u8, Version::Tls12), Verdict::Pass);
        for m in [Mode::Observe, Mode::Drop, Mode::Reject, Mode::Redirect] {
            assert_eq!(Mode::from_u8(m as u8), Some(m));
            assert_eq!(Mode::from_name(m.name()), Some(m));
        }
    }

    #[test]
    fn wire_versions() {
        assert_eq!(Version::from_wire(0x0304), Some(Version::Tls13));
        assert_eq!(Version::from_wire(0x0300), Some(Version::Sslv3));
        assert_eq!(Version::from_wire(0x0a0a), None);
        assert_eq!(Version::from_wire(0x7f1c), None);
        assert_eq!(Version::from_wire(0x0305), None);
        for v in Version::ALL {
            assert_eq!(Version::from_u8(v as u8), Some(v));
        }
    }
}
