//! Debian's chromium, headless, driven through chromedriver (W3C
//! WebDriver) with fantoccini: start both, open sessions with or without
//! JavaScript, wait on conditions (never fixed sleeps), and on failure
//! keep a screenshot and the page source under `target/console-browser/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// A running chromedriver.
pub struct Driver {
    url: String,
    child: tokio::process::Child,
    profiles: tempfile::TempDir,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Driver {
    /// Starts chromedriver on a port it picks. A missing browser fails
    /// the test: `scripts/install-test-deps` installs both.
    pub async fn start() -> Self {
        let (Some(driver), Some(_)) = (on_path("chromedriver"), on_path("chromium")) else {
            panic!(
                "the console's browser tests need Debian's chromium and chromium-driver \
                 (scripts/install-test-deps installs them; scripts/test runs it)"
            );
        };
        let mut child = tokio::process::Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read chromedriver") {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .expect("chromedriver starts within 30 s")
        .expect("chromedriver reports its port");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            profiles: tempfile::tempdir().expect("profiles dir"),
        }
    }

    /// A new browser session (its own profile), JavaScript on or off.
    pub async fn session(&self, name: &str, javascript: bool) -> Browser {
        let profile = self.profiles.path().join(name);
        let mut options = serde_json::json!({
            "binary": on_path("chromium").expect("chromium"),
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if !javascript {
            options["prefs"] =
                serde_json::json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromium session");
        Browser {
            client,
            name: name.to_owned(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One browser session.
pub struct Browser {
    pub client: Client,
    name: String,
}

/// How long any one condition may take.
pub const WAIT: Duration = Duration::from_secs(60);

impl Browser {
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("open {url}"))
    }

    /// The element, once it exists.
    pub async fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("find {css}"))
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css)
            .await?
            .click()
            .await
            .with_context(|| format!("click {css}"))
    }

    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.find(css)
            .await?
            .send_keys(text)
            .await
            .with_context(|| format!("type into {css}"))
    }

    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.find(css).await?.text().await?)
    }

    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self.client.source().await?)
    }

    /// Waits until the page source satisfies `ready`; the page's text
    /// with it.
    pub async fn wait_for_source(
        &self,
        what: &str,
        ready: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            // A page mid-navigation may refuse a read; try again.
            if let Ok(source) = self.client.source().await
                && ready(&source)
            {
                return Ok(source);
            }
            if start.elapsed() > WAIT {
                bail!("timed out after {WAIT:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page contains `needle`.
    pub async fn wait_for_text(&self, needle: &str) -> anyhow::Result<String> {
        self.wait_for_source(&format!("{needle:?} on the page"), |s| s.contains(needle))
            .await
    }

    /// The page as a PNG at `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self.client.screenshot().await?;
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// Keeps a screenshot and the source of where a scenario failed.
    pub async fn keep_failure(&self, scenario: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-browser");
        let _ = std::fs::create_dir_all(&dir);
        let stem = dir.join(format!("{scenario}-{}", self.name));
        let _ = self.screenshot(&stem.with_extension("png")).await;
        if let Ok(source) = self.client.source().await {
            let _ = std::fs::write(stem.with_extension("html"), source);
        }
        stem
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
