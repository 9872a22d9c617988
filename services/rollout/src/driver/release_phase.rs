//! The release phase: a release whose manifest has a `release:` block runs
//! that command once per promotion, before any of its processes start (in
//! the rollout's `Pending` phase, so nothing running has been touched).
//! Its output goes to the promotion's events; exit 0 lets the rollout go
//! on, anything else (a non-zero status, the timeout) fails it with the
//! reason and the last output lines, and the previous release keeps
//! serving. A cancel stops the command and ends the rollout reverted.
//!
//! Exactly once: the start is recorded (table `release_commands`) before
//! the command runs and its end after. A rollout taken over by another
//! replica (or by this one after a crash) that finds a start without an end
//! does not run the command again: its fate is unknown, and the promotion
//! fails saying so. Automatic rollback never comes here (it applies the
//! fallback from `Reverting`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use slipway_events::NewEvent;

use crate::runtime::EventSink as _;
use slipway_storage::now_micros;
use sqlx::Row as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Drivers;
use crate::error::Result;
use crate::runtime::{RunRequest, SessionKind, SessionOutput, Spec};
use crate::store::{retry, time};

/// Output lines kept for the failure reason.
const LAST_LINES: usize = 5;

/// How the release phase ended.
pub(super) enum Outcome {
    /// No command, or it exited 0 (now or in an earlier attempt).
    Passed,
    /// The rollout fails with this reason.
    Failed(String),
    /// It was cancelled while the command ran; the reason says so.
    Cancelled(String),
    /// The lease was lost; another replica decides.
    Lost,
}

/// What the record says about an earlier attempt.
struct Record {
    started_at: i64,
    /// The one-off that runs it, once started (empty before).
    process_id: String,
    ended_at: Option<i64>,
    exit_code: Option<i64>,
}

impl Drivers {
    /// Runs the target's release command for rollout `id`, at most once.
    pub(super) async fn release_phase(
        &self,
        id: &str,
        target: &Arc<Spec>,
        lost: &CancellationToken,
        cancel: &AtomicBool,
        wake: &Notify,
    ) -> Result<Outcome> {
        let Some(release) = target.manifest.release.clone() else {
            return Ok(Outcome::Passed);
        };
        if cancel.load(Ordering::Acquire) {
            return Ok(Outcome::Cancelled(
                "cancelled before the release command ran".to_owned(),
            ));
        }
        if let Some(record) = self.record(id).await? {
            self.stop_orphan(&target.app.to_string(), id, &record).await;
            return Ok(earlier(&record));
        }
        if !self.record_start(id).await? {
            // Another replica recorded it first.
            let record = self.record(id).await?;
            return Ok(record.as_ref().map_or(Outcome::Passed, earlier));
        }
        let app = target.app.to_string();
        self.event(
            &app,
            id,
            "release",
            format!(
                "Running the release command of {} (service {}, timeout {}s)",
                target.release, release.service, release.timeout_secs
            ),
        );
        let timeout = Duration::from_secs(u64::from(release.timeout_secs));
        let started = match self
            .runtime
            .run(
                target.clone(),
                RunRequest {
                    service: release.service.clone(),
                    command: Some(release.command.clone()),
                    timeout,
                    attach: true,
                },
            )
            .await
        {
            Ok(started) => started,
            Err(e) => {
                self.record_end(id, "", -1).await?;
                return Ok(Outcome::Failed(format!(
                    "release command could not start: {e}"
                )));
            }
        };
        let pid = started.id.clone();
        self.record_process(id, &pid).await?;
        let session = match self.runtime.session(&app, &pid, SessionKind::Attach).await {
            Ok(session) => session,
            Err(e) => {
                let _ = self.runtime.stop(&app, &pid).await;
                self.record_end(id, &pid, -1).await?;
                return Ok(Outcome::Failed(format!(
                    "release command could not be followed: {e}"
                )));
            }
        };
        // It gets no stdin.
        drop(session.stdin);
        let mut output = session.output;
        let source = format!("service/{}/{pid}", release.service);
        let mut last: VecDeque<String> = VecDeque::new();
        let mut partial = String::new();
        let mut cancelled = false;
        let begun = tokio::time::Instant::now();
        let code = loop {
            tokio::select! {
                item = output.recv() => match item {
                    Some(SessionOutput::Data(bytes)) => {
                        partial.push_str(&String::from_utf8_lossy(&bytes));
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            let line = line.trim_end_matches(['\n', '\r']).to_owned();
                            self.output_line(&app, id, &source, line, &mut last);
                        }
                    }
                    Some(SessionOutput::Exit(code)) => break code,
                    None => break -1,
                },
                () = wake.notified(), if !cancelled => {
                    if cancel.load(Ordering::Acquire) {
                        cancelled = true;
                        self.event(&app, id, "release", "Cancelled: stopping the release command".to_owned());
                        let _ = self.runtime.stop(&app, &pid).await;
                    }
                }
                () = lost.cancelled() => {
                    // Whoever takes over finds no end recorded and fails
                    // the promotion; the command must not outlive that.
                    let _ = self.runtime.stop(&app, &pid).await;
                    return Ok(Outcome::Lost);
                }
            }
        };
        if !partial.is_empty() {
            let line = std::mem::take(&mut partial);
            self.output_line(&app, id, &source, line, &mut last);
        }
        self.record_end(id, &pid, code).await?;
        let last = if last.is_empty() {
            "(none)".to_owned()
        } else {
            Vec::from(last).join(" | ")
        };
        let cancelled = cancelled || cancel.load(Ordering::Acquire);
        Ok(if code == 0 && !cancelled {
            self.event(&app, id, "release", "Release command succeeded".to_owned());
            Outcome::Passed
        } else if cancelled {
            Outcome::Cancelled("cancelled during the release command".to_owned())
        } else if begun.elapsed() >= timeout {
            Outcome::Failed(format!(
                "release command timed out after {}s (last output: {last})",
                timeout.as_secs()
            ))
        } else {
            Outcome::Failed(format!(
                "release command exited with status {code} (last output: {last})"
            ))
        })
    }

    fn output_line(
        &self,
        app: &str,
        id: &str,
        source: &str,
        line: String,
        last: &mut VecDeque<String>,
    ) {
        if !line.trim().is_empty() {
            if last.len() == LAST_LINES {
                last.pop_front();
            }
            last.push_back(line.clone());
        }
        self.recorder
            .emit(NewEvent::now(app, source.to_owned(), line).in_rollout(id));
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        let (db, _) = self.store.parts();
        let row = retry(|| async {
            sqlx::query(
                "SELECT started_at, process_id, ended_at, exit_code FROM release_commands \
                 WHERE rollout_id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *db.acquire().await?)
            .await
        })
        .await?;
        Ok(match row {
            Some(row) => Some(Record {
                started_at: row.try_get("started_at")?,
                process_id: row.try_get("process_id")?,
                ended_at: row.try_get("ended_at")?,
                exit_code: row.try_get("exit_code")?,
            }),
            None => None,
        })
    }

    /// Records the start; `false` if a start was recorded already.
    async fn record_start(&self, id: &str) -> Result<bool> {
        let (db, _) = self.store.parts();
        let done = retry(|| async {
            sqlx::query(
                "INSERT INTO release_commands (rollout_id, started_at) VALUES ($1, $2) \
                 ON CONFLICT (rollout_id) DO NOTHING",
            )
            .bind(id)
            .bind(now_micros())
            .execute(&mut *db.acquire().await?)
            .await
        })
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records which one-off runs the command, so that whoever finds its
    /// end unknown (after a crash) can stop what is left of it.
    async fn record_process(&self, id: &str, process: &str) -> Result<()> {
        let (db, _) = self.store.parts();
        retry(|| async {
            sqlx::query("UPDATE release_commands SET process_id = $1 WHERE rollout_id = $2")
                .bind(process)
                .bind(id)
                .execute(&mut *db.acquire().await?)
                .await
        })
        .await?;
        Ok(())
    }

    /// A command whose end is unknown (its rollout service stopped while it
    /// ran) is stopped if anything of it is left: on Kubernetes its pod
    /// would otherwise hold until its timeout. It is never run again.
    async fn stop_orphan(&self, app: &str, id: &str, record: &Record) {
        let pid = record.process_id.as_str();
        if pid.is_empty() || record.ended_at.is_some() {
            return;
        }
        match self.runtime.stop(app, pid).await {
            Ok(()) => self.event(
                app,
                id,
                "release",
                format!("Stopped what was left of the release command ({pid})"),
            ),
            Err(e) => {
                tracing::debug!(rollout = %id, process = %pid, error = %e, "release command: nothing left to stop")
            }
        }
    }

    async fn record_end(&self, id: &str, process: &str, code: i32) -> Result<()> {
        let (db, _) = self.store.parts();
        retry(|| async {
            sqlx::query(
                "UPDATE release_commands SET process_id = $1, ended_at = $2, exit_code = $3 \
                 WHERE rollout_id = $4",
            )
            .bind(process)
            .bind(now_micros())
            .bind(i64::from(code))
            .bind(id)
            .execute(&mut *db.acquire().await?)
            .await
        })
        .await?;
        Ok(())
    }
}

/// What an earlier attempt of this rollout's release command decides.
fn earlier(record: &Record) -> Outcome {
    match (record.ended_at, record.exit_code) {
        (Some(_), Some(0)) => Outcome::Passed,
        (Some(_), Some(code)) => Outcome::Failed(format!(
            "release command exited with status {code} in an earlier attempt"
        )),
        _ => Outcome::Failed(format!(
            "the release command started at {} but how it ended is unknown (the rollout \
             service stopped while it ran); it is not run twice: check what it did, then \
             promote again",
            time(record.started_at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
    }
}
