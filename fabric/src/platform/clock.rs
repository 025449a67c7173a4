//! Time as a value passed in, so tests and the simulation can skew it.

use std::time::{Duration, Instant};

/// A source of time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch (may be skewed).
    fn unix_ms(&self) -> u64;
}

/// The runtime's clock (virtual in the simulation), optionally skewed for
/// wall-clock readings, as a host with a wrong NTP setting would be.
#[derive(Debug, Clone, Copy, Default)]
pub struct RtClock {
    /// Added to wall-clock readings (`ahead`), or subtracted.
    pub skew: Duration,
    /// Whether `skew` runs ahead of true time or behind it.
    pub ahead: bool,
}

impl Clock for RtClock {
    fn now(&self) -> Instant {
        crate::rt::now()
    }

    fn unix_ms(&self) -> u64 {
        let skew = self.skew.as_millis() as u64;
        let t = crate::rt::unix_ms();
        if self.ahead {
            t.saturating_add(skew)
        } else {
            t.saturating_sub(skew)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_moves_wall_time_only() {
        let behind = RtClock {
            skew: Duration::from_secs(3600),
            ahead: false,
        };
        let ahead = RtClock {
            skew: Duration::from_secs(3600),
            ahead: true,
        };
        let d = ahead.unix_ms() - behind.unix_ms();
        assert!((7_200_000..7_201_000).contains(&d), "{d}");
        assert!(behind.now() <= RtClock::default().now());
    }
}
