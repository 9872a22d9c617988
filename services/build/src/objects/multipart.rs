//! Multipart uploads to an S3-compatible store: parts of [`PART_SIZE`],
//! [`PARTS_IN_FLIGHT`] sent at once on tasks of their own, and an upload
//! that fails or is dropped half-way aborted on a task of its own, so no
//! parts are left behind even when the caller goes away.

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, PutPayload};

use super::Error;

/// Bytes in every part of a multipart upload but the last (S3 takes 5 MiB to
/// 5 GiB, and at most 10,000 parts: objects up to about 80 GB). An upload
/// holds about `PART_SIZE * (PARTS_IN_FLIGHT + 1)` bytes in memory.
pub(super) const PART_SIZE: usize = 8 << 20;

/// Parts of one multipart upload sent at once.
const PARTS_IN_FLIGHT: usize = 4;

/// A multipart upload under way, its parts sent on tasks of their own.
/// Dropped before it completed or was aborted, it stops its parts and
/// aborts itself on a task of its own.
pub(super) struct Upload {
    /// `None` once completed or aborted.
    upload: Option<Box<dyn MultipartUpload>>,
    parts: tokio::task::JoinSet<object_store::Result<()>>,
}

impl Upload {
    /// Begins the upload on a task of its own: if the caller goes away while
    /// the store is still answering, that task aborts the upload the store
    /// just began instead of leaving it open.
    pub(super) async fn start(
        store: Arc<dyn ObjectStore>,
        path: &ObjectPath,
    ) -> Result<Self, Error> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let path = path.clone();
        tokio::spawn(async move {
            let begun = store.put_multipart(&path).await;
            if let Err(Ok(mut upload)) = answer.send(begun)
                && let Err(e) = upload.abort().await
            {
                tracing::warn!("failed to abort an abandoned upload: {e}");
            }
        });
        let upload = answered.await.map_err(|_| Error::Io {
            action: "begin the upload".into(),
            source: std::io::Error::other("the upload task stopped"),
        })??;
        Ok(Self {
            upload: Some(upload),
            parts: tokio::task::JoinSet::new(),
        })
    }

    /// Sends the next part, once fewer than [`PARTS_IN_FLIGHT`] are.
    pub(super) async fn put(&mut self, part: PutPayload) -> Result<(), Error> {
        while self.parts.len() >= PARTS_IN_FLIGHT {
            self.next_sent().await?;
        }
        let Some(upload) = &mut self.upload else {
            return Err(ended());
        };
        self.parts.spawn(upload.put_part(part));
        Ok(())
    }

    /// Waits for every part, then completes the object.
    pub(super) async fn complete(&mut self) -> Result<(), Error> {
        while !self.parts.is_empty() {
            self.next_sent().await?;
        }
        let Some(upload) = &mut self.upload else {
            return Err(ended());
        };
        upload.complete().await?;
        self.upload = None;
        Ok(())
    }

    /// Stops the parts and aborts the upload (a failure is only logged:
    /// the caller is already failing). The abort runs on a task of its own,
    /// so it finishes even if the caller is dropped while waiting (a
    /// client's connection closing drops its request's handler).
    pub(super) async fn abort(&mut self) {
        self.parts.shutdown().await;
        if let Some(upload) = self.upload.take()
            && let Some(aborting) = abort_detached(upload, "a partial upload")
        {
            let _ = aborting.await;
        }
    }

    /// Waits for one part to be sent; its failure fails the upload.
    async fn next_sent(&mut self) -> Result<(), Error> {
        match self.parts.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.into()),
            Some(Err(e)) => Err(Error::Io {
                action: "upload a part".into(),
                source: std::io::Error::other(e),
            }),
        }
    }
}

/// An [`Upload`] used after it completed or was aborted (a bug).
fn ended() -> Error {
    Error::Io {
        action: "upload a part".into(),
        source: std::io::Error::other("the multipart upload already ended"),
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.parts.abort_all();
        if let Some(upload) = self.upload.take() {
            abort_detached(upload, "an abandoned upload");
        }
    }
}

/// Aborts `upload` on a task of its own; `None` (and a warning) when there
/// is no runtime to run it on.
fn abort_detached(
    mut upload: Box<dyn MultipartUpload>,
    what: &'static str,
) -> Option<tokio::task::JoinHandle<()>> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("left {what} open: no runtime to abort it on");
        return None;
    };
    Some(runtime.spawn(async move {
        if let Err(e) = upload.abort().await {
            tracing::warn!("failed to abort {what}: {e}");
        }
    }))
}
