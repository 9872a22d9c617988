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

use crate::helpers::{Backend, Tarball, TestApp, artifacts, status};

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
