//! Exec sessions handed from a gateway to a rollout service in the same
//! process as typed messages.
//!
//! In the embedded rack the gateway reaches the rollout service in process
//! (`slipway_rpc::in_process`), but a call still goes through tonic's codec:
//! every stdin and output chunk of a session is encoded into a fresh buffer
//! on one side and copied into another on the other. For a bulk copy
//! (`run web cat < dump`) those copies and the page faults of their buffers
//! were a quarter of the rack's work. A rollout service offers an
//! [`ExecPlane`] beside its server (`slipway_rpc::in_process::offer`); a
//! gateway that reaches it in process opens sessions through it, with the
//! same messages and the same answers as `ProcessService.ExecProcess`.

use std::pin::Pin;

use tonic::Status;
use tonic::codegen::tokio_stream::Stream;

use crate::rollout::v1::{ExecProcessRequest, ExecProcessResponse};

/// What a session sends: its start, then stdin and its end.
pub type ExecInput = Pin<Box<dyn Stream<Item = Result<ExecProcessRequest, Status>> + Send>>;

/// What a session answers: output, then the exit status.
pub type ExecOutput = Pin<Box<dyn Stream<Item = Result<ExecProcessResponse, Status>> + Send>>;

/// Opens exec sessions, as `ProcessService.ExecProcess` does.
#[tonic::async_trait]
pub trait ExecPlane: Send + Sync + 'static {
    /// Opens the session `input` starts.
    async fn exec(&self, input: ExecInput) -> Result<ExecOutput, Status>;
}
