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
