//! Predictive autoscale's model (`autoscale_mode = "predictive"`): the
//! daily pattern of a virtual service's load, learned from what its SEs
//! report, so that the Controller can add an SE before the peak instead of
//! after it (docs/placement.md, "Predictive autoscale").
//!
//! Pure: time comes in as a duration since the Unix epoch, so the same
//! pattern lines up with the day on every Controller and in the simulation.
//! The period (a day by default) is cut into [`BUCKETS`] equal buckets; each
//! bucket keeps the highest load seen in it during the current period, and
//! when a period ends folds that peak into what it learned, an exponentially
//! weighted mean over the periods ([`LEARN_WEIGHT`] for the newest). A
//! bucket with no sample in a period keeps what it learned.

use std::time::Duration;

/// Buckets per period: 15 minutes each in a day.
pub const BUCKETS: usize = 96;

/// Weight of the newest period's peak in a bucket's learned load.
pub const LEARN_WEIGHT: f64 = 0.5;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Index of the period `peak` belongs to.
    period: u64,
    /// Highest load seen in this bucket during `period` (`None`: no sample yet).
    peak: Option<f64>,
    /// What earlier periods taught: `None` until one ended with a sample here.
    learned: Option<f64>,
    /// Periods folded into `learned`.
    periods: u32,
}

/// The periodic load pattern of one virtual service.
#[derive(Debug, Clone)]
pub struct LoadForecast {
    period: Duration,
    buckets: Vec<Bucket>,
}

impl LoadForecast {
    /// A model with nothing learned, for a pattern repeating every `period`
    /// (clamped to at least one millisecond per bucket).
    pub fn new(period: Duration) -> LoadForecast {
        LoadForecast {
            period: period.max(Duration::from_millis(BUCKETS as u64)),
            buckets: vec![Bucket::default(); BUCKETS],
        }
    }

    /// The period this model was built for.
    pub fn period(&self) -> Duration {
        self.period
    }

    fn bucket_width(&self) -> Duration {
        self.period / BUCKETS as u32
    }

    /// (period index, bucket index) of time `t`.
    fn locate(&self, t: Duration) -> (u64, usize) {
        let period = self.period.as_millis().max(1);
        let at = t.as_millis();
        let width = self.bucket_width().as_millis().max(1);
        let bucket = ((at % period) / width).min(BUCKETS as u128 - 1) as usize;
        ((at / period) as u64, bucket)
    }

    /// The load was `load` at time `t` (since the Unix epoch). Samples may
    /// come at any rate; a negative or non-finite load is ignored.
    pub fn observe(&mut self, t: Duration, load: f64) {
        if !load.is_finite() || load < 0.0 {
            return;
        }
        let (period, i) = self.locate(t);
        let b = &mut self.buckets[i];
        if b.period != period {
            if b.period < period {
                fold(b);
                b.period = period;
            } else {
                return; // a sample from a period already folded: too old
            }
        }
        b.peak = Some(b.peak.map_or(load, |p| p.max(load)));
    }

    /// The highest load learned for the time from `t` to `t + ahead` (its
    /// buckets in earlier periods), and over how many periods the busiest of
    /// them learned it; `None` where nothing is learned yet. A bucket whose
    /// period ended without a later sample folds its peak in here too.
    pub fn peak_ahead(&self, t: Duration, ahead: Duration) -> Option<(f64, u32)> {
        let (period, first) = self.locate(t);
        let width = self.bucket_width().as_millis().max(1);
        let span = (ahead.as_millis() / width) as usize + 1;
        (0..span.min(BUCKETS))
            .map(|k| (first + k) % BUCKETS)
            .filter_map(|i| {
                let mut b = self.buckets[i];
                if b.period < period {
                    fold(&mut b);
                }
                b.learned.map(|l| (l, b.periods))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// End the bucket's period: its peak joins what it learned.
fn fold(b: &mut Bucket) {
    if let Some(peak) = b.peak.take() {
        b.learned = Some(match b.learned {
            None => peak,
            Some(l) => l * (1.0 - LEARN_WEIGHT) + peak * LEARN_WEIGHT,
        });
        b.periods = b.periods.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR: Duration = Duration::from_secs(3_600);

    /// A day's load: 150 from 09:00 to 11:00, 20 otherwise.
    fn load_at(t: Duration) -> f64 {
        let hour = (t.as_secs() % 86_400) / 3_600;
        if (9..11).contains(&hour) {
            150.0
        } else {
            20.0
        }
    }

    fn learn_days(f: &mut LoadForecast, days: u64) {
        for minute in 0..days * 24 * 60 {
            let t = Duration::from_secs(minute * 60);
            f.observe(t, load_at(t));
        }
    }

    #[test]
    fn nothing_is_forecast_before_a_period_has_ended() {
        let mut f = LoadForecast::new(DAY);
        assert_eq!(f.peak_ahead(Duration::ZERO, HOUR), None);
        for minute in 0..(23 * 60) {
            let t = Duration::from_secs(minute * 60);
            f.observe(t, load_at(t));
        }
        // Still the first day: nothing learned for its 09:00 yet.
        assert_eq!(f.peak_ahead(8 * HOUR, HOUR), None);
    }

    #[test]
    fn the_next_day_s_peak_is_seen_an_hour_ahead() {
        let mut f = LoadForecast::new(DAY);
        learn_days(&mut f, 1);
        // Day 2, 08:00: the hour ahead reaches the 09:00 peak.
        let (peak, periods) = f.peak_ahead(DAY + 8 * HOUR, HOUR).unwrap();
        assert_eq!((peak, periods), (150.0, 1));
        // 06:00: the hour ahead is quiet.
        assert_eq!(f.peak_ahead(DAY + 6 * HOUR, HOUR).unwrap().0, 20.0);
        // 11:30: the peak is behind.
        let t = DAY + 11 * HOUR + HOUR / 2;
        assert_eq!(f.peak_ahead(t, HOUR).unwrap().0, 20.0);
    }

    #[test]
    fn a_window_wraps_past_midnight() {
        let mut f = LoadForecast::new(DAY);
        for minute in 0..24 * 60 {
            let t = Duration::from_secs(minute * 60);
            let load = if minute < 30 { 90.0 } else { 10.0 };
            f.observe(t, load);
        }
        // Day 2, 23:45 (a sample there ends day 1 for that bucket): the
        // window reaches day 3's first half hour, learned from day 1.
        let t = DAY + 23 * HOUR + Duration::from_secs(45 * 60);
        f.observe(t, 10.0);
        assert_eq!(f.peak_ahead(t, HOUR).unwrap().0, 90.0);
    }

    #[test]
    fn learned_peaks_follow_a_changed_pattern_with_the_weight() {
        let mut f = LoadForecast::new(DAY);
        learn_days(&mut f, 1);
        // Day 2 the 09:00 peak is only 50.
        for minute in (24 * 60)..(48 * 60) {
            let t = Duration::from_secs(minute * 60);
            let load = if load_at(t) > 100.0 { 50.0 } else { 20.0 };
            f.observe(t, load);
        }
        let (peak, periods) = f.peak_ahead(2 * DAY + 8 * HOUR, HOUR).unwrap();
        assert_eq!(periods, 2);
        assert_eq!(peak, 150.0 * (1.0 - LEARN_WEIGHT) + 50.0 * LEARN_WEIGHT);
    }

    #[test]
    fn bad_samples_and_tiny_periods_do_no_harm() {
        let mut f = LoadForecast::new(Duration::ZERO);
        assert_eq!(f.period(), Duration::from_millis(BUCKETS as u64));
        f.observe(Duration::from_millis(5), f64::NAN);
        f.observe(Duration::from_millis(5), -1.0);
        f.observe(Duration::from_millis(5), f64::INFINITY);
        assert_eq!(
            f.peak_ahead(Duration::from_millis(200), Duration::ZERO),
            None
        );
        // Buckets of 1 ms: period 0 sees 7 at 5 ms, period 1 sees 1 at 101 ms.
        f.observe(Duration::from_millis(5), 7.0);
        f.observe(Duration::from_millis(101), 1.0);
        // A sample from a period already folded is ignored.
        f.observe(Duration::from_millis(5), 99.0);
        let got = f.peak_ahead(Duration::from_millis(101), Duration::ZERO);
        assert_eq!(got, Some((7.0, 1)));
        let got = f.peak_ahead(Duration::from_millis(197), Duration::ZERO);
        assert_eq!(got, Some((7.0 * (1.0 - LEARN_WEIGHT) + LEARN_WEIGHT, 2)));
    }
}
