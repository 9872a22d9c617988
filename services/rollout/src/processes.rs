//! gRPC face of one-off processes and exec sessions
//! (`slipway.rollout.v1.ProcessService`): requests checked and turned into
//! runtime calls, runtime answers into wire messages. The runtime does the
//! work (see [`crate::runtime::oneoff`]); a one-off the runtime no longer
//! knows is answered from how it ended, as recorded by whichever replica
//! saw it end (see [`crate::oneoff_ends`]).

use std::sync::Arc;
use std::time::Duration;

use slipway_api::exec::{ExecInput, ExecOutput, ExecPlane};
use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::process_service_server::ProcessService;
use slipway_api::timestamp;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::audit;
use crate::model::Spec;
use crate::oneoff_ends::Ledger;
use crate::runtime::oneoff::{DEFAULT_TIMEOUT, MAX_TIMEOUT};
use crate::runtime::{
    DynRuntime, OneOffInfo, RunRequest, RuntimeError, SessionKind, SessionOutput,
};
use crate::store::Store;

/// The process service over a runtime.
pub struct Processes {
    runtime: DynRuntime,
    /// Where runs and stops are audited (`crate::audit`).
    store: Store,
    /// How one-offs ended, for those the runtime no longer knows.
    ends: Ledger,
}

impl Processes {
    /// Serves one-off processes of `runtime`, auditing into `store` and
    /// reading the ends of one-offs from it.
    pub fn new(runtime: DynRuntime, store: Store) -> Self {
        let ends = Ledger::new(store.clone());
        Self {
            runtime,
            store,
            ends,
        }
    }

    /// How process `id` of `app` ended, if the runtime answered "not
    /// found" and an end is recorded; else the runtime's failure.
    async fn ended(&self, app: &str, id: &str, err: RuntimeError) -> Result<OneOffInfo, Status> {
        let RuntimeError::NotFound(_) = err else {
            return Err(status(err));
        };
        match self.ends.get(app, id).await {
            Ok(Some((info, _))) => Ok(info),
            Ok(None) => Err(status(err)),
            Err(e) => {
                tracing::error!(error = %e, "could not read how a one-off ended");
                Err(e.into())
            }
        }
    }
}

/// Writes the held audit record of an action (see `crate::audit`); an
/// action that cannot be audited is not made.
async fn audit_hold(
    store: &Store,
    action: &str,
    app: &str,
    target: &str,
    actor: &str,
) -> Result<audit::Held, Status> {
    audit::hold(store, action, app, target, actor)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "failed to write an audit record");
            Status::unavailable("the audit record could not be written: try again shortly")
        })
}

/// One place where runtime failures become gRPC codes: what the caller got
/// wrong is said as is, the runtime's own trouble is logged and kept out of
/// the answer.
fn status(err: RuntimeError) -> Status {
    match err {
        RuntimeError::NotFound(msg) => Status::not_found(msg),
        RuntimeError::Refused(msg) => Status::failed_precondition(msg),
        RuntimeError::Store(_) | RuntimeError::Backend(_) => {
            tracing::error!(error = %err, "process request failed");
            Status::internal("internal error")
        }
    }
}

fn required(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

/// The wire form of a process.
pub fn process(info: OneOffInfo) -> pb::OneOffProcess {
    pb::OneOffProcess {
        id: info.id,
        app: info.app,
        service: info.service,
        release: info.release,
        command: info.command,
        status: info.status.as_str().to_owned(),
        started: Some(timestamp(info.started)),
        exit_code: info.exit_code,
        deadline: info.deadline.map(timestamp),
    }
}

/// The run request a wire request stands for, or what is wrong with it.
fn run_request(request: pb::RunProcessRequest) -> Result<(Spec, RunRequest), Status> {
    let spec = request
        .release
        .ok_or_else(|| Status::invalid_argument("release is required"))?;
    required(&request.service, "service")?;
    let timeout = match request.timeout_seconds {
        0 => DEFAULT_TIMEOUT,
        secs => Duration::from_secs(u64::from(secs)),
    };
    if timeout > MAX_TIMEOUT {
        return Err(Status::invalid_argument(format!(
            "timeout {}s out of range: 1 to {}s",
            timeout.as_secs(),
            MAX_TIMEOUT.as_secs()
        )));
    }
    let spec = Spec::from_record(crate::grpc::spec_record(spec))
        .map_err(|e| Status::failed_precondition(format!("release cannot run: {e}")))?;
    Ok((
        spec,
        RunRequest {
            service: request.service,
            command: Some(request.command).filter(|c| !c.trim().is_empty()),
            timeout,
            attach: request.attach,
        },
    ))
}

#[tonic::async_trait]
impl ProcessService for Processes {
    #[tracing::instrument(skip_all, fields(app, service))]
    async fn run_process(
        &self,
        request: Request<pb::RunProcessRequest>,
    ) -> Result<Response<pb::RunProcessResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let (spec, run) = run_request(request.into_inner())?;
        let span = tracing::Span::current();
        span.record("app", tracing::field::display(&spec.app));
        span.record("service", run.service.as_str());
        let held = audit_hold(
            &self.store,
            "process.run",
            spec.app.as_str(),
            &run.service,
            &actor,
        )
        .await?;
        let info = match self.runtime.run(Arc::new(spec), run).await {
            Ok(info) => info,
            Err(e) => {
                held.refused().await;
                return Err(status(e));
            }
        };
        held.done(&format!("process {}", info.id)).await;
        Ok(Response::new(pb::RunProcessResponse {
            process: Some(process(info)),
        }))
    }

    async fn get_process(
        &self,
        request: Request<pb::GetProcessRequest>,
    ) -> Result<Response<pb::GetProcessResponse>, Status> {
        let request = request.into_inner();
        required(&request.app, "app")?;
        required(&request.id, "id")?;
        let info = match self.runtime.process(&request.app, &request.id).await {
            Ok(info) => info,
            Err(e) => self.ended(&request.app, &request.id, e).await?,
        };
        Ok(Response::new(pb::GetProcessResponse {
            process: Some(process(info)),
        }))
    }

    async fn stop_process(
        &self,
        request: Request<pb::StopProcessRequest>,
    ) -> Result<Response<pb::StopProcessResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let request = request.into_inner();
        required(&request.app, "app")?;
        required(&request.id, "id")?;
        let held = audit_hold(
            &self.store,
            "process.stop",
            &request.app,
            &request.id,
            &actor,
        )
        .await?;
        if let Err(e) = self.runtime.stop(&request.app, &request.id).await {
            // One that has ended already needs no stop.
            if let Err(e) = self.ended(&request.app, &request.id, e).await {
                held.refused().await;
                return Err(e);
            }
        }
        held.done("").await;
        Ok(Response::new(pb::StopProcessResponse {}))
    }

    type ExecProcessStream = ExecOutput;

    async fn exec_process(
        &self,
        request: Request<Streaming<pb::ExecProcessRequest>>,
    ) -> Result<Response<ExecOutput>, Status> {
        self.exec(Box::pin(request.into_inner()))
            .await
            .map(Response::new)
    }
}

/// Exec sessions for a gateway in this process: the same as
/// `exec_process`, without encoding a message (`slipway_api::exec`).
#[tonic::async_trait]
impl ExecPlane for Processes {
    async fn exec(&self, mut input: ExecInput) -> Result<ExecOutput, Status> {
        let start = match input.next().await.transpose()? {
            Some(pb::ExecProcessRequest {
                input: Some(pb::exec_process_request::Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the start of the session",
                ));
            }
        };
        required(&start.app, "app")?;
        required(&start.process, "process")?;
        let kind = if start.attach {
            SessionKind::Attach
        } else {
            required(start.command.trim(), "command")?;
            SessionKind::Exec(start.command)
        };
        let session = match self.runtime.session(&start.app, &start.process, kind).await {
            Ok(session) => session,
            Err(e) => {
                self.ended(&start.app, &start.process, e).await?;
                return Err(Status::failed_precondition(format!(
                    "process {} has ended",
                    start.process
                )));
            }
        };
        let stdin = session.stdin;
        tokio::spawn(async move {
            use pb::exec_process_request::Input;
            while let Some(Ok(message)) = input.next().await {
                match message.input {
                    // (A clone of `Bytes` is a reference, not a copy.)
                    Some(Input::Stdin(bytes)) if stdin.send(bytes.clone()).await.is_err() => {
                        return;
                    }
                    // Dropping the sender closes the command's stdin.
                    Some(Input::StdinEnd(true)) => return,
                    _ => {}
                }
            }
        });
        let output = ReceiverStream::new(session.output).map(|item| {
            use pb::exec_process_response::Output;
            Ok(pb::ExecProcessResponse {
                output: Some(match item {
                    SessionOutput::Data(bytes) => Output::Data(bytes),
                    SessionOutput::Exit(code) => Output::ExitCode(code),
                }),
            })
        });
        Ok(Box::pin(output))
    }
}
