//! Rate limits per client address and per email: GCRA token buckets from `governor`, kept in
//! memory on each node.
//!
//! Why per node and not counters in the store: a limit is checked on every request, including
//! the ones it refuses; a store write per check would make abuse cost the store a transaction
//! each (what the limit exists to prevent) and add a round trip to every answer. The price is
//! that N nodes admit up to N times the configured rate, which bounds abuse just as well. The
//! one limit that must hold across nodes, mails per reservation per hour, is kept in the
//! reservation's own row ([`crate::model`]).

use std::{hash::Hash, net::IpAddr, num::NonZeroU32, time::Duration};

use governor::{
    clock::{Clock as _, DefaultClock},
    DefaultKeyedRateLimiter, Quota, RateLimiter,
};

use crate::config::LimitsConfig;

/// The limiters of one configuration.
pub struct Limits {
    reserve_ip: DefaultKeyedRateLimiter<IpAddr>,
    reserve_email: DefaultKeyedRateLimiter<String>,
    availability_ip: DefaultKeyedRateLimiter<IpAddr>,
    confirm_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub fn new(c: &LimitsConfig) -> Limits {
        Limits {
            reserve_ip: RateLimiter::keyed(Quota::per_minute(nz(c.reserve_per_ip_per_minute))),
            reserve_email: RateLimiter::keyed(Quota::per_hour(nz(c.reserve_per_email_per_hour))),
            availability_ip: RateLimiter::keyed(Quota::per_minute(nz(
                c.availability_per_ip_per_minute
            ))),
            confirm_ip: RateLimiter::keyed(Quota::per_minute(nz(c.confirm_per_ip_per_minute))),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when `ip` made too many reservations.
    pub fn reserve_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.reserve_ip, &ip)
    }

    pub fn reserve_email(&self, email: &str) -> Result<(), Duration> {
        self.check(&self.reserve_email, &email.to_owned())
    }

    pub fn availability_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.availability_ip, &ip)
    }

    pub fn confirm_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.confirm_ip, &ip)
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        l: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), Duration> {
        l.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose buckets are full again, so memory follows the active clients.
    pub fn shrink(&self) {
        self.reserve_ip.retain_recent();
        self.reserve_email.retain_recent();
        self.availability_ip.retain_recent();
        self.confirm_ip.retain_recent();
        self.reserve_ip.shrink_to_fit();
        self.reserve_email.shrink_to_fit();
        self.availability_ip.shrink_to_fit();
        self.confirm_ip.shrink_to_fit();
    }
}

/// Seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.as_secs() == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_buckets() {
        let l = Limits::new(&LimitsConfig {
            reserve_per_ip_per_minute: 2,
            reserve_per_email_per_hour: 1,
            ..LimitsConfig::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.reserve_ip(a).is_ok());
        assert!(l.reserve_ip(a).is_ok());
        let wait = l.reserve_ip(a).unwrap_err();
        assert!(wait > Duration::from_secs(20) && wait <= Duration::from_secs(30), "{wait:?}");
        assert!(l.reserve_ip(b).is_ok(), "another address has its own bucket");
        assert!(l.reserve_email("x@example.com").is_ok());
        assert!(l.reserve_email("x@example.com").is_err());
        assert!(l.reserve_email("y@example.com").is_ok());
        l.shrink();
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
