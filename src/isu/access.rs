//! The access policy of the iSCSI target, built from the config's `[auth]`
//! table, the per-disk `auth`/`initiators`/`sources` keys and the CHAP
//! secrets file; rebuilt on SIGHUP.

use std::collections::HashMap;

use chap::{AuthenticatorConfig, SecretsStore};
use target_iscsi::access::{Access, AuthMethod, TargetAccess};
use tracing::warn;

use crate::config::IsuConfig;

/// Why the access policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The secrets file is unreadable, malformed, or too open with `strict_secrets`.
    #[error("secrets: {0}")]
    Secrets(#[from] chap::ChapError),
    /// A target requires CHAP but nobody has credentials for it.
    #[error("target {0} requires CHAP but the secrets file has no [target.\"{0}\"] credentials")]
    NoCredentials(String),
}

/// Builds the target's access policy from `cfg` (reads the secrets file).
pub fn build(cfg: &IsuConfig) -> Result<Access, AccessError> {
    let a = &cfg.auth;
    let secrets = match &a.secrets {
        Some(p) => SecretsStore::load(p, a.strict_secrets)?,
        None => SecretsStore::default(),
    };
    let mut targets = HashMap::new();
    for d in &cfg.disks {
        if d.auth == AuthMethod::Chap
            && !secrets
                .target_names()
                .any(|n| n.eq_ignore_ascii_case(&d.iqn))
        {
            return Err(AccessError::NoCredentials(d.iqn.clone()));
        }
        targets
            .entry(d.iqn.clone())
            .or_insert_with(|| TargetAccess {
                auth: d.auth,
                initiators: d.initiators.clone(),
                sources: d.sources.clone(),
            });
    }
    if a.discovery == AuthMethod::Chap && secrets.discovery("").is_none() {
        warn!("discovery requires CHAP but the secrets file has no [discovery] section: no initiator can discover");
    }
    Ok(Access {
        discovery: a.discovery,
        targets,
        portal_sources: a.portal_sources.clone().into_iter().collect(),
        secrets,
        chap: AuthenticatorConfig {
            allowed: a.algorithms.clone(),
            challenge_len: None,
        },
    })
}
