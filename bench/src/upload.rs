//! `upload`: source upload throughput and cached rebuilds on the build
//! service of an in-process rack (snapshot builder, local object store).
//!
//! - throughput: the same ~50 MB gzip'd tarball sent with client-streamed
//!   `UploadSource` (1 MiB chunks, as the gateway sends them) beside a raw
//!   loopback TCP copy of the same bytes to a reader that discards them (the
//!   issue's baseline), to one that stores them the way the build service
//!   stores uploads (`slipway_build::direct::DirectFile`, fed from a queue),
//!   and the bytes written from memory the same way (the disk's own
//!   ceiling: an upload that stores its bytes cannot beat the slower of the
//!   network and the disk). Each upload gets a fresh key, as the CLI's do.
//!   Extra figures: uploads that all name one key, each replacing the last
//!   object, and the same bytes POSTed through the gateway
//!   (`slipway_client`, what `slipway build` sends). Rounds alternate.
//! - cached rebuild: the source is built once, then uploaded again
//!   unchanged and built again; timed from `CreateBuild` until the build is
//!   complete (its log stream ends), the builder reusing the artifact.
//!
//! Goals (issue 4): upload ≥ 70% of the raw socket copy; cached rebuild of
//! an unchanged 50 MB source ≤ 1 s.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use rand::RngCore as _;
use serde_json::json;
use slipway_api::build::v1 as pb;
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_rpc::{Channel, MessageLimits as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use std::path::PathBuf;

use slipway_build::direct::DirectFile;

use crate::rack::BenchRack;
use crate::stats::percentile_ms;

/// Options of the `upload` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Size of the source's files in MiB (random, so the tarball is as big).
    #[arg(long, default_value = "50")]
    source_mib: usize,
    /// Rounds of (raw copy, raw copy to file, gRPC uploads, gateway upload).
    #[arg(long, default_value = "5")]
    rounds: usize,
    /// Cached rebuilds measured.
    #[arg(long, default_value = "3")]
    rebuilds: usize,
}

const APP: &str = "bench-upload";
const CHUNK: usize = 1 << 20;
/// The key the replacing uploads all name.
const KEY: &str = "bench/source.tgz";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.rebuilds > 0,
        "--rounds and --rebuilds must be positive"
    );
    let rack = BenchRack::start(1 << 30).await?;
    let result = measure(&args, &rack).await;
    rack.stop().await;
    result
}

async fn measure(args: &Args, rack: &BenchRack) -> anyhow::Result<()> {
    let source = Bytes::from(tarball(args.source_mib)?);
    let mb = source.len() as f64 / 1e6;
    eprintln!(
        "upload: {:.1} MB tarball, {} rounds, {} cached rebuilds",
        mb, args.rounds, args.rebuilds
    );
    ReleaseServiceClient::new(rack.channel("release", 0)?)
        .create_app(rpb::CreateAppRequest {
            name: APP.into(),
            deadline_seconds: 0,
        })
        .await?;
    let mut build = BuildServiceClient::new(rack.channel("build", 1)?).with_message_limits();

    let gateway = slipway_client::Client::new(&rack.url)?;

    let sink = RawServer::start(Sink::Discard, rack.dir()).await?;
    let file_sink = RawServer::start(Sink::StoreLikeUploads, rack.dir()).await?;
    let (mut raw, mut raw_file, mut grpc) = (Vec::new(), Vec::new(), Vec::new());
    let mut disk = Vec::new();
    let (mut replacing, mut via_gateway) = (Vec::new(), Vec::new());
    // One unrecorded upload of each kind warms the channels and the store.
    upload(&mut build, &source, KEY).await?;
    gateway
        .object_store(APP, "bench/gateway.tgz", source.to_vec())
        .await
        .context("upload through the gateway")?;
    for _ in 0..args.rounds {
        raw.push(sink.copy(&source).await?);
        raw_file.push(file_sink.copy(&source).await?);
        disk.push(write_to_disk(&source, rack.dir()).await?);
        let started = Instant::now();
        upload(&mut build, &source, "").await?;
        grpc.push(started.elapsed());
        let started = Instant::now();
        upload(&mut build, &source, KEY).await?;
        replacing.push(started.elapsed());
        // The client takes the body by value; the copy is not timed.
        let body = source.to_vec();
        let started = Instant::now();
        gateway
            .object_store(APP, "bench/gateway.tgz", body)
            .await
            .context("upload through the gateway")?;
        via_gateway.push(started.elapsed());
    }
    // Median time, as MB/s.
    let rate = |t: &mut Vec<Duration>| mb / (percentile_ms(t, 50.0) / 1000.0);
    let (raw_rate, file_rate, grpc_rate) = (rate(&mut raw), rate(&mut raw_file), rate(&mut grpc));
    let (replacing_rate, gateway_rate) = (rate(&mut replacing), rate(&mut via_gateway));
    let disk_rate = rate(&mut disk);
    // An upload that stores its bytes can go no faster than the slower of
    // the network and the disk.
    let ceiling = raw_rate.min(disk_rate);

    // Cached rebuilds.
    let url = upload(&mut build, &source, KEY).await?;
    let (cold, cold_log) = build_once(&mut build, &url).await?;
    anyhow::ensure!(
        cold_log.contains("Created snapshot") || cold_log.contains("Reusing snapshot"),
        "unexpected build log:\n{cold_log}"
    );
    let (mut rebuilds, mut with_upload) = (Vec::new(), Vec::new());
    for _ in 0..args.rebuilds {
        let started = Instant::now();
        let url = upload(&mut build, &source, KEY).await?;
        let (took, log) = build_once(&mut build, &url).await?;
        with_upload.push(started.elapsed());
        anyhow::ensure!(
            log.contains("Reusing snapshot"),
            "the rebuild did not reuse the artifact:\n{log}"
        );
        rebuilds.push(took);
    }
    let cold_ms = cold.as_secs_f64() * 1000.0;
    let (re50, re_max) = (
        percentile_ms(&mut rebuilds, 50.0),
        percentile_ms(&mut rebuilds, 100.0),
    );
    let up50 = percentile_ms(&mut with_upload, 50.0);

    let ratio = grpc_rate / raw_rate;
    println!(
        "{:<44} {:>10} {:>12} {:>8} {:>8} {:>4}",
        "case", "figure", "baseline", "ratio", "goal", "met"
    );
    println!(
        "{:<44} {:>6.0} MB/s {:>7.0} MB/s {:>7.0}% {:>8} {:>4}",
        "UploadSource vs raw TCP copy (p50)",
        grpc_rate,
        raw_rate,
        100.0 * ratio,
        ">= 70%",
        if ratio >= 0.7 { "yes" } else { "NO" }
    );
    for (case, figure, baseline) in [
        (
            "UploadSource vs min(raw TCP, disk write)",
            grpc_rate,
            ceiling,
        ),
        (
            "UploadSource vs raw TCP copy stored alike",
            grpc_rate,
            file_rate,
        ),
        (
            "raw TCP copy stored alike vs raw TCP copy",
            file_rate,
            raw_rate,
        ),
        (
            "disk write from memory vs raw TCP copy",
            disk_rate,
            raw_rate,
        ),
    ] {
        println!(
            "{:<44} {:>6.0} MB/s {:>7.0} MB/s {:>7.0}% {:>8} {:>4}",
            case,
            figure,
            baseline,
            100.0 * figure / baseline,
            "-",
            "-"
        );
    }
    for (case, figure) in [
        ("UploadSource, each replacing one key", replacing_rate),
        ("gateway POST /apps/{app}/objects/{key}", gateway_rate),
    ] {
        println!(
            "{:<44} {:>6.0} MB/s {:>7.0} MB/s {:>7.0}% {:>8} {:>4}",
            case,
            figure,
            raw_rate,
            100.0 * figure / raw_rate,
            "-",
            "-"
        );
    }
    println!(
        "{:<44} {:>8.0} ms {:>9.0} ms {:>8} {:>8} {:>4}",
        format!("cached rebuild, {mb:.0} MB source (p50; vs cold)"),
        re50,
        cold_ms,
        format!("{:.0}%", 100.0 * re50 / cold_ms),
        "<= 1 s",
        if re50 <= 1000.0 { "yes" } else { "NO" }
    );
    println!(
        "{:<44} {:>8.0} ms {:>12} {:>8} {:>8} {:>4}",
        "cached rebuild, slowest", re_max, "", "", "", ""
    );
    println!(
        "{:<44} {:>8.0} ms {:>12} {:>8} {:>8} {:>4}",
        "re-upload + cached rebuild (p50)", up50, "", "", "", ""
    );
    println!(
        "{}",
        json!({
            "source_bytes": source.len(),
            "rounds": args.rounds,
            "upload_mb_per_s": grpc_rate,
            "raw_tcp_mb_per_s": raw_rate,
            "raw_tcp_stored_alike_mb_per_s": file_rate,
            "disk_write_mb_per_s": disk_rate,
            "upload_ratio_vs_ceiling": grpc_rate / ceiling,
            "upload_replacing_one_key_mb_per_s": replacing_rate,
            "gateway_upload_mb_per_s": gateway_rate,
            "upload_ratio": ratio,
            "goal_upload_ratio": 0.7,
            "cold_build_ms": cold_ms,
            "cached_rebuild_ms": {"p50": re50, "max": re_max, "n": args.rebuilds},
            "reupload_and_cached_rebuild_ms_p50": up50,
            "goal_cached_rebuild_ms": 1000.0,
            "goal_met": ratio >= 0.7 && re50 <= 1000.0,
        })
    );
    Ok(())
}

/// A gzip'd tarball with a manifest and `mib` files of 1 MiB random bytes.
fn tarball(mib: usize) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, data)
    };
    add(
        "convox.yml",
        b"services:\n  web:\n    build: .\n    command: sleep 1000\n    port: 5000\n",
    )?;
    let mut data = vec![0u8; 1 << 20];
    for i in 0..mib {
        rand::rng().fill_bytes(&mut data);
        add(&format!("data/blob-{i:03}.bin"), &data)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// Streams `source` with `UploadSource` as object `key` (a fresh one when
/// empty); returns the object URL.
async fn upload(
    build: &mut BuildServiceClient<Channel>,
    source: &Bytes,
    key: &str,
) -> anyhow::Result<String> {
    let first = pb::UploadSourceRequest {
        app: APP.into(),
        key: key.into(),
        chunk: Bytes::new(),
        last: source.is_empty(),
    };
    let len = source.len();
    let data = source.clone();
    let chunks = (0..len)
        .step_by(CHUNK)
        .map(move |at| pb::UploadSourceRequest {
            chunk: data.slice(at..(at + CHUNK).min(len)),
            last: at + CHUNK >= len,
            ..Default::default()
        });
    let answer = build
        .upload_source(futures::stream::iter(std::iter::once(first).chain(chunks)))
        .await
        .context("upload the source")?
        .into_inner();
    anyhow::ensure!(answer.size == source.len() as u64, "short upload");
    Ok(answer.url)
}

/// Builds `url` and waits for the end; returns the time and the log.
async fn build_once(
    build: &mut BuildServiceClient<Channel>,
    url: &str,
) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let created = build
        .create_build(pb::CreateBuildRequest {
            app: APP.into(),
            source_url: url.into(),
            manifest_path: String::new(),
            description: "bench".into(),
            git_sha: String::new(),
            no_cache: false,
        })
        .await
        .context("create a build")?
        .into_inner()
        .build
        .context("no build in answer")?;
    let mut logs = build
        .watch_build_logs(pb::WatchBuildLogsRequest {
            app: APP.into(),
            id: created.id.clone(),
            from_offset: 0,
        })
        .await?
        .into_inner();
    let mut log = Vec::new();
    while let Some(message) = logs.message().await? {
        log.extend_from_slice(&message.chunk);
    }
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&log).into_owned();
    let done = build
        .get_build(pb::GetBuildRequest {
            app: APP.into(),
            id: created.id,
        })
        .await?
        .into_inner()
        .build
        .context("no build in answer")?;
    anyhow::ensure!(
        done.status == pb::BuildStatus::Complete as i32,
        "build ended {:?}: {}\n{log}",
        pb::BuildStatus::try_from(done.status),
        done.reason
    );
    Ok((took, log))
}

/// What a [`RawServer`] does with the bytes it reads.
#[derive(Clone, Copy)]
enum Sink {
    /// Drops them: the baseline.
    Discard,
    /// Stores them the way the build service stores an upload: into a new
    /// file through [`DirectFile`] on a blocking thread fed by a bounded
    /// queue, so reads and writes overlap.
    StoreLikeUploads,
}

/// A loopback TCP reader: takes a whole stream, optionally storing it,
/// then answers 8 bytes, so the sender's time covers delivery (and, when
/// stored, the file being complete).
struct RawServer {
    addr: std::net::SocketAddr,
}

impl RawServer {
    async fn start(sink: Sink, dir: &std::path::Path) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dir = dir.to_path_buf();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                n += 1;
                let path = dir.join(format!("raw-copy.{n}"));
                let copied = async {
                    let total = match sink {
                        Sink::Discard => discard(&mut stream).await?,
                        Sink::StoreLikeUploads => store(&mut stream, path.clone()).await?,
                    };
                    stream.write_all(&total.to_be_bytes()).await?;
                    anyhow::Ok(())
                };
                let _ = copied.await;
                let _ = tokio::fs::remove_file(&path).await;
            }
        });
        Ok(Self { addr })
    }

    /// Sends `data` in 1 MiB writes; returns the time until acknowledged.
    async fn copy(&self, data: &Bytes) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        for chunk in data.chunks(CHUNK) {
            stream.write_all(chunk).await?;
        }
        stream.shutdown().await?;
        let mut ack = [0u8; 8];
        stream.read_exact(&mut ack).await?;
        anyhow::ensure!(
            u64::from_be_bytes(ack) == data.len() as u64,
            "short raw copy"
        );
        Ok(started.elapsed())
    }
}

/// Reads `stream` to its end into one reused buffer; returns the bytes read.
async fn discard(stream: &mut tokio::net::TcpStream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf).await? {
            0 => return Ok(total),
            read => total += read as u64,
        }
    }
}

/// Reads `stream` to its end into the new file `path`, as [`Sink`] says.
async fn store(stream: &mut tokio::net::TcpStream, path: PathBuf) -> anyhow::Result<u64> {
    let (queue, mut received) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = DirectFile::create_new(&path)?;
        while let Some(chunk) = received.blocking_recv() {
            file.write(&chunk)?;
        }
        file.finish()
    });
    loop {
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        if stream.read_buf(&mut buf).await? == 0 {
            break;
        }
        if queue.send(buf.freeze()).await.is_err() {
            break;
        }
    }
    drop(queue);
    Ok(writer.await??)
}

/// Writes `data` from memory into a new file in `dir` as uploads are
/// written (no network): the storage's own ceiling. Returns the time.
async fn write_to_disk(data: &Bytes, dir: &std::path::Path) -> anyhow::Result<Duration> {
    let path = dir.join("disk-write");
    let data = data.clone();
    let took = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> std::io::Result<Duration> {
            let started = Instant::now();
            let mut file = DirectFile::create_new(&path)?;
            for chunk in data.chunks(CHUNK) {
                file.write(chunk)?;
            }
            file.finish()?;
            Ok(started.elapsed())
        }
    })
    .await??;
    tokio::fs::remove_file(&path).await?;
    Ok(took)
}
