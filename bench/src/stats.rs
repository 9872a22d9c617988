//! Small helpers for timing: percentiles and a closed-loop load runner.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `p`-th percentile (0..=100) of `samples`, in milliseconds.
pub(crate) fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank].as_secs_f64() * 1000.0
}

/// Runs `op` from `concurrency` workers for `duration` and returns
/// completed operations per second. `op` gets the worker index and the
/// operation number within that worker; any error aborts the run.
pub(crate) async fn throughput<F, Fut>(
    concurrency: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers = (0..concurrency).map(|worker| {
        let op = op.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < duration {
                op(worker, n).await?;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    });
    for result in futures::future::join_all(workers).await {
        result??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The p50, p90 and p99 of a set of samples, in milliseconds: the three
/// figures most benches print per case.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Spread {
    /// The spread of `samples` (sorted in place).
    pub(crate) fn of(samples: &mut [Duration]) -> Self {
        Self {
            p50: percentile_ms(samples, 50.0),
            p90: percentile_ms(samples, 90.0),
            p99: percentile_ms(samples, 99.0),
        }
    }

    /// The header line over [`Spread::row`]s.
    pub(crate) fn header() {
        println!("{:<44} {:>9} {:>9} {:>9}", "case (ms)", "p50", "p90", "p99");
    }

    /// One table row named `name`.
    pub(crate) fn row(&self, name: &str) {
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>9.1}",
            self.p50, self.p90, self.p99
        );
    }

    /// `{"p50": …, "p90": …, "p99": …}` for the JSON summary line.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({"p50": self.p50, "p90": self.p90, "p99": self.p99})
    }
}

/// Each measured sample minus its paired baseline (never below zero).
pub(crate) fn paired_overheads(measured: &[Duration], baselines: &[Duration]) -> Vec<Duration> {
    measured
        .iter()
        .zip(baselines)
        .map(|(m, b)| m.saturating_sub(*b))
        .collect()
}
