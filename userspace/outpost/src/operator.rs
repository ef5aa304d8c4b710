//! What an operator's command (`outpost audit`, `outpost access`) sends to the running edge's
//! admin listener besides the request: the admin token, found where `outpost run` created it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use outpost_proxy::admin;

/// The admin token of the edge an operator's command talks to.
pub struct Credential {
    /// None when it could not be read: the edge then answers 401.
    token: Option<String>,
    /// Why there is none (the file looked at and the error), for the edge's 401.
    missing: Option<String>,
}

impl Credential {
    /// `file` (`--admin-token-file`) when given: an error when it cannot be read. Otherwise
    /// `admin-token` in the data directory `outpost run --config CONFIG` would use (the
    /// config's `data_dir`, else `$OUTPOST_DATA`, else `./outpost-data`).
    pub fn find(file: Option<&Path>, config: Option<&Path>) -> Result<Credential> {
        if let Some(f) = file {
            return Ok(Credential { token: Some(admin::read_token(f)?), missing: None });
        }
        let path: Result<PathBuf> =
            outpost_proxy::load_config(config).map(|(_, c)| admin::token_path(&c.data_dir()));
        Ok(match path.and_then(|p| admin::read_token(&p)) {
            Ok(t) => Credential { token: Some(t), missing: None },
            Err(e) => Credential { token: None, missing: Some(format!("{e:#}")) },
        })
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `e`, with why no token was sent when none was.
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        match &self.missing {
            Some(why) => e.context(format!(
                "no admin token sent ({why}); give the edge's --config or --admin-token-file"
            )),
            None => e,
        }
    }
}
