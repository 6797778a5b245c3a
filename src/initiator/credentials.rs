//! CHAP credentials for `opie initiator`: names on the command line,
//! secrets only from a file or the environment, never as an argument.

use std::path::PathBuf;

use chap::{AlgorithmList, Credential, ResponderConfig, Secret};
use clap::Args;
use initiator_iscsi::Auth;

use super::error::CliError;

/// The variable holding the initiator's CHAP secret when no file is named.
pub const SECRET_ENV: &str = "OPIE_CHAP_SECRET";
/// The variable holding the target's (mutual) CHAP secret.
pub const MUTUAL_SECRET_ENV: &str = "OPIE_CHAP_MUTUAL_SECRET";

/// CHAP options of a login.
#[derive(Debug, Clone, Args)]
pub struct ChapArgs {
    /// CHAP name of this initiator (CHAP_N); turns CHAP on.
    #[arg(long, value_name = "NAME")]
    pub chap_user: Option<String>,
    /// File holding the CHAP secret (its first line); otherwise the
    /// environment variable OPIE_CHAP_SECRET.
    #[arg(long, value_name = "FILE", requires = "chap_user")]
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the name the target must answer with.
    #[arg(long, value_name = "NAME", requires = "chap_user")]
    pub mutual_user: Option<String>,
    /// File holding the target's secret for mutual CHAP; otherwise the
    /// environment variable OPIE_CHAP_MUTUAL_SECRET.
    #[arg(long, value_name = "FILE", requires = "mutual_user")]
    pub mutual_secret_file: Option<PathBuf>,
}

/// Reads a secret: the first line of `file`, else the variable `env`.
fn secret(file: Option<&PathBuf>, env: &str, what: &str) -> Result<Secret, CliError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| CliError::Secret {
            path: path.clone(),
            source,
        })?,
        None => std::env::var(env).map_err(|_| {
            CliError::Usage(format!(
                "{what} needs a secret: give a file (--{}) or set {env}",
                if env == SECRET_ENV {
                    "chap-secret-file"
                } else {
                    "mutual-secret-file"
                }
            ))
        })?,
    };
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(CliError::Usage(format!("{what}: the secret is empty")));
    }
    Ok(Secret::new(line.as_bytes()))
}

impl ChapArgs {
    /// The authentication these options ask for: none without
    /// `--chap-user`, CHAP (mutual with `--mutual-user`) otherwise.
    pub fn auth(&self) -> Result<Auth, CliError> {
        let Some(user) = &self.chap_user else {
            return Ok(Auth::None);
        };
        let mine = secret(self.chap_secret_file.as_ref(), SECRET_ENV, "--chap-user")?;
        let mutual = match &self.mutual_user {
            None => None,
            Some(m) => Some(Credential::new(
                m.clone(),
                secret(
                    self.mutual_secret_file.as_ref(),
                    MUTUAL_SECRET_ENV,
                    "--mutual-user",
                )?,
            )),
        };
        Ok(Auth::Chap(ResponderConfig {
            algorithms: AlgorithmList::default(),
            credential: Credential::new(user.clone(), mine),
            mutual,
        }))
    }
}
