//! The suite every [`Runtime`] backend passes: the local runtime against
//! real processes, the Kubernetes runtime against its fake API server.
//! A backend's test supplies a [`Fixture`] that turns a wanted behaviour
//! into a spec the backend can run (a command for local, an image for
//! Kubernetes); the checks themselves only speak the trait.

pub mod oneoffs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Progress, Runtime, Spec};

/// How a test release's `web` service behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves its health check at once.
    Healthy,
    /// Exits with status 1 right after starting, printing a line first.
    ExitAtStart,
    /// Runs but never passes its health check.
    NeverHealthy,
}

/// Makes runnable specs for a backend.
pub trait Fixture: Send + Sync {
    /// A release `release` of `app` whose service `web` (with a port and a
    /// health check with a short grace and interval) runs `count`
    /// processes behaving as `behaviour`.
    fn spec(&self, app: &str, release: &str, behaviour: Behaviour, count: u32) -> Spec;
}

/// Upper bound for a healthy rollout in the suite.
const SETTLE: Duration = Duration::from_secs(30);

/// Polls `progress` until it is not `Progressing`, or panics after `limit`.
pub async fn settle<R: Runtime + ?Sized>(
    runtime: &R,
    app: &str,
    release: &str,
    limit: Duration,
) -> Progress {
    let start = Instant::now();
    loop {
        let progress = runtime
            .progress(app, release, Duration::from_millis(500))
            .await
            .expect("progress");
        if !matches!(progress, Progress::Progressing { .. }) {
            return progress;
        }
        assert!(
            start.elapsed() < limit,
            "{app} {release} still progressing after {limit:?}: {progress:?}"
        );
    }
}

/// Runs every check against `runtime`. `app` must be unique to this run.
pub async fn run<R: Runtime + ?Sized>(runtime: &R, fixture: &dyn Fixture, app: &str) {
    // A first release comes up, healthy, at its scale, at a stable address.
    let r1 = Arc::new(fixture.spec(app, "RCONFORMAAA", Behaviour::Healthy, 2));
    runtime.apply("PROMO1", r1.clone(), SETTLE).await.unwrap();
    assert_eq!(
        settle(runtime, app, "RCONFORMAAA", SETTLE).await,
        Progress::Complete
    );
    let procs = runtime.processes(app).await.unwrap();
    assert_eq!(procs.len(), 2, "{procs:?}");
    assert!(
        procs
            .iter()
            .all(|p| p.release == "RCONFORMAAA" && p.status == "running"),
        "{procs:?}"
    );
    let services = runtime.services(app).await.unwrap();
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!((services[0].name.as_str(), services[0].count), ("web", 2));
    let address = services[0].address.clone();
    assert!(!address.is_empty());

    // Applying the same spec again starts nothing.
    runtime.apply("PROMO1", r1.clone(), SETTLE).await.unwrap();
    assert_eq!(
        settle(runtime, app, "RCONFORMAAA", SETTLE).await,
        Progress::Complete
    );
    let again = runtime.processes(app).await.unwrap();
    let ids = |p: &[super::ProcessInfo]| {
        let mut ids: Vec<String> = p.iter().map(|p| p.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&again),
        ids(&procs),
        "re-applying must not replace processes"
    );

    // A second release replaces every process; the address stays.
    let r2 = Arc::new(fixture.spec(app, "RCONFORMBBB", Behaviour::Healthy, 2));
    runtime.apply("PROMO2", r2.clone(), SETTLE).await.unwrap();
    assert_eq!(
        settle(runtime, app, "RCONFORMBBB", SETTLE).await,
        Progress::Complete
    );
    let procs = runtime.processes(app).await.unwrap();
    assert!(
        procs.len() == 2 && procs.iter().all(|p| p.release == "RCONFORMBBB"),
        "{procs:?}"
    );
    assert_eq!(runtime.services(app).await.unwrap()[0].address, address);

    // A crashing release fails fast, naming the service and the exit.
    let bad = Arc::new(fixture.spec(app, "RCONFORMCCC", Behaviour::ExitAtStart, 2));
    runtime.apply("PROMO3", bad, SETTLE).await.unwrap();
    match settle(runtime, app, "RCONFORMCCC", SETTLE).await {
        Progress::Failed { reason } => {
            assert!(
                reason.contains("service web") && reason.contains("exit"),
                "{reason}"
            );
        }
        other => panic!("a crashing release must fail, got {other:?}"),
    }
    // Rolling back to the good release completes and leaves only it.
    runtime.apply("PROMO3", r2.clone(), SETTLE).await.unwrap();
    assert_eq!(
        settle(runtime, app, "RCONFORMBBB", SETTLE).await,
        Progress::Complete
    );
    let procs = runtime.processes(app).await.unwrap();
    assert!(
        procs.iter().all(|p| p.release == "RCONFORMBBB"),
        "{procs:?}"
    );

    // A release that never gets healthy fails on its health check.
    let sick = Arc::new(fixture.spec(app, "RCONFORMDDD", Behaviour::NeverHealthy, 1));
    runtime.apply("PROMO4", sick, SETTLE).await.unwrap();
    match settle(runtime, app, "RCONFORMDDD", SETTLE).await {
        Progress::Failed { reason } => {
            assert!(
                reason.contains("service web") && reason.contains("health check"),
                "{reason}"
            );
        }
        other => panic!("a never-healthy release must fail, got {other:?}"),
    }

    // Removing the app stops everything.
    runtime.remove("PROMO4", app).await.unwrap();
    assert!(runtime.processes(app).await.unwrap().is_empty());
}
