//! How busy an SE is: the CPU figure it reports with its counters, which
//! placement and autoscale read (docs/placement.md).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric::rt;

/// Where an SE's CPU figure comes from.
#[derive(Debug, Clone)]
pub enum CpuMeter {
    /// This process's CPU time over the wall time since the last reading,
    /// as a share of the cores it may use (real hosts; nothing in the
    /// simulation).
    Process(Arc<Mutex<Option<(Instant, Duration)>>>),
    /// A figure set from outside: the simulation's load model and tests.
    Fixed(Arc<AtomicU32>),
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter::Process(Arc::default())
    }
}

impl CpuMeter {
    /// CPU use since the last call, percent (None: not known yet).
    pub fn percent(&self) -> Option<u32> {
        match self {
            CpuMeter::Fixed(v) => Some(v.load(Ordering::Relaxed).min(100)),
            CpuMeter::Process(last) => {
                let (now, used) = (rt::now(), rt::process_cpu_time()?);
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let previous = last.replace((now, used));
                let (then, was) = previous?;
                let wall = now.saturating_duration_since(then).as_secs_f64();
                let cores = rt::cpu_cores() as f64;
                if wall <= 0.0 {
                    return None;
                }
                let busy = used.saturating_sub(was).as_secs_f64() / (wall * cores);
                Some((busy * 100.0).round().clamp(0.0, 100.0) as u32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_figure_is_read_as_set_and_capped() {
        let v = Arc::new(AtomicU32::new(42));
        let m = CpuMeter::Fixed(v.clone());
        assert_eq!(m.percent(), Some(42));
        v.store(250, Ordering::Relaxed);
        assert_eq!(m.percent(), Some(100));
    }

    #[test]
    fn the_process_figure_follows_work_done() {
        let m = CpuMeter::default();
        assert_eq!(
            m.percent(),
            None,
            "the first reading has nothing to compare with"
        );
        // Busy for a while on one thread.
        let start = rt::now();
        let mut x = 0u64;
        while rt::now() - start < Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let busy = m.percent().expect("a figure");
        let cores = rt::cpu_cores() as u32;
        // One busy thread of `cores`: about 100/cores percent (loosely: CI shares its CPUs).
        assert!(
            busy >= 100 / cores / 3 && busy <= 100,
            "{busy}% on {cores} cores"
        );
    }
}
