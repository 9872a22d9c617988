//! The oci builder against real tools: buildah builds a `FROM scratch` image
//! carrying Debian's static busybox and pushes it to Debian's
//! `docker-registry` on loopback; the registry must serve the manifest under
//! the recorded digest. Needs `scripts/install-test-deps` (buildah,
//! docker-registry, busybox-static); a missing tool fails the test.

use std::process::Stdio;
use std::time::Duration;

use sha2::Digest as _;
use slipway_api::build::v1::BuildStatus;
use slipway_build::BuilderKind;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use slipway_api::build::v1 as pb;
use slipway_api::build::v1::build_archive_service_client::BuildArchiveServiceClient;
use slipway_api::build::v1::{ExportBuildRequest, ImportBuildRequest};

use crate::helpers::{Backend, Tarball, TestApp, artifacts, find_named, status};

const MANIFEST: &str = "services:\n  web:\n    build: .\n    command: /bin/busybox httpd -f -p 3000\n    port: 3000\n  db:\n    image: postgres:16\n";
const DOCKERFILE: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"true\"]\n";

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    assert!(
        found,
        "{tool} is not installed: run scripts/install-test-deps (as root)"
    );
}

/// A docker-registry on a loopback port of its choosing, storing into `dir`.
async fn start_registry(dir: &std::path::Path) -> (tokio::process::Child, u16) {
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start docker-registry");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return digits.parse::<u16>().unwrap();
            }
        }
        panic!("docker-registry exited without listening");
    })
    .await
    .expect("docker-registry did not start listening");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// GET a manifest with the OCI and Docker manifest media types accepted;
/// returns the Docker-Content-Digest header and the body.
async fn get_manifest(port: u16, name: &str, reference: &str) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET /v2/{name}/manifests/{reference} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Accept: application/vnd.oci.image.manifest.v1+json\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response")
        + 4;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let digest = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("docker-content-digest"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    (code, digest, response[split..].to_vec())
}

#[tokio::test]
async fn oci_builder_pushes_an_image_the_registry_serves() {
    for tool in ["buildah", "docker-registry"] {
        require(tool);
    }
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox: install busybox-static");
    let registry_dir = tempfile::tempdir().unwrap();
    let (_registry, port) = start_registry(registry_dir.path()).await;
    let registry = format!("127.0.0.1:{port}");
    let app = TestApp::spawn_with(Backend::Sqlite, None, |c| {
        c.builder = BuilderKind::Oci;
        c.registry = Some(registry.clone());
    })
    .await;

    let tgz = Tarball::new()
        .file("convox.yml", MANIFEST.as_bytes(), 0o644)
        .file("Dockerfile", DOCKERFILE.as_bytes(), 0o644)
        .file("busybox", &busybox, 0o755)
        .finish();
    let (build, log) = app.build("myapp", &tgz, "oci test").await;
    assert_eq!(
        status(&build),
        BuildStatus::Complete,
        "{log}\nreason: {}",
        build.reason
    );

    let arts = artifacts(&build);
    assert_eq!(arts["db"], "postgres:16");
    let tag = format!("web.{}", build.id);
    let (reference, digest) = arts["web"].split_once('@').expect("tag@digest");
    assert_eq!(reference, format!("{registry}/myapp:{tag}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert!(log.contains(&format!("Pushing {reference}")), "{log}");

    let (code, served, body) = get_manifest(port, "myapp", &tag).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(served, digest);
    let computed: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(format!("sha256:{computed}"), digest);
    // The manifest is reachable by digest too, and the release got the ref.
    assert_eq!(get_manifest(port, "myapp", digest).await.0, 200);
    assert_eq!(app.releases.calls()[0].artifacts["web"], arts["web"]);
    app.shutdown().await;
}

/// Exports build `id` of `app` through the archive service.
async fn export(app: &TestApp, name: &str, id: &str) -> Vec<u8> {
    let channel = slipway_rpc::channel(
        "build",
        &[format!("http://{}", app.addr)],
        &Default::default(),
    )
    .unwrap();
    let mut client = BuildArchiveServiceClient::new(channel);
    let mut stream = client
        .export_build(ExportBuildRequest {
            app: name.into(),
            id: id.into(),
        })
        .await
        .expect("export")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("export stream") {
        bytes.extend_from_slice(&chunk.chunk);
    }
    bytes
}

/// Uploads `tgz` to `name` and imports it.
async fn import(app: &TestApp, name: &str, tgz: &[u8]) -> Result<pb::Build, tonic::Status> {
    let url = app.upload(name, tgz).await?;
    let channel = slipway_rpc::channel(
        "build",
        &[format!("http://{}", app.addr)],
        &Default::default(),
    )
    .unwrap();
    BuildArchiveServiceClient::new(channel)
        .import_build(ImportBuildRequest {
            app: name.into(),
            source_url: url,
        })
        .await
        .map(|r| r.into_inner().build.expect("a build"))
}

/// The names of a gzip'd tar's entries, in order.
fn entry_names(tgz: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            e.path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn an_oci_build_exports_with_its_image_and_imports_into_another_rack() {
    for tool in ["buildah", "docker-registry"] {
        require(tool);
    }
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox: install busybox-static");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_registry_a, port_a) = start_registry(dir_a.path()).await;
    let (_registry_b, port_b) = start_registry(dir_b.path()).await;
    let registry_a = format!("127.0.0.1:{port_a}");
    let registry_b = format!("127.0.0.1:{port_b}");
    let rack_a = TestApp::spawn_with(Backend::Sqlite, None, |c| {
        c.builder = BuilderKind::Oci;
        c.registry = Some(registry_a.clone());
    })
    .await;
    let tgz = Tarball::new()
        .file("convox.yml", MANIFEST.as_bytes(), 0o644)
        .file("Dockerfile", DOCKERFILE.as_bytes(), 0o644)
        .file("busybox", &busybox, 0o755)
        .finish();
    let (build, log) = rack_a.build("myapp", &tgz, "to carry").await;
    assert_eq!(status(&build), BuildStatus::Complete, "{log}");

    let exported = export(&rack_a, "myapp", &build.id).await;
    let names = entry_names(&exported);
    assert_eq!(names[0], "slipway-build.json", "{names:?}");
    assert!(names.iter().any(|n| n == "convox.yml"), "{names:?}");
    assert!(
        names.iter().any(|n| n == ".slipway-images/web.oci.tar"),
        "{names:?}"
    );
    // `image:` services are named by the manifest, not carried; no source.
    assert!(
        !names
            .iter()
            .any(|n| n.contains("db") || n == "busybox" || n == "Dockerfile"),
        "{names:?}"
    );

    // Another rack, with its own registry, and another app.
    let rack_b = TestApp::spawn_with(Backend::Sqlite, None, |c| {
        c.builder = BuilderKind::Oci;
        c.registry = Some(registry_b.clone());
    })
    .await;
    let imported = import(&rack_b, "copy", &exported).await.expect("import");
    assert_eq!(
        status(&imported),
        BuildStatus::Complete,
        "{}",
        imported.reason
    );
    assert_eq!(imported.description, "to carry");
    let arts = artifacts(&imported);
    assert_eq!(arts["db"], "postgres:16");
    let tag = format!("web.{}", imported.id);
    let (reference, digest) = arts["web"].split_once('@').expect("tag@digest");
    assert_eq!(reference, format!("{registry_b}/copy:{tag}"));
    let (code, served, _) = get_manifest(port_b, "copy", &tag).await;
    assert_eq!((code, served.as_str()), (200, digest));
    assert_eq!(get_manifest(port_b, "copy", digest).await.0, 200);
    let log = String::from_utf8(rack_b.logs("copy", &imported.id, 0).await).unwrap();
    assert!(log.contains("importing its image from the export"), "{log}");
    assert!(
        !log.contains("buildah bud"),
        "the image is not built again: {log}"
    );
    let release = rack_b.releases.calls().last().cloned().expect("a release");
    assert_eq!(release.artifacts["web"], arts["web"]);

    // Hostile imports: an image entry leaving the source, and one past the
    // unpacked cap. Nothing is written outside, and no release is made.
    let marker = format!("escape-{:08x}", rand::random::<u32>());
    let record = br#"{"id":"BX","app":"x","description":"hostile"}"#;
    let hostile = Tarball::new()
        .file("slipway-build.json", record, 0o644)
        .file("convox.yml", MANIFEST.as_bytes(), 0o644)
        .file(
            &format!(".slipway-images/../../{marker}.oci.tar"),
            b"x",
            0o644,
        )
        .finish();
    let calls = rack_b.releases.calls().len();
    let refused = import(&rack_b, "copy", &hostile)
        .await
        .expect_err("escape refused");
    assert!(
        refused.message().contains("leaves the source directory"),
        "{refused:?}"
    );
    let root = rack_b.data_dir.parent().unwrap();
    assert!(find_named(root, &format!("{marker}.oci.tar")).is_empty());
    assert!(find_named(std::path::Path::new("/tmp"), &format!("{marker}.oci.tar")).is_empty());
    let rack_c = TestApp::spawn_with(Backend::Sqlite, None, |c| {
        c.builder = BuilderKind::Oci;
        c.registry = Some(registry_b.clone());
        c.max_unpacked_bytes = 256 << 10;
    })
    .await;
    let refused = import(&rack_c, "copy", &exported)
        .await
        .expect_err("oversize refused");
    assert!(refused.message().contains("byte limit"), "{refused:?}");
    assert_eq!(rack_b.releases.calls().len(), calls);
    assert!(rack_c.releases.calls().is_empty());
    for rack in [rack_a, rack_b, rack_c] {
        rack.shutdown().await;
    }
}
