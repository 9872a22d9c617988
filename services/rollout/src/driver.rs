//! Driving rollouts: the policy half of the service. A driver holds the
//! rollout's lease (renewing it while it works), walks the phase machine,
//! enforces the deadline, honours cancel, rolls back to the fallback (whose
//! progress it watches with a fresh deadline), and reports the outcome.
//!
//! Every write is conditional on the lease epoch, so a driver that lost its
//! lease stops without touching anything. Rollouts whose lease expired (a
//! replica died) are taken over by the takeover loop of any replica; the
//! runtime's `apply` is idempotent, so a takeover resumes and starts
//! nothing twice.

mod release_phase;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_events::NewEvent;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::error::Result;
use crate::model::{Phase, RolloutPlan};
use crate::recorder::Recorder;
use crate::report::Reporter;
use crate::runtime::{DynRuntime, EventSink as _, Progress};
use crate::store::Store;

/// How long one progress read may wait for a change.
const PROGRESS_WAIT: Duration = Duration::from_secs(1);

/// The drivers of one replica.
pub struct Drivers {
    store: Store,
    runtime: DynRuntime,
    recorder: Recorder,
    reporter: Reporter,
    replica: String,
    lease_ttl: Duration,
    /// Rollouts this replica drives, with the handle that wakes them on cancel.
    active: Mutex<HashMap<String, Arc<Notify>>>,
    shutdown: CancellationToken,
}

/// How watching a release ended.
enum Watched {
    Complete,
    Failed(String),
    Lost,
}

impl Drivers {
    /// Drivers for replica `replica`; they stop when `shutdown` fires.
    pub fn new(
        store: Store,
        runtime: DynRuntime,
        recorder: Recorder,
        reporter: Reporter,
        replica: String,
        lease_ttl: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            runtime,
            recorder,
            reporter,
            replica,
            lease_ttl,
            active: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// This replica's id (the lease owner name).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The lease length.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Fires when this replica starts draining (after SIGTERM): its drivers
    /// hand their rollouts back and its watches end.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The runtime's name (`local`).
    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// Emits an app-status event of a rollout.
    pub fn status_event(&self, app: &str, rollout: &str, from: &str, to: Phase) {
        self.recorder.emit(
            NewEvent::now(
                app,
                format!("system/{}/atom/app", self.runtime.name()),
                format!("Status: {from} => {to}"),
            )
            .in_rollout(rollout),
        );
    }

    fn event(&self, app: &str, rollout: &str, object: &str, message: String) {
        self.recorder.emit(
            NewEvent::now(
                app,
                format!("system/{}/{object}", self.runtime.name()),
                message,
            )
            .in_rollout(rollout),
        );
    }

    /// Fences the rollout's events by the lease at `epoch` (see
    /// [`Recorder::hold`]); [`Drivers::spawn`] does it too.
    pub fn hold(&self, id: &str, epoch: u64) {
        self.recorder.hold(id, epoch);
    }

    /// Starts driving `id` under the lease at `epoch`, unless already driven here.
    pub fn spawn(self: &Arc<Self>, id: String, epoch: u64) {
        let notify = {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.contains_key(&id) {
                return;
            }
            let notify = Arc::new(Notify::new());
            active.insert(id.clone(), notify.clone());
            notify
        };
        self.recorder.hold(&id, epoch);
        let this = self.clone();
        // In the span that started it (StartRollout's request span, or the
        // takeover loop), so the rollout and its CompletePromotion call
        // belong to the trace of the promotion that asked for it.
        tokio::spawn(
            async move {
                this.drive(&id, epoch, notify).await;
                this.active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
            .in_current_span(),
        );
    }

    /// Wakes the local driver of `id` (a cancel was recorded).
    pub fn wake(&self, id: &str) {
        if let Some(notify) = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            notify.notify_one();
        }
    }

    /// Takes over rollouts whose lease expired or was handed back (a
    /// replica draining for a restart), now and every half lease but at
    /// least every second, so a hand-over costs about a second, until
    /// shutdown.
    pub async fn takeover_loop(self: Arc<Self>) {
        let every = (self.lease_ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            if let Err(e) = self.take_over().await {
                tracing::warn!("failed to look for orphaned rollouts: {e}");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn take_over(self: &Arc<Self>) -> Result<()> {
        for id in self.store.orphaned().await? {
            if self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&id)
            {
                continue;
            }
            if let Some(epoch) = self
                .store
                .acquire(&id, &self.replica, self.lease_ttl)
                .await?
            {
                tracing::info!(rollout = %id, epoch, "took over a rollout");
                self.spawn(id, epoch);
            }
        }
        Ok(())
    }

    /// Waits until no rollout is driven here (after shutdown), at most `limit`.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while !self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    #[tracing::instrument(skip_all, fields(rollout = %id, epoch))]
    async fn drive(&self, id: &str, epoch: u64, wake: Arc<Notify>) {
        let lost = self.shutdown.child_token();
        let cancel = Arc::new(AtomicBool::new(false));
        let renewing = {
            let (store, id, owner, ttl) = (
                self.store.clone(),
                id.to_owned(),
                self.replica.clone(),
                self.lease_ttl,
            );
            let (lost, cancel, wake) = (lost.clone(), cancel.clone(), wake.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = lost.cancelled() => return,
                        () = tokio::time::sleep(ttl / 3) => {}
                    }
                    match store.renew(&id, &owner, epoch, ttl).await {
                        Ok(Some(cancelled)) => {
                            if cancelled && !cancel.swap(true, Ordering::AcqRel) {
                                wake.notify_one();
                            }
                        }
                        Ok(None) => {
                            tracing::warn!(rollout = %id, epoch, "lost the rollout lease; stopping");
                            lost.cancel();
                            return;
                        }
                        Err(e) => tracing::warn!(rollout = %id, "failed to renew the lease: {e}"),
                    }
                }
            })
        };
        if let Err(e) = self.phases(id, epoch, &lost, &cancel, &wake).await {
            tracing::error!(rollout = %id, "failed to drive the rollout: {e}");
        }
        let shutting_down = self.shutdown.is_cancelled();
        lost.cancel();
        let _ = renewing.await;
        // Finished under our lease: its events need no fencing any more. A
        // lost lease keeps them fenced (the runtime may still report).
        if let Ok(Some(plan)) = self.store.plan(id).await
            && plan.rollout.epoch == epoch
            && plan.rollout.phase.is_terminal()
        {
            self.recorder.finish(id);
        }
        if shutting_down {
            // Let another replica (or our restart) take over at once.
            let _ = self.store.release_lease(id, epoch).await;
        }
    }

    async fn phases(
        &self,
        id: &str,
        epoch: u64,
        lost: &CancellationToken,
        cancel: &AtomicBool,
        wake: &Notify,
    ) -> Result<()> {
        loop {
            if lost.is_cancelled() {
                return Ok(());
            }
            let Some(RolloutPlan {
                rollout,
                target,
                fallback,
            }) = self.store.plan(id).await?
            else {
                return Ok(());
            };
            if rollout.epoch != epoch {
                return Ok(());
            }
            cancel.fetch_or(rollout.cancel_requested, Ordering::AcqRel);
            let deadline = Duration::from_secs(u64::from(rollout.deadline_secs));
            let app = rollout.app.as_str();
            let moved = match rollout.phase {
                // The release command, if the release has one, runs here:
                // before anything of the release starts (release_phase.rs).
                Phase::Pending => {
                    match self.release_phase(id, &target, lost, cancel, wake).await? {
                        release_phase::Outcome::Passed => {
                            self.transition(
                                id,
                                epoch,
                                app,
                                Phase::Pending,
                                Phase::Updating,
                                "",
                                None,
                            )
                            .await?
                        }
                        release_phase::Outcome::Lost => return Ok(()),
                        release_phase::Outcome::Failed(reason) => {
                            self.transition(
                                id,
                                epoch,
                                app,
                                Phase::Pending,
                                Phase::Failure,
                                &reason,
                                None,
                            )
                            .await?
                        }
                        release_phase::Outcome::Cancelled(reason) => {
                            self.transition(
                                id,
                                epoch,
                                app,
                                Phase::Pending,
                                Phase::Cancelled,
                                &reason,
                                None,
                            )
                            .await?
                        }
                    }
                }
                Phase::Updating => {
                    let watched = if cancel.load(Ordering::Acquire) {
                        Watched::Failed("cancelled".to_owned())
                    } else {
                        // With the scale set by hand (scale.rs).
                        let target = crate::scale::overlay(&self.store, target.clone()).await?;
                        self.runtime.apply(id, target.clone(), deadline).await?;
                        self.watch(
                            app,
                            &target.release,
                            rollout.deadline_at,
                            rollout.deadline_secs,
                            lost,
                            Some((cancel, wake)),
                        )
                        .await
                    };
                    match watched {
                        Watched::Lost => return Ok(()),
                        Watched::Complete => {
                            self.event(
                                app,
                                id,
                                "atom/app",
                                format!("Release {} is running", target.release),
                            );
                            self.transition(
                                id,
                                epoch,
                                app,
                                Phase::Updating,
                                Phase::Running,
                                "",
                                None,
                            )
                            .await?
                        }
                        Watched::Failed(reason) => {
                            let back = fallback.as_ref().map_or_else(
                                || "stopping it (no release to return to)".to_owned(),
                                |f| format!("rolling back to {}", f.release),
                            );
                            self.event(
                                app,
                                id,
                                "atom/app",
                                format!("Rollout of {} failed: {reason}; {back}", target.release),
                            );
                            let fresh = Utc::now() + deadline;
                            self.transition(
                                id,
                                epoch,
                                app,
                                Phase::Updating,
                                Phase::Reverting,
                                &reason,
                                Some(fresh),
                            )
                            .await?
                        }
                    }
                }
                Phase::Reverting => match &fallback {
                    Some(fallback) => {
                        let fallback = crate::scale::overlay(&self.store, fallback.clone()).await?;
                        self.runtime.apply(id, fallback.clone(), deadline).await?;
                        match self
                            .watch(
                                app,
                                &fallback.release,
                                rollout.deadline_at,
                                rollout.deadline_secs,
                                lost,
                                None,
                            )
                            .await
                        {
                            Watched::Lost => return Ok(()),
                            Watched::Complete => {
                                self.event(
                                    app,
                                    id,
                                    "atom/app",
                                    format!("Release {} is running again", fallback.release),
                                );
                                self.transition(
                                    id,
                                    epoch,
                                    app,
                                    Phase::Reverting,
                                    Phase::Reverted,
                                    &rollout.reason,
                                    None,
                                )
                                .await?
                            }
                            Watched::Failed(why) => {
                                let reason = format!(
                                    "{}; rollback to {} failed: {why}",
                                    rollout.reason, fallback.release
                                );
                                self.transition(
                                    id,
                                    epoch,
                                    app,
                                    Phase::Reverting,
                                    Phase::Failure,
                                    &reason,
                                    None,
                                )
                                .await?
                            }
                        }
                    }
                    None => {
                        self.runtime.remove(id, app).await?;
                        self.transition(
                            id,
                            epoch,
                            app,
                            Phase::Reverting,
                            Phase::Failure,
                            &rollout.reason,
                            None,
                        )
                        .await?
                    }
                },
                Phase::Running | Phase::Reverted | Phase::Failure | Phase::Cancelled => {
                    self.recorder.flush().await;
                    if !rollout.reported
                        && let (Some(finished), Some(outcome)) =
                            (rollout.finished, crate::report::outcome(rollout.phase))
                    {
                        slipway_telemetry::metrics::rollout_finished(
                            (finished - rollout.created).to_std().unwrap_or_default(),
                            outcome_name(outcome),
                        );
                    }
                    if self.reporter.report(&rollout, lost).await {
                        self.store.mark_reported(id, epoch).await?;
                    }
                    return Ok(());
                }
            };
            if !moved {
                tracing::warn!(rollout = %id, epoch, "lost the rollout lease before a phase change; stopping");
                return Ok(());
            }
        }
    }

    /// Records a phase change: the status event first (flushed, so a watcher
    /// that sees the new phase has every event before it), then the phase.
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        id: &str,
        epoch: u64,
        app: &str,
        from: Phase,
        to: Phase,
        reason: &str,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        self.status_event(app, id, &from.to_string(), to);
        self.recorder.flush().await;
        let moved = self
            .store
            .set_phase(id, epoch, to, reason, deadline)
            .await?;
        if moved {
            tracing::info!(rollout = %id, phase = to.as_str(), reason, "rollout phase changed");
        }
        Ok(moved)
    }

    /// Watches the runtime move `app` to `release` until it is complete, it
    /// fails, the deadline passes, a cancel arrives (when `cancel` is given),
    /// or the lease is lost.
    async fn watch(
        &self,
        app: &str,
        release: &str,
        deadline_at: DateTime<Utc>,
        deadline_secs: u32,
        lost: &CancellationToken,
        cancel: Option<(&AtomicBool, &Notify)>,
    ) -> Watched {
        let mut last = Progress::Progressing {
            services: Vec::new(),
        };
        loop {
            if lost.is_cancelled() {
                return Watched::Lost;
            }
            if let Some((flag, _)) = cancel
                && flag.load(Ordering::Acquire)
            {
                return Watched::Failed("cancelled".to_owned());
            }
            let left = (deadline_at - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return Watched::Failed(format!(
                    "deadline exceeded after {deadline_secs}s: {}",
                    last.shortfall()
                ));
            }
            let woken = async {
                match cancel {
                    Some((_, notify)) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = lost.cancelled() => return Watched::Lost,
                () = woken => {
                    if let Some((flag, _)) = cancel {
                        flag.store(true, Ordering::Release);
                    }
                }
                progress = self.runtime.progress(app, release, PROGRESS_WAIT.min(left)) => match progress {
                    Ok(Progress::Complete) => return Watched::Complete,
                    Ok(Progress::Failed { reason }) => return Watched::Failed(reason),
                    Ok(progress) => last = progress,
                    Err(e) => {
                        tracing::warn!(app, release, "failed to read rollout progress: {e}");
                        tokio::time::sleep(Duration::from_millis(200).min(left)).await;
                    }
                },
            }
        }
    }
}

/// The `outcome` attribute of the rollout duration metric.
fn outcome_name(outcome: slipway_api::release::v1::PromotionOutcome) -> &'static str {
    slipway_domain::promotion::PromotionOutcome::try_from(outcome)
        .map_or("unspecified", |o| o.into_state().as_str())
}
