//! The store flags every service takes, flattened into each service's
//! `Config` the way `slipway_rpc::SecurityArgs` is.

use std::path::{Path, PathBuf};

use slipway_domain::Secret;

use crate::Dialect;

/// Where a service keeps its records: a database URL, or a SQLite file in
/// its data directory.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// Database URL: `postgres://…` or `sqlite:PATH`. Defaults to a SQLite
    /// file in the data directory.
    #[arg(long, env = "SLIPWAY_DATABASE_URL")]
    pub database_url: Option<Secret>,

    /// Directory for local state: the default SQLite file, generated keys
    /// and the service's own files.
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = ".slipway")]
    pub data_dir: PathBuf,
}

impl StoreArgs {
    /// The default store: a SQLite file in `data_dir`.
    pub fn at(data_dir: PathBuf) -> Self {
        Self {
            database_url: None,
            data_dir,
        }
    }

    /// Checks the URL's dialect without connecting.
    pub fn validate(&self) -> Result<(), String> {
        match &self.database_url {
            Some(url) => Dialect::of_url(url.expose())
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// The database URL in effect: the given one, or `sqlite_file` in the
    /// data directory.
    pub fn url(&self, sqlite_file: &str) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite:{}", self.data_dir.join(sqlite_file).display()),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_store_is_a_sqlite_file_in_the_data_dir() {
        let args = StoreArgs::at(PathBuf::from("/var/lib/slipway"));
        assert_eq!(args.url("release.db"), "sqlite:/var/lib/slipway/release.db");
        assert_eq!(args.validate(), Ok(()));
    }

    #[test]
    fn a_given_url_wins_and_an_unknown_scheme_is_refused() {
        let mut args = StoreArgs::at(PathBuf::from("d"));
        args.database_url = Some(Secret::new("postgres://u:pw@db/slipway"));
        assert_eq!(args.url("x.db"), "postgres://u:pw@db/slipway");
        assert_eq!(args.validate(), Ok(()));
        args.database_url = Some(Secret::new("mysql://db/slipway"));
        let error = args.validate().unwrap_err();
        assert!(error.contains("mysql"), "{error}");
        assert!(!format!("{args:?}").contains("pw"), "the URL is a secret");
    }
}
