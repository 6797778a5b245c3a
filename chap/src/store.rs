//! The secrets store: CHAP credentials kept in their own TOML file, apart from
//! the main configuration, so the file can be mode 0600 while the rest of the
//! configuration is world-readable.
//!
//! ```toml
//! # Credentials for discovery sessions (SendTargets).
//! [discovery]
//! mutual = { user = "isu-a", secret = "discovery-target-secret" }
//! [[discovery.chap]]
//! user = "backup"
//! secret = "discovery-initiator-secret"
//!
//! # Credentials per target IQN.
//! [target."iqn.2026-11.org.opie:disk0"]
//! mutual = { user = "disk0", secret = "disk0-target-secret" }
//!
//! [[target."iqn.2026-11.org.opie:disk0".chap]]
//! user = "alice"
//! secret = "alice-secret-16b"
//! # Optional: only these initiators may use this credential.
//! initiators = ["iqn.1994-05.com.redhat:alice"]
//! ```
//!
//! Loading checks what can be checked without the main configuration: every
//! secret is non-empty, user names are unique per scope, and no secret is used
//! both to authenticate an initiator and a target (RFC 7143 section 9.2.1).
//! Secrets shorter than 12 bytes draw a warning naming the user.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::warn;
use zeroize::Zeroizing;

use crate::error::{ChapError, Result};
use crate::secret::{Credential, CredentialSet};

/// Secrets shorter than this many bytes draw a warning (RFC 7143 section
/// 9.2.1 asks for at least 96 bits).
pub const MIN_RECOMMENDED_SECRET_LEN: usize = 12;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    #[serde(default)]
    discovery: Option<ScopeSchema>,
    #[serde(default)]
    target: BTreeMap<String, ScopeSchema>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct ScopeSchema {
    #[serde(default)]
    chap: Vec<UserSchema>,
    #[serde(default)]
    mutual: Option<Credential>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct UserSchema {
    user: String,
    secret: crate::Secret,
    #[serde(default)]
    initiators: Vec<String>,
}

/// Credentials for discovery and for each target, loaded from a secrets file.
/// `Debug` shows user names and targets, never secrets.
#[derive(Debug, Default, Clone)]
pub struct SecretsStore {
    discovery: Option<ScopeSchema>,
    /// Keyed by lower-cased target IQN.
    targets: BTreeMap<String, ScopeSchema>,
}

impl SecretsStore {
    /// Load a secrets file. A file readable by group or others draws a warning,
    /// or is refused when `strict` is set.
    pub fn load(path: impl AsRef<Path>, strict: bool) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| ChapError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        check_permissions(path, &file, strict)?;
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(io)?;
        Self::parse(&text, path)
    }

    /// Parse secrets from TOML text (no permission check).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::parse(text, Path::new("<string>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let schema: FileSchema = toml::from_str(text).map_err(|e| ChapError::Parse {
            path: path.to_owned(),
            reason: describe_toml_error(text, &e),
        })?;
        let mut targets = BTreeMap::new();
        for (name, scope) in schema.target {
            let key = name.to_ascii_lowercase();
            if targets.insert(key, scope).is_some() {
                return Err(config(path, format!("target {name:?} listed twice")));
            }
        }
        let store = SecretsStore {
            discovery: schema.discovery,
            targets,
        };
        store.validate(path)?;
        Ok(store)
    }

    fn scopes(&self) -> impl Iterator<Item = (&str, &ScopeSchema)> {
        self.discovery
            .iter()
            .map(|s| ("discovery", s))
            .chain(self.targets.iter().map(|(n, s)| (n.as_str(), s)))
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let mut initiator_secrets = Vec::new();
        let mut target_secrets = Vec::new();
        for (scope_name, scope) in self.scopes() {
            for (i, u) in scope.chap.iter().enumerate() {
                if u.user.is_empty() || u.user.len() > crate::keys::MAX_NAME_LEN {
                    return Err(config(path, format!("{scope_name}: bad user name length")));
                }
                if scope.chap[..i].iter().any(|o| o.user == u.user) {
                    return Err(config(
                        path,
                        format!("{scope_name}: user {:?} listed twice", u.user),
                    ));
                }
                if u.initiators.iter().any(String::is_empty) {
                    return Err(config(
                        path,
                        format!(
                            "{scope_name}: user {:?} has an empty initiator name",
                            u.user
                        ),
                    ));
                }
                check_secret(path, scope_name, &u.user, &u.secret)?;
                initiator_secrets.push((scope_name, &u.user, &u.secret));
            }
            if let Some(m) = &scope.mutual {
                if m.user.is_empty() || m.user.len() > crate::keys::MAX_NAME_LEN {
                    return Err(config(
                        path,
                        format!("{scope_name}: bad mutual user name length"),
                    ));
                }
                check_secret(path, scope_name, &m.user, &m.secret)?;
                target_secrets.push((scope_name, &m.user, &m.secret));
            }
        }
        for (ts, tu, tsec) in &target_secrets {
            if let Some((is, iu, _)) = initiator_secrets.iter().find(|(_, _, s)| s.ct_eq(tsec)) {
                return Err(config(
                    path,
                    format!(
                        "the mutual secret of {tu:?} ({ts}) equals the secret of initiator user \
                         {iu:?} ({is}); one secret must not authenticate both directions"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The credentials an initiator named `initiator_iqn` may use to log in to
    /// `target_iqn`, or `None` if the store has no entry for that target.
    /// IQNs compare case-insensitively.
    pub fn target(&self, target_iqn: &str, initiator_iqn: &str) -> Option<CredentialSet> {
        self.targets
            .get(&target_iqn.to_ascii_lowercase())
            .map(|s| scope_for(s, initiator_iqn))
    }

    /// The credentials an initiator may use for a discovery session, or `None`
    /// if the store has no `[discovery]` section.
    pub fn discovery(&self, initiator_iqn: &str) -> Option<CredentialSet> {
        self.discovery.as_ref().map(|s| scope_for(s, initiator_iqn))
    }

    /// The target IQNs (lower-cased) that have credentials.
    pub fn target_names(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(String::as_str)
    }
}

fn scope_for(scope: &ScopeSchema, initiator: &str) -> CredentialSet {
    let mut set = CredentialSet::new();
    for u in &scope.chap {
        if u.initiators.is_empty()
            || u.initiators
                .iter()
                .any(|i| i.eq_ignore_ascii_case(initiator))
        {
            set = set.with_user(Credential::new(u.user.clone(), u.secret.clone()));
        }
    }
    if let Some(m) = &scope.mutual {
        set = set.with_mutual(m.clone());
    }
    set
}

fn config(path: &Path, msg: String) -> ChapError {
    ChapError::Config(format!("{}: {msg}", path.display()))
}

fn check_secret(path: &Path, scope: &str, user: &str, secret: &crate::Secret) -> Result<()> {
    if secret.is_empty() {
        return Err(config(
            path,
            format!("{scope}: user {user:?} has an empty secret"),
        ));
    }
    if secret.len() < MIN_RECOMMENDED_SECRET_LEN {
        warn!(
            file = %path.display(),
            scope,
            user,
            "CHAP secret shorter than {MIN_RECOMMENDED_SECRET_LEN} bytes: easy to guess offline"
        );
    }
    Ok(())
}

#[cfg(unix)]
fn check_permissions(path: &Path, file: &File, strict: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|source| ChapError::Io {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        if strict {
            return Err(ChapError::InsecurePermissions {
                path: PathBuf::from(path),
                mode,
            });
        }
        warn!(
            file = %path.display(),
            mode = format_args!("{mode:04o}"),
            "secrets file is readable by group or others; chmod 600 it"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _file: &File, _strict: bool) -> Result<()> {
    Ok(())
}

/// Describe a TOML error by line and message, dropping quoted values, since
/// the parser's messages may quote the offending value (a secret). Field names,
/// which serde quotes with backticks, are kept.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut msg = String::new();
    let mut quoted: Option<char> = None;
    for c in e.message().chars() {
        match quoted {
            Some(q) if c == q => {
                quoted = None;
                msg.push('…');
                msg.push(c);
            }
            Some(_) => {}
            None => {
                msg.push(c);
                if c == '"' || c == '\'' {
                    quoted = Some(c);
                }
            }
        }
    }
    let msg = msg.trim_end().to_owned();
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}
