//! The web console in a real browser: Debian's chromium through
//! chromedriver, against a whole rack in-process. Scenarios run one after
//! another in one test (one browser at a time on a small machine); each
//! that fails leaves a screenshot and the page source under
//! `target/console-browser/`, and all failures are reported together.
//! With `SLIPWAY_CONSOLE_SCREENSHOTS=<dir>` the pages are also saved there
//! as the documentation's screenshots (`docs/console/`).

#![allow(unreachable_pub)]

mod driver;
mod scenarios;

use std::path::PathBuf;

use driver::{Browser, Driver};
use slipway_e2e::{TestRack, ok_stdout};

/// What every scenario gets.
pub struct World {
    pub rack: TestRack,
    pub driver: Driver,
    pub cwd: tempfile::TempDir,
    shots: Option<PathBuf>,
}

impl World {
    /// The console URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rack.addr)
    }

    /// A logged-in browser session.
    pub async fn logged_in(&self, name: &str, javascript: bool) -> anyhow::Result<Browser> {
        let browser = self.driver.session(name, javascript).await;
        browser.goto(&self.url("/console/login")).await?;
        browser.fill("#password", &self.rack.password).await?;
        browser.fill("#name", name).await?;
        browser.click("main form button[type=submit]").await?;
        browser.wait_for_text("Signed in as").await?;
        Ok(browser)
    }

    /// Saves the page as a documentation screenshot, when asked to.
    pub async fn shot(&self, browser: &Browser, name: &str) -> anyhow::Result<()> {
        if let Some(dir) = &self.shots {
            std::fs::create_dir_all(dir)?;
            browser.screenshot(&dir.join(format!("{name}.png"))).await?;
        }
        Ok(())
    }

    /// Runs `slipway args…`, which must succeed; its stdout.
    pub async fn slipway(&self, args: &[&str]) -> String {
        ok_stdout(
            &self.rack.slipway(self.cwd.path(), args).await,
            &args.join(" "),
        )
    }

    /// Creates `app` and deploys the example to it; the active release.
    pub async fn deployed(&self, app: &str) -> String {
        self.slipway(&["apps", "create", app]).await;
        let example = slipway_e2e::example("myapp");
        let out = self
            .slipway(&["deploy", example.to_str().unwrap(), "-a", app])
            .await;
        out.lines()
            .find_map(|l| l.strip_prefix("Promoting "))
            .and_then(|r| r.strip_suffix("..."))
            .expect("deploy promotes")
            .to_owned()
    }

    /// A release made by `slipway <args…>` (`Release: R…` in its output).
    pub async fn release_from(&self, args: &[&str]) -> String {
        self.slipway(args)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("Release: "))
            .expect("a release")
            .trim()
            .to_owned()
    }

    /// The app's active release, as the API reports it.
    pub async fn active(&self, app: &str) -> String {
        let (status, body) = self
            .rack
            .raw("GET", &format!("/apps/{app}"), "", b"", &self.rack.password)
            .await;
        assert_eq!(status, 200, "{body}");
        let app: serde_json::Value = serde_json::from_str(&body).unwrap();
        app["release"].as_str().unwrap_or_default().to_owned()
    }

    /// Every release of the app, as the API lists them.
    pub async fn releases(&self, app: &str) -> String {
        let (status, body) = self
            .rack
            .raw(
                "GET",
                &format!("/apps/{app}/releases?limit=1000"),
                "",
                b"",
                &self.rack.password,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// Runs one scenario with its own browser session; a failure keeps the
/// page and is returned as text.
macro_rules! run {
    ($world:expr, $name:expr, $javascript:expr, $scenario:path) => {{
        let world: &World = $world;
        match world.logged_in($name, $javascript).await {
            Err(e) => Some(format!("{}: login: {e:#}", $name)),
            Ok(browser) => {
                let failure = match $scenario(world, &browser).await {
                    Ok(()) => None,
                    Err(e) => {
                        let kept = browser.keep_failure($name).await;
                        Some(format!(
                            "{}: {e:#} (page kept at {}.*)",
                            $name,
                            kept.display()
                        ))
                    }
                };
                browser.close().await;
                failure
            }
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_in_chromium() {
    let driver = Driver::start().await;
    let world = World {
        rack: TestRack::start().await,
        driver,
        cwd: tempfile::tempdir().unwrap(),
        shots: std::env::var_os("SLIPWAY_CONSOLE_SCREENSHOTS").map(PathBuf::from),
    };
    let mut failures = Vec::new();
    failures.extend(scenarios::login(&world).await);
    failures.extend(run!(&world, "promote", true, scenarios::promote));
    failures.extend(run!(&world, "failure", true, scenarios::failure));
    failures.extend(run!(&world, "cancel", true, scenarios::cancel));
    failures.extend(run!(&world, "env", true, scenarios::env));
    failures.extend(run!(&world, "crosssite", true, scenarios::cross_site));
    failures.extend(run!(&world, "nojs", false, scenarios::no_javascript));
    failures.extend(run!(&world, "live", true, scenarios::live));
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
