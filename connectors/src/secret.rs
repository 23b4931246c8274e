//! Secrets in configuration: inline, from an environment variable, or from a file; never logged.
//!
//! In `herald.toml` a secret is a string (the secret itself), `{ env = "NAME" }` or
//! `{ file = "/path" }` (trailing whitespace trimmed, so a key file ending in a newline works).
//! [`SecretSource::resolve`] reads it once at start; a missing variable or file is an error that
//! names it. A [`Secret`] prints as `***` in `Debug`, so configuration dumps and logs never show it.

use serde::{Deserialize, Serialize};

use std::fmt;
use std::path::PathBuf;

/// Where a secret comes from, as written in the configuration. Serialized (as `herald config
/// check` prints the configuration) an inline secret is `"***"`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    Inline(String),
    Env { env: String },
    File { file: PathBuf },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("\"***\""),
            SecretSource::Env { env } => write!(f, "{{ env = {env:?} }}"),
            SecretSource::File { file } => write!(f, "{{ file = {:?} }}", file.display()),
        }
    }
}

impl Serialize for SecretSource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            SecretSource::Inline(_) => serializer.serialize_str("***"),
            SecretSource::Env { env } => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("env", env)?;
                map.end()
            }
            SecretSource::File { file } => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("file", file)?;
                map.end()
            }
        }
    }
}

impl Default for SecretSource {
    fn default() -> Self {
        SecretSource::Inline(String::new())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set (or not UTF-8)")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("the secret is empty")]
    Empty,
}

/// A resolved secret. `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl SecretSource {
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::Inline(value) => value.clone(),
            SecretSource::Env { env } => std::env::var(env).map_err(|_| SecretError::MissingEnv(env.clone()))?,
            SecretSource::File { file } => std::fs::read_to_string(file)
                .map_err(|source| SecretError::File { path: file.clone(), source })?
                .trim_end()
                .to_string(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        secret: SecretSource,
    }

    /// The three spellings, through serde_json (the same serde shapes as TOML).
    fn parse(json: &str) -> SecretSource {
        serde_json::from_str::<Holder>(json).unwrap().secret
    }

    #[test]
    fn inline_env_and_file_resolve_and_never_print() {
        let inline = parse(r#"{"secret": "s3cr3t"}"#);
        assert_eq!(inline.resolve().unwrap().expose(), "s3cr3t");
        assert_eq!(format!("{inline:?}"), "\"***\"");
        assert_eq!(format!("{:?}", inline.resolve().unwrap()), "***");
        assert_eq!(serde_json::to_string(&inline).unwrap(), "\"***\"");

        let env = parse(r#"{"secret": {"env": "HERALD_TEST_SECRET_THAT_IS_NOT_SET"}}"#);
        assert_eq!(serde_json::to_string(&env).unwrap(), r#"{"env":"HERALD_TEST_SECRET_THAT_IS_NOT_SET"}"#);
        let err = env.resolve().unwrap_err().to_string();
        assert!(err.contains("HERALD_TEST_SECRET_THAT_IS_NOT_SET"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "from-file\n").unwrap();
        let file = parse(&format!(r#"{{"secret": {{"file": {:?}}}}}"#, path.display().to_string()));
        assert_eq!(file.resolve().unwrap().expose(), "from-file");
        let missing = parse(r#"{"secret": {"file": "/nonexistent/herald-key"}}"#);
        assert!(missing.resolve().unwrap_err().to_string().contains("/nonexistent/herald-key"));
        assert!(matches!(parse(r#"{"secret": ""}"#).resolve(), Err(SecretError::Empty)));
    }
}
