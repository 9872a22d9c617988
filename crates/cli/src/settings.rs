//! Which rack and which app a command talks to. The rack: `--rack` or
//! `RACK_URL`, else the URL `slipway login` stored in the settings directory
//! (`$SLIPWAY_CONFIG`, else `$XDG_CONFIG_HOME/slipway`, else
//! `~/.config/slipway`). The app: `--app`, else `.convox/app` in the current
//! directory, else the directory's name, as the `convox` CLI does. Every
//! value comes in explicitly (no process-global environment reads here), so
//! tests can drive it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The environment a command runs in.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// The working directory.
    pub cwd: PathBuf,
    /// `$SLIPWAY_CONFIG`.
    pub slipway_config: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
}

impl Environment {
    /// The real process environment.
    pub fn from_process() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Ok(Self {
            cwd: std::env::current_dir().context("find the current directory")?,
            slipway_config: var("SLIPWAY_CONFIG"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            home: var("HOME"),
        })
    }

    /// The settings directory, if one can be named.
    pub(crate) fn settings_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.slipway_config {
            return Some(dir.clone());
        }
        if let Some(xdg) = &self.xdg_config_home {
            return Some(xdg.join("slipway"));
        }
        self.home
            .as_ref()
            .map(|home| home.join(".config").join("slipway"))
    }

    /// The file `slipway login` writes the rack URL to.
    pub(crate) fn rack_file(&self) -> Option<PathBuf> {
        self.settings_dir().map(|dir| dir.join("rack"))
    }

    /// The rack URL: the flag (or `RACK_URL`), else the stored login.
    pub(crate) fn rack_url(&self, flag: Option<&str>) -> anyhow::Result<String> {
        if let Some(url) = flag.map(str::trim).filter(|u| !u.is_empty()) {
            return Ok(url.to_owned());
        }
        if let Some(file) = self.rack_file() {
            match std::fs::read_to_string(&file) {
                Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("read the stored rack URL from {}", file.display())
                    });
                }
            }
        }
        anyhow::bail!(
            "no rack configured: set RACK_URL (e.g. RACK_URL=http://convox:PASSWORD@127.0.0.1:5443), pass --rack URL, or run `slipway login URL`"
        )
    }

    /// The app: the flag, else `.convox/app`, else the directory's name.
    pub(crate) fn app(&self, flag: Option<&str>) -> anyhow::Result<String> {
        default_app(flag, &self.cwd)
    }
}

/// The app a command means: `flag`, else the contents of `.convox/app` in
/// `cwd`, else `cwd`'s base name.
pub(crate) fn default_app(flag: Option<&str>, cwd: &Path) -> anyhow::Result<String> {
    if let Some(app) = flag.map(str::trim).filter(|a| !a.is_empty()) {
        return Ok(app.to_owned());
    }
    let file = cwd.join(".convox").join("app");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("read the app name from {}", file.display()));
        }
    }
    cwd.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .context("no app given and the current directory has no name to use: pass --app NAME")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_default_to_the_flag_then_the_file_then_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("myapp");
        std::fs::create_dir_all(&cwd).unwrap();
        assert_eq!(default_app(None, &cwd).unwrap(), "myapp");
        std::fs::create_dir_all(cwd.join(".convox")).unwrap();
        std::fs::write(cwd.join(".convox/app"), "  other\n").unwrap();
        assert_eq!(default_app(None, &cwd).unwrap(), "other");
        assert_eq!(default_app(Some("flagged"), &cwd).unwrap(), "flagged");
        std::fs::write(cwd.join(".convox/app"), "\n").unwrap();
        assert_eq!(default_app(None, &cwd).unwrap(), "myapp");
    }

    #[test]
    fn racks_come_from_the_flag_then_the_login_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = Environment {
            slipway_config: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let err = env.rack_url(None).unwrap_err().to_string();
        assert!(
            err.contains("RACK_URL") && err.contains("slipway login"),
            "{err}"
        );
        std::fs::write(dir.path().join("rack"), "http://convox:pw@127.0.0.1:1\n").unwrap();
        assert_eq!(env.rack_url(None).unwrap(), "http://convox:pw@127.0.0.1:1");
        assert_eq!(env.rack_url(Some("http://h:2")).unwrap(), "http://h:2");
        assert_eq!(
            env.rack_url(Some("  ")).unwrap(),
            "http://convox:pw@127.0.0.1:1"
        );
    }

    #[test]
    fn settings_follow_slipway_config_then_xdg_then_home() {
        let mut env = Environment {
            home: Some("/home/u".into()),
            ..Default::default()
        };
        assert_eq!(
            env.rack_file().unwrap(),
            Path::new("/home/u/.config/slipway/rack")
        );
        env.xdg_config_home = Some("/xdg".into());
        assert_eq!(env.rack_file().unwrap(), Path::new("/xdg/slipway/rack"));
        env.slipway_config = Some("/cfg".into());
        assert_eq!(env.rack_file().unwrap(), Path::new("/cfg/rack"));
    }
}
