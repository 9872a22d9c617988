//! The object store behind the build service: uploaded sources and build
//! logs, through the `object_store` crate, so the same code runs on a local
//! directory (the embedded default) and on any S3-compatible store.
//!
//! Layout inside the store:
//! - `apps/<app>/objects/<key>`: objects uploaded for an app (the CLI's
//!   `tmp/<hex>.tgz` sources), addressed as `object://<app>/<key>`;
//! - `apps/<app>/builds/<id>/log`: the full log of a finished build.
//!
//! Keys come from users, so they are checked here before anything touches
//! the store, by the one rule the gateway also applies
//! ([`slipway_domain::validate_object_key`]): no `..`, empty or absolute
//! segments, no control characters.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod multipart;

use crate::direct::DirectFile;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use multipart::{PART_SIZE, Upload};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutPayload, PutPayloadMut};
use slipway_domain::{AppName, BuildId, ObjectKeyError, validate_object_key};
use tokio::io::AsyncWriteExt as _;

/// Failures of the object store and of the names given to it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL in the configuration is not usable.
    #[error("invalid object store URL {0:?}: use file:///abs/dir or s3://bucket[/prefix]")]
    InvalidStoreUrl(String),
    /// A setting in an `s3://` URL's query is unknown or unusable.
    #[error("invalid object store URL {url:?}: {why}")]
    InvalidStoreOption {
        /// The URL without its query.
        url: String,
        /// What is wrong with which setting.
        why: String,
    },
    /// An object URL given by a caller is not `object://<app>/<key>`.
    #[error("invalid object URL {0:?}: expected object://<app>/<key>")]
    InvalidUrl(String),
    /// An object key is malformed (the domain's one rule refused it).
    #[error(transparent)]
    InvalidKey(#[from] ObjectKeyError),
    /// The object does not exist.
    #[error("object {0} not found")]
    NotFound(String),
    /// The object is larger than allowed.
    #[error("object is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A local file failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Where objects live, parsed from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3-compatible bucket, with an optional key prefix.
    S3 {
        /// The bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
        /// Settings from the URL's query, over the `AWS_*` variables.
        options: S3Options,
    },
}

/// Settings of an S3 store given in its URL's query, as in
/// `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1`:
/// any key [`AmazonS3ConfigKey`] accepts (`endpoint`, `region`,
/// `access_key_id`, `secret_access_key`, `allow_http`, with or without the
/// `aws_` of the variables), values percent-encoded. They win over the
/// `AWS_*` variables, which stay the default. `Debug` shows the keys only:
/// the values may be credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options(Vec<(AmazonS3ConfigKey, String)>);

impl S3Options {
    /// Parses the query of `url` (shown, without its query, in errors).
    fn parse(url: &url::Url, bucket: &str, shown: &str) -> Result<Self, Error> {
        let invalid = |why: String| Error::InvalidStoreOption {
            url: shown.to_owned(),
            why,
        };
        let mut options = Vec::new();
        for (key, value) in url.query_pairs() {
            let config_key: AmazonS3ConfigKey = key
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| invalid(format!("unknown setting {key:?}")))?;
            if config_key == AmazonS3ConfigKey::Bucket {
                return Err(invalid(
                    "the bucket is the URL's host, not a setting".into(),
                ));
            }
            options.push((config_key, value.into_owned()));
        }
        let options = Self(options);
        // Values are checked when the store is built, which does no I/O:
        // build one now, so a bad value is a config error, not a failed start.
        options
            .builder(bucket)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(options)
    }

    /// The `AWS_*` variables, then these settings, for `bucket`.
    fn builder(&self, bucket: &str) -> AmazonS3Builder {
        self.0
            .iter()
            .fold(AmazonS3Builder::from_env(), |b, (key, value)| {
                b.with_config(*key, value)
            })
            .with_bucket_name(bucket)
    }
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(key, _)| key.as_ref()))
            .finish()
    }
}

impl ObjectLocation {
    /// Parses `file:///abs/dir`, a bare absolute path, or
    /// `s3://bucket[/prefix][?setting=value&…]` (see [`S3Options`]).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidStoreUrl(redact(text));
        if text.starts_with('/') {
            return Ok(Self::Local(PathBuf::from(text)));
        }
        let url = url::Url::parse(text).map_err(|_| invalid())?;
        match url.scheme() {
            "file" => Ok(Self::Local(url.to_file_path().map_err(|()| invalid())?)),
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(invalid)?;
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: url.path().trim_matches('/').to_owned(),
                    options: S3Options::parse(&url, bucket, &redact(text))?,
                })
            }
            _ => Err(invalid()),
        }
    }
}

/// Shows a store URL without its query (which may carry credentials).
fn redact(text: &str) -> String {
    text.split('?').next().unwrap_or_default().to_owned()
}

/// A caller's object: an app and a key inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The app the object belongs to.
    pub app: AppName,
    /// The validated key.
    pub key: String,
}

impl ObjectRef {
    /// Validates `key` for `app`.
    pub fn new(app: AppName, key: &str) -> Result<Self, Error> {
        validate_object_key(key)?;
        Ok(Self {
            app,
            key: key.to_owned(),
        })
    }

    /// Parses `object://<app>/<key>`.
    pub fn parse_url(url: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidUrl(url.chars().take(200).collect());
        let rest = url.strip_prefix("object://").ok_or_else(invalid)?;
        let (app, key) = rest.split_once('/').ok_or_else(invalid)?;
        let app = AppName::parse(app).map_err(|_| invalid())?;
        Self::new(app, key)
    }

    /// The `object://<app>/<key>` URL callers pass around.
    pub fn url(&self) -> String {
        format!("object://{}/{}", self.app, self.key)
    }

    fn path(&self) -> ObjectPath {
        ObjectPath::from(format!("apps/{}/objects/{}", self.app, self.key))
    }
}

/// A fresh key for an upload that did not name one: `tmp/<32 hex>.tgz`.
pub fn fresh_key() -> String {
    format!("tmp/{:032x}.tgz", rand::random::<u128>())
}

/// The build service's view of the object store.
#[derive(Clone, Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a local directory: uploads then write the
    /// file themselves (see [`Objects::put_stream`]).
    local: Option<Arc<LocalFileSystem>>,
}

/// Chunks queued between an upload's network reads and its file writes
/// (1 MiB each as the gateway sends them): enough to keep both busy, and a
/// bound on the memory one upload holds.
const WRITE_QUEUE: usize = 8;

/// What an upload's writer thread is told.
enum Write {
    /// Append these bytes.
    Chunk(Bytes),
    /// Every byte arrived: publish the object.
    Finish,
}

impl Objects {
    /// Opens the store at `location`, creating a local directory if needed.
    pub fn open(location: &ObjectLocation) -> Result<Self, Error> {
        Ok(match location {
            ObjectLocation::Local(dir) => {
                slipway_storage::files::create_private_dir_all(dir).map_err(|source| {
                    Error::Io {
                        action: format!("create object directory {}", dir.display()),
                        source,
                    }
                })?;
                let local = Arc::new(LocalFileSystem::new_with_prefix(dir)?);
                Self {
                    store: local.clone(),
                    local: Some(local),
                }
            }
            ObjectLocation::S3 {
                bucket,
                prefix,
                options,
            } => {
                let s3 = options.builder(bucket).build()?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                };
                Self { store, local: None }
            }
        })
    }

    /// Stores `chunks` as `object`, refusing more than `limit` bytes (the
    /// partial upload is aborted, so nothing is left behind). Returns the size.
    ///
    /// On a local directory the bytes go straight to a staging file written
    /// on a blocking thread while the next chunks arrive (around the page
    /// cache where the filesystem allows: see `direct.rs`), then renamed into
    /// place, so readers only ever see whole objects. (`object_store`'s
    /// buffered multipart writer copied every part again and wrote it only
    /// after buffering; it made uploads five times slower than the network.)
    /// Like `object_store`'s own local `put`, the file is not fsynced: an
    /// upload is consumed by the build that follows it, and one lost in a
    /// crash makes that build fail with "not found", never run on partial
    /// bytes. Elsewhere (S3) the object is a buffered multipart upload.
    pub async fn put_stream<S, E>(
        &self,
        object: &ObjectRef,
        chunks: S,
        limit: u64,
    ) -> Result<u64, PutError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        match &self.local {
            Some(local) => {
                let dest = local
                    .path_to_filesystem(&object.path())
                    .map_err(|e| PutError::Store(e.into()))?;
                put_file(dest, chunks, limit).await
            }
            None => self.put_multipart(object, chunks, limit).await,
        }
    }

    /// [`Objects::put_stream`] on a store other than a local directory: one
    /// PUT when the object fits in one part, else a multipart upload whose
    /// parts go up while the next ones arrive. Whatever ends it early (the
    /// limit, the input or the store failing, or this future being dropped
    /// because the client went away or the call timed out) aborts the
    /// multipart upload, so no parts stay stored and billed.
    /// (`object_store`'s `BufWriter`, used before, panicked when aborted
    /// after a failed finish, and left the upload open when dropped.)
    async fn put_multipart<S, E>(
        &self,
        object: &ObjectRef,
        mut chunks: S,
        limit: u64,
    ) -> Result<u64, PutError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let path = object.path();
        let mut upload: Option<Upload> = None;
        let mut size = 0u64;
        let store = |e: Error| PutError::Store(e);
        let outcome = async {
            let mut part = PutPayloadMut::new();
            while let Some(chunk) = chunks.next().await {
                let mut chunk = chunk.map_err(PutError::Input)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(PutError::Store(Error::TooLarge { limit }));
                }
                // Parts of exactly PART_SIZE: some S3-compatible stores
                // want every part but the last the same size.
                while !chunk.is_empty() {
                    let room = PART_SIZE - part.content_length();
                    part.push(chunk.split_to(room.min(chunk.len())));
                    if part.content_length() == PART_SIZE {
                        let open = match &mut upload {
                            Some(open) => open,
                            None => upload.insert(
                                Upload::start(self.store.clone(), &path)
                                    .await
                                    .map_err(store)?,
                            ),
                        };
                        open.put(std::mem::take(&mut part).freeze())
                            .await
                            .map_err(store)?;
                    }
                }
            }
            match &mut upload {
                None => {
                    self.store
                        .put(&path, part.freeze())
                        .await
                        .map_err(|e| store(e.into()))?;
                }
                Some(open) => {
                    if part.content_length() > 0 {
                        open.put(part.freeze()).await.map_err(store)?;
                    }
                    open.complete().await.map_err(store)?;
                }
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => Ok(size),
            Err(e) => {
                if let Some(mut open) = upload {
                    open.abort().await;
                }
                Err(e)
            }
        }
    }

    /// A local file holding `object`'s bytes, open for reading, refusing
    /// objects larger than `limit` bytes; returns it and its size. On a
    /// local directory that is the object's own file, read in place (an upload replacing it
    /// renames a new file over it, so a reader that has it open keeps the
    /// whole old object); elsewhere the object is copied to `spare`.
    pub async fn fetch(
        &self,
        object: &ObjectRef,
        spare: &Path,
        limit: u64,
    ) -> Result<(std::fs::File, u64), Error> {
        if let Some(local) = &self.local {
            let path = local.path_to_filesystem(&object.path())?;
            let file = std::fs::File::open(&path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(object.url()),
                _ => Error::Io {
                    action: format!("open {}", path.display()),
                    source,
                },
            })?;
            let size = file
                .metadata()
                .map_err(|source| Error::Io {
                    action: format!("read the size of {}", path.display()),
                    source,
                })?
                .len();
            if size > limit {
                return Err(Error::TooLarge { limit });
            }
            return Ok((file, size));
        }
        let size = self.download(object, spare, limit).await?;
        let file = std::fs::File::open(spare).map_err(|source| Error::Io {
            action: format!("open {}", spare.display()),
            source,
        })?;
        Ok((file, size))
    }

    /// Copies `object` into the local file `dest`, refusing objects larger
    /// than `limit` bytes. Returns the size.
    async fn download(&self, object: &ObjectRef, dest: &Path, limit: u64) -> Result<u64, Error> {
        let result = self.store.get(&object.path()).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::NotFound(object.url()),
            e => e.into(),
        })?;
        if result.meta.size > limit {
            return Err(Error::TooLarge { limit });
        }
        let io = |action: &str| {
            let action = format!("{action} {}", dest.display());
            move |source| Error::Io { action, source }
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io("create"))?;
        let mut stream = result.into_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Error::TooLarge { limit });
            }
            file.write_all(&chunk).await.map_err(io("write"))?;
        }
        file.flush().await.map_err(io("flush"))?;
        Ok(size)
    }

    /// Deletes uploaded sources (`apps/<app>/objects/…`) last written
    /// before `cutoff`, and on a local directory the staging files of
    /// uploads cut off by a crash (`<key>#<digits>`) also older than it.
    /// Build logs are kept. Objects that vanish meanwhile (another replica
    /// sweeping the same store) are not errors.
    pub async fn sweep_sources(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<Swept, Error> {
        let mut swept = Swept::default();
        let mut listing = self.store.list(Some(&ObjectPath::from("apps")));
        let mut old = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let parts: Vec<_> = meta.location.parts().collect();
            let is_source =
                parts.len() > 3 && parts[0].as_ref() == "apps" && parts[2].as_ref() == "objects";
            if is_source && meta.last_modified < cutoff {
                old.push(meta);
            }
        }
        drop(listing);
        for meta in old {
            match self.store.delete(&meta.location).await {
                Ok(()) => {
                    swept.sources += 1;
                    swept.bytes += meta.size;
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(local) = &self.local {
            let apps = local.path_to_filesystem(&ObjectPath::from("apps"))?;
            let cutoff = std::time::SystemTime::from(cutoff);
            swept.staging =
                tokio::task::spawn_blocking(move || remove_stale_staging(&apps, cutoff))
                    .await
                    .map_err(|e| Error::Io {
                        action: "remove stale staging files".into(),
                        source: std::io::Error::other(e),
                    })??;
        }
        Ok(swept)
    }

    /// Stores the full log of a finished build.
    pub async fn put_log(&self, app: &AppName, build: &BuildId, log: Bytes) -> Result<(), Error> {
        // Locally through our own writer, so the log is owner-only (0600).
        if let Some(local) = &self.local {
            let dest = local.path_to_filesystem(&log_path(app, build))?;
            let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(log)]);
            return match put_file(dest, chunks, u64::MAX).await {
                Ok(_) => Ok(()),
                Err(PutError::Store(e)) => Err(e),
                Err(PutError::Input(never)) => match never {},
            };
        }
        self.store
            .put(&log_path(app, build), PutPayload::from_bytes(log))
            .await?;
        Ok(())
    }

    /// Reads the full log of a finished build; `None` if none was stored
    /// (e.g. the build was interrupted by a crash).
    pub async fn get_log(&self, app: &AppName, build: &BuildId) -> Result<Option<Bytes>, Error> {
        match self.store.get(&log_path(app, build)).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// What [`Objects::sweep_sources`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Source objects deleted.
    pub sources: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Staging files of interrupted uploads deleted (local stores).
    pub staging: u64,
}

/// Removes staging files (names with a `#`, which `object_store` never
/// lists) under `dir` last modified before `cutoff`; returns how many.
fn remove_stale_staging(dir: &Path, cutoff: std::time::SystemTime) -> Result<u64, Error> {
    let io = |action: &str, path: &Path| {
        let action = format!("{action} {}", path.display());
        move |source| Error::Io { action, source }
    };
    let mut removed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io("inspect", &path))?;
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let staging = kind.is_file() && entry.file_name().as_encoded_bytes().contains(&b'#');
            if !staging {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io("inspect", &path))?;
            if modified < cutoff {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove", &path)(e)),
                }
            }
        }
    }
    Ok(removed)
}

fn log_path(app: &AppName, build: &BuildId) -> ObjectPath {
    ObjectPath::from(format!("apps/{app}/builds/{build}/log"))
}

/// Writes `chunks` to the local file `dest` through a staging file beside
/// it (`<dest>#<digits>`, a name `object_store` never lists), renamed over
/// `dest` once every byte is written. The network side checks the size
/// and feeds a bounded queue; a blocking thread does the writes, so the two
/// overlap. Any failure, or the caller going away, removes the staging file.
async fn put_file<S, E>(dest: PathBuf, mut chunks: S, limit: u64) -> Result<u64, PutError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let (queue, mut received) = tokio::sync::mpsc::channel::<Write>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_staged(&dest, &mut received));
    let mut size = 0u64;
    let fed = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(PutError::Input)?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(PutError::Store(Error::TooLarge { limit }));
            }
            if queue.send(Write::Chunk(chunk)).await.is_err() {
                // The writer stopped on an error, which it returns below.
                return Ok(false);
            }
        }
        Ok(queue.send(Write::Finish).await.is_ok())
    }
    .await;
    // Closing the queue without `Finish` tells the writer to discard.
    drop(queue);
    let written = writer.await.map_err(|e| {
        PutError::Store(Error::Io {
            action: "write the upload".into(),
            source: std::io::Error::other(e),
        })
    })?;
    match (fed, written) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(source)) => Err(PutError::Store(source)),
        (Ok(true), Ok(Some(written))) if written == size => Ok(size),
        (Ok(_), Ok(_)) => Err(PutError::Store(Error::Io {
            action: "write the upload".into(),
            source: std::io::Error::other("the writer stopped early"),
        })),
    }
}

/// The blocking half of [`put_file`]: returns the bytes written once the
/// object is in place, `None` when the upload was abandoned.
fn write_staged(
    dest: &Path,
    received: &mut tokio::sync::mpsc::Receiver<Write>,
) -> Result<Option<u64>, Error> {
    let (file, staging) = create_staging(dest)?;
    let io = |action: &str, path: &Path| {
        let action = format!("{action} {}", path.display());
        move |source| Error::Io { action, source }
    };
    let outcome = (|| {
        let mut out = file;
        while let Some(message) = received.blocking_recv() {
            match message {
                Write::Chunk(chunk) => out.write(&chunk).map_err(io("write", &staging))?,
                Write::Finish => {
                    let written = out.finish().map_err(io("write", &staging))?;
                    std::fs::rename(&staging, dest).map_err(io("publish", dest))?;
                    return Ok(Some(written));
                }
            }
        }
        Ok(None)
    })();
    if !matches!(outcome, Ok(Some(_)))
        && let Err(e) = std::fs::remove_file(&staging)
    {
        tracing::warn!("failed to remove {}: {e}", staging.display());
    }
    outcome
}

/// Creates `<dest>#<random digits>` (and `dest`'s directory if needed).
fn create_staging(dest: &Path) -> Result<(DirectFile, PathBuf), Error> {
    let io = |action: &str, path: &Path| {
        let action = format!("{action} {}", path.display());
        move |source| Error::Io { action, source }
    };
    if let Some(dir) = dest.parent() {
        slipway_storage::files::create_private_dir_all(dir).map_err(io("create directory", dir))?;
    }
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{}", rand::random::<u64>()));
        let staging = PathBuf::from(name);
        match DirectFile::create_new(&staging) {
            Ok(file) => return Ok((file, staging)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("create", &staging)(e)),
        }
    }
}

/// Why a streamed upload failed: the input stream, or the store.
#[derive(Debug, thiserror::Error)]
pub enum PutError<E> {
    /// The caller's stream failed.
    #[error("reading the upload: {0}")]
    Input(E),
    /// The store (or the size limit) refused it.
    #[error(transparent)]
    Store(Error),
}

#[cfg(test)]
mod tests;
