//! The CLI's commands. Each opens what it needs and reports progress; the
//! binary (`main.rs`) only parses arguments and adds context to errors.
//!
//! Commands that open the data directory directly (`keys`, `send`,
//! `contacts import`, `templates add`) take the directory's lock, so they
//! refuse to run while a server holds it and name the API call to use
//! instead.

pub mod bench;
pub mod contacts;
pub mod dlq;
pub mod migrate;
pub mod serve;

use crate::app::{App, OpenError};
use crate::config::Config;
use herald_connectors::embedded::EmbeddedError;
use std::path::{Path, PathBuf};

/// The data directory when neither the command line nor the config names one.
pub const DEFAULT_DATA_DIR: &str = "./herald-data";

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the data directory {dir} is in use by a running Herald server; {instead}, or stop the server first")]
    Busy { dir: PathBuf, instead: &'static str },
    #[error(transparent)]
    Open(OpenError),
}

/// Resolves the data directory: flag, then config file, then the default.
pub fn data_dir(flag: Option<&Path>, config: &Config) -> PathBuf {
    flag.map(Path::to_path_buf).or_else(|| config.data_dir.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Opens the app for a command; `instead` names the API call that does the
/// same against a running server.
pub async fn open_for_command(config: Config, dir: PathBuf, instead: &'static str) -> Result<App, CommandError> {
    App::open(config, dir.clone()).await.map_err(|e| match e {
        OpenError::Embedded(EmbeddedError::Locked { .. }) => CommandError::Busy { dir, instead },
        other => CommandError::Open(other),
    })
}
