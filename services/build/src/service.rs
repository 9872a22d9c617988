//! The build service's operations, independent of gRPC: create (and start)
//! a build, read and list builds, follow or replay a build's log, cancel,
//! and store uploaded objects.
//!
//! Builds run as tasks of this replica, at most `max_concurrent_builds` at a
//! time. Each open build has a heartbeat in the database; a background loop
//! refreshes this replica's and fails builds whose replica fell silent, and
//! stops local builds that another replica was asked to cancel.
//!
//! With a [`LogBus`] every local build's log is also published, and a reader
//! of a build running on another replica follows the bus from its offset,
//! then finishes from the stored log; without one (or while the bus is
//! down) such a reader waits for the build to end and replays the stored log.

mod archive;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use slipway_domain::{AppName, BuildId};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::error::{Error, Result};
use crate::log::{BusEntry, LogBus, Step, Stitch};
use crate::model::{Build, BuildStatus, Outcome};
use crate::objects::{ObjectRef, PutError};
use crate::pipeline::{Pipeline, Running, Stop};
use crate::store::{BUILD_STEP, CANCEL_STEP};
use slipway_storage::idempotency::Claim;

/// How often open builds' heartbeats are refreshed and checked.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A build whose replica has been silent this long is failed.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);
/// How often a reader of a build running on another replica checks whether
/// it ended.
const REMOTE_POLL: Duration = Duration::from_secs(1);
/// How long CancelBuild waits for a local build to wind down.
const CANCEL_WAIT: Duration = Duration::from_secs(15);
/// Largest chunk of a replayed log sent at once.
const REPLAY_CHUNK: usize = 64 << 10;

/// Why a build whose replica fell silent failed.
const ABANDONED_REASON: &str = "the build service replica running the build stopped";
/// Longest time spent reading an abandoned build's log back from the bus.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

/// Stores what the bus holds of the log of `id`, a build failed because its
/// replica stopped before storing it (nothing is overwritten), so its replay
/// is what readers were streamed live plus why it failed.
async fn recover_log(bus: Arc<LogBus>, pipeline: Arc<Pipeline>, id: BuildId, reason: &str) {
    let recovered = match tokio::time::timeout(RECOVER_WITHIN, bus.recover(&id)).await {
        Ok(Ok(Some(recovered))) => recovered,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(build_id = %id, "could not read an abandoned build's log from the event bus: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(build_id = %id, "reading an abandoned build's log from the event bus timed out");
            return;
        }
    };
    let (app, bytes) = recovered;
    match pipeline.objects.get_log(&app, &id).await {
        Ok(None) => {}
        Ok(Some(_)) => return,
        Err(e) => {
            tracing::warn!(build_id = %id, "could not check an abandoned build's stored log: {e}");
            return;
        }
    }
    let mut log = bytes.to_vec();
    if log.last().is_some_and(|b| *b != b'\n') {
        log.push(b'\n');
    }
    log.extend_from_slice(format!("Build failed: {reason}\n").as_bytes());
    match pipeline.objects.put_log(&app, &id, log.into()).await {
        Ok(()) => {
            tracing::info!(build_id = %id, "stored an abandoned build's log from the event bus")
        }
        Err(e) => tracing::warn!(build_id = %id, "failed to store an abandoned build's log: {e}"),
    }
}

/// A stream of log chunks.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// What CreateBuild asks for, validated.
#[derive(Clone, Debug)]
pub struct NewBuild {
    /// The app.
    pub app: AppName,
    /// The source object.
    pub source: ObjectRef,
    /// Manifest path inside the source.
    pub manifest_path: String,
    /// Description for the release.
    pub description: String,
    /// The commit, when known.
    pub git_sha: String,
}

/// The build service.
#[derive(Debug)]
pub struct BuildService {
    pipeline: Arc<Pipeline>,
    running: Mutex<HashMap<BuildId, Arc<Running>>>,
    permits: Arc<Semaphore>,
    /// This replica's id in the `runner` column.
    runner: String,
    build_timeout: Duration,
    /// Fires when the service shuts down; running builds are stopped.
    shutdown: CancellationToken,
    /// Where build logs are published for the other replicas, if anywhere.
    log_bus: Option<Arc<LogBus>>,
}

impl BuildService {
    /// A service running at most `concurrency` builds at once.
    pub fn new(
        pipeline: Pipeline,
        concurrency: usize,
        build_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pipeline: Arc::new(pipeline),
            running: Mutex::default(),
            permits: Arc::new(Semaphore::new(concurrency)),
            runner: format!("{:032x}", rand::random::<u128>()),
            build_timeout,
            shutdown,
            log_bus: None,
        }
    }

    /// Publishes the logs of the builds run here on `bus` and follows the
    /// logs of builds running elsewhere from it.
    pub fn with_log_bus(mut self, bus: Arc<LogBus>) -> Self {
        self.log_bus = Some(bus);
        self
    }

    fn running(&self, id: &BuildId) -> Option<Arc<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Records a build and starts it in the background.
    pub async fn create(self: &Arc<Self>, request: NewBuild, actor: String) -> Result<Build> {
        self.create_keyed(request, actor, None).await
    }

    /// Records a build and starts it in the background. A keyed call
    /// (`claim`) makes one build per key: the same key again answers that
    /// build as it is now.
    pub async fn create_keyed(
        self: &Arc<Self>,
        request: NewBuild,
        actor: String,
        claim: Option<Claim>,
    ) -> Result<Build> {
        let store = self.pipeline.store.clone();
        store
            .keys()
            .once(claim.as_ref(), |done| {
                let (request, actor) = (request.clone(), actor.clone());
                let claim = claim.as_ref();
                async move {
                    match done.get(BUILD_STEP) {
                        Some(id) => {
                            let id = BuildId::parse(id).map_err(|_| {
                                Error::Internal(format!("corrupt idempotency record: {id}"))
                            })?;
                            self.get(&request.app, &id).await
                        }
                        None => self.create_new(request, actor, claim).await,
                    }
                }
            })
            .await
    }

    async fn create_new(
        self: &Arc<Self>,
        request: NewBuild,
        actor: String,
        claim: Option<&Claim>,
    ) -> Result<Build> {
        if request.source.app != request.app {
            return Err(Error::InvalidArgument(format!(
                "source_url: object belongs to app {}, not {}",
                request.source.app, request.app
            )));
        }
        let build = Build {
            id: BuildId::generate(),
            app: request.app,
            status: BuildStatus::Created,
            reason: String::new(),
            description: request.description,
            git_sha: request.git_sha,
            source_url: request.source.url(),
            manifest_path: request.manifest_path,
            manifest: String::new(),
            release: None,
            artifacts: Default::default(),
            started: chrono::Utc::now(),
            ended: None,
        };
        let running = Running::new();
        // Registered before the row exists, so no reader can find the row
        // without finding the live log.
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(build.id.clone(), running.clone());
        if let Err(e) = self
            .pipeline
            .store
            .insert_by(&build, &self.runner, &actor, claim)
            .await
        {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&build.id);
            return Err(e);
        }
        tracing::info!(build_id = %build.id, app = %build.app, "build created");
        if let Some(bus) = &self.log_bus {
            bus.publish(build.id.clone(), build.app.clone(), running.log.clone());
        }
        // In CreateBuild's span: the pipeline's CreateRelease call then
        // belongs to the trace of the request that started the build.
        tokio::spawn(
            self.clone()
                .drive(build.clone(), running, actor)
                .in_current_span(),
        );
        Ok(build)
    }

    /// Runs a build: waits for a slot, then the pipeline.
    #[tracing::instrument(skip_all, fields(build_id = %build.id, app = %build.app))]
    async fn drive(self: Arc<Self>, build: Build, running: Arc<Running>, actor: String) {
        let stop_on_shutdown = {
            let (shutdown, running) = (self.shutdown.clone(), running.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                running.request_stop(Stop::Shutdown);
            })
        };
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok(),
            () = running.cancel.cancelled() => None,
        };
        match permit {
            Some(_permit) => match self.pipeline.store.start(&build.id).await {
                Ok(true) => {
                    let timeout = {
                        let (after, running) = (self.build_timeout, running.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            running.request_stop(Stop::Timeout(after));
                        })
                    };
                    self.pipeline.run(&build, &running, &actor).await;
                    timeout.abort();
                }
                Ok(false) => running.log.close(),
                Err(e) => {
                    tracing::error!(build_id = %build.id, "failed to start the build: {e}");
                    self.end_unstarted(
                        &build,
                        &running,
                        "internal error: could not start the build",
                    )
                    .await;
                }
            },
            None => {
                let reason = match running.stop.get() {
                    Some(Stop::Shutdown) => "the build service shut down before the build started",
                    _ => "cancelled",
                };
                self.end_unstarted(&build, &running, reason).await;
            }
        }
        stop_on_shutdown.abort();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&build.id);
        running.finished.cancel();
    }

    /// Ends a build that never ran.
    async fn end_unstarted(&self, build: &Build, running: &Running, reason: &str) {
        let status = if reason == "cancelled" {
            BuildStatus::Cancelled
        } else {
            BuildStatus::Failed
        };
        running.log.line(if status == BuildStatus::Cancelled {
            "Build cancelled".to_owned()
        } else {
            format!("Build failed: {reason}")
        });
        if let Err(e) = self
            .pipeline
            .objects
            .put_log(&build.app, &build.id, running.log.contents())
            .await
        {
            tracing::warn!(build_id = %build.id, "failed to store the build log: {e}");
        }
        if let Err(e) = self
            .pipeline
            .store
            .finish_by(
                &build.id,
                &Outcome::stopped(status, reason, String::new()),
                running.canceller(),
            )
            .await
        {
            tracing::error!(build_id = %build.id, "failed to record the build's outcome: {e}");
        }
        running.log.close();
    }

    /// Reads a build.
    pub async fn get(&self, app: &AppName, id: &BuildId) -> Result<Build> {
        self.pipeline.store.get(app, id).await
    }

    /// Lists an app's builds, newest first.
    pub async fn list(&self, app: &AppName, limit: u32) -> Result<Vec<Build>> {
        self.pipeline.store.list(app, limit).await
    }

    /// Cancels an open build for `by`; a build that already ended is
    /// returned as is (so cancelling twice changes nothing). The build's
    /// cancelled end is audited as `build.cancel` by `by`, in the
    /// transaction that records it. A keyed call records the key once the
    /// cancel is done; the same key with another build is refused.
    pub async fn cancel(
        &self,
        app: &AppName,
        id: &BuildId,
        claim: Option<Claim>,
        by: slipway_rpc::actor::Actor,
    ) -> Result<Build> {
        let keys = self.pipeline.store.keys();
        // The recorded steps are only checked: a repeated cancel is the same
        // cancel, answered with the build as it is now.
        let claim = claim.as_ref();
        if let Some(claim) = claim {
            keys.recorded(claim).await?;
        }
        let build = self.cancel_now(app, id, by).await?;
        if let Some(claim) = claim {
            keys.record_done(claim, CANCEL_STEP, id.as_str()).await;
        }
        Ok(build)
    }

    async fn cancel_now(
        &self,
        app: &AppName,
        id: &BuildId,
        by: slipway_rpc::actor::Actor,
    ) -> Result<Build> {
        let build = self.get(app, id).await?;
        if build.status.is_terminal() {
            return Ok(build);
        }
        if let Some(running) = self.running(id) {
            running.cancel_by(by);
            if tokio::time::timeout(CANCEL_WAIT, running.finished.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(build_id = %id, "build still winding down after cancel");
            }
        } else {
            // Running on another replica: record it; that replica's heartbeat
            // loop sees it and stops its builder.
            let outcome =
                Outcome::stopped(BuildStatus::Cancelled, "cancelled", build.manifest.clone());
            self.pipeline
                .store
                .finish_by(id, &outcome, Some(&by))
                .await?;
        }
        self.get(app, id).await
    }

    /// The log of a build from byte `offset`: followed live while the build
    /// runs, replayed from the object store once it ended. The stream ends
    /// when the build does.
    pub async fn logs(
        self: &Arc<Self>,
        app: &AppName,
        id: &BuildId,
        offset: u64,
    ) -> Result<LogStream> {
        // Live first: a build that ends meanwhile is then found ended below.
        if let Some(running) = self.running(id) {
            self.get(app, id).await?; // the build must belong to `app`
            return Ok(Box::pin(running.log.follow(offset).map(Ok)));
        }
        let build = self.get(app, id).await?;
        if build.status.is_terminal() {
            return self.replay(&build, offset).await;
        }
        // Open on another replica: follow its log on the bus, or else wait
        // for its end and replay.
        let subscription = match &self.log_bus {
            Some(bus) => match bus.subscribe(&build.id).await {
                Ok(subscription) => Some(subscription),
                Err(e) => {
                    tracing::warn!(
                        build_id = %build.id,
                        "event bus unavailable: the log of a build running on another replica \
                         is served once the build ends: {e}"
                    );
                    None
                }
            },
            None => None,
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(
            self.clone()
                .follow_remote(build, offset, subscription, tx)
                .in_current_span(),
        );
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Streams the log of `build`, running on another replica, into `tx`
    /// from byte `offset`: from the bus while it has every byte in order,
    /// then from the stored log once the build ended.
    async fn follow_remote(
        self: Arc<Self>,
        build: Build,
        offset: u64,
        subscription: Option<slipway_events::Subscription>,
        tx: mpsc::Sender<Result<Bytes>>,
    ) {
        let mut stitch = Stitch::new(offset);
        if let Some(subscription) = subscription {
            let mut events = subscription.events;
            let mut poll = tokio::time::interval(REMOTE_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    item = events.next() => match item {
                        Some(Ok(event)) => {
                            let Some(entry) = BusEntry::from_event(&event) else {
                                continue;
                            };
                            match stitch.take(entry) {
                                Step::Send(bytes) => {
                                    if tx.send(Ok(bytes)).await.is_err() {
                                        return;
                                    }
                                }
                                Step::Skip => {}
                                Step::End => break,
                                Step::Gap => {
                                    tracing::warn!(
                                        build_id = %build.id,
                                        "part of a running build's log is missing from the event \
                                         bus; the rest is served once the build ends"
                                    );
                                    break;
                                }
                            }
                        }
                        // A lag shows as a gap in the offsets, if bytes were lost.
                        Some(Err(_)) => {}
                        None => break,
                    },
                    _ = poll.tick() => match self.get(&build.app, &build.id).await {
                        // Ended without an end marker (its replica died, or
                        // the bus was down): the rest is in the stored log.
                        Ok(now) if now.status.is_terminal() => break,
                        Ok(_) => {}
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                }
            }
        }
        // The stored log is complete once the build is marked ended.
        let ended = loop {
            match self.get(&build.app, &build.id).await {
                Ok(now) if now.status.is_terminal() => break now,
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(REMOTE_POLL) => {}
            }
        };
        match self.replay(&ended, stitch.next).await {
            Ok(mut chunks) => {
                while let Some(chunk) = chunks.next().await {
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    }

    async fn replay(&self, build: &Build, offset: u64) -> Result<LogStream> {
        let log = self
            .pipeline
            .objects
            .get_log(&build.app, &build.id)
            .await?
            .unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(log.len());
        let chunks: Vec<Result<Bytes>> = log
            .slice(start..)
            .chunks(REPLAY_CHUNK)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    /// Stores an uploaded object and returns its reference and size.
    pub async fn upload<S, E>(&self, object: ObjectRef, chunks: S) -> Result<(ObjectRef, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.pipeline.limits.max_compressed_bytes;
        match self
            .pipeline
            .objects
            .put_stream(&object, chunks, limit)
            .await
        {
            Ok(size) => Ok((object, size)),
            Err(PutError::Input(e)) => {
                Err(Error::InvalidArgument(format!("upload interrupted: {e}")))
            }
            Err(PutError::Store(e)) => Err(e.into()),
        }
    }

    /// Waits (at most `grace`) for every local build to record its outcome;
    /// used at shutdown, after the builds were told to stop.
    pub async fn wait_idle(&self, grace: Duration) {
        let finished: Vec<CancellationToken> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| r.finished.clone())
            .collect();
        let all = futures::future::join_all(finished.iter().map(|f| f.cancelled()));
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                "builds still winding down at shutdown; their replica will be declared silent"
            );
        }
    }

    /// Refreshes this replica's heartbeats, fails abandoned builds and stops
    /// local builds cancelled elsewhere, until `stop` fires.
    pub async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.heartbeat_once().await {
                tracing::warn!("failed to refresh build heartbeats: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One round of [`Self::heartbeat_loop`].
    pub async fn heartbeat_once(&self) -> Result<()> {
        let store = &self.pipeline.store;
        store.heartbeat(&self.runner).await?;
        let silent_since = chrono::Utc::now() - ABANDONED_AFTER;
        for id in store.fail_abandoned(silent_since, ABANDONED_REASON).await? {
            tracing::warn!(build_id = %id, "failed a build whose replica fell silent");
            if let (Some(bus), Ok(id)) = (&self.log_bus, BuildId::parse(&id)) {
                tokio::spawn(recover_log(
                    bus.clone(),
                    self.pipeline.clone(),
                    id,
                    ABANDONED_REASON,
                ));
            }
        }
        let local: Vec<(BuildId, Arc<Running>)> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        for (id, running) in local {
            if let Ok(Some(BuildStatus::Cancelled)) = store.status(&id).await {
                running.request_stop(Stop::Cancelled);
            }
        }
        Ok(())
    }
}
