//! Secrets and credentials: types that never print what they hold.

use std::fmt;

use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A CHAP secret. Its bytes are wiped from memory on drop, its `Debug` output
/// is redacted, it has no `Display`, and comparisons are constant-time.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// A secret from raw bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(bytes.into()))
    }

    /// Length in bytes (RFC 7143 section 9.2.1 asks for at least 12 bytes, 16
    /// when the secret may be attacked offline).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty (never acceptable for CHAP).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality (the time depends only on the lengths).
    pub fn ct_eq(&self, other: &Secret) -> bool {
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(Zeroizing::new(s.into_bytes()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A CHAP name (CHAP_N) and its secret.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The CHAP name sent as CHAP_N.
    pub user: String,
    /// The secret (redacted in `Debug`).
    pub secret: Secret,
}

impl Credential {
    /// A credential from a name and a secret.
    pub fn new(user: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Credential {
            user: user.into(),
            secret: secret.into(),
        }
    }
}

/// Where the authenticator looks up secrets: one scope, i.e. one target (or
/// discovery) as seen by one initiator.
///
/// [`CredentialSet`] is the ready-made implementation; a
/// [`SecretsStore`](crate::SecretsStore) hands one out per target and
/// initiator IQN.
pub trait Credentials {
    /// The secret the initiator must know when it calls itself `user`, or
    /// `None` if that user may not log in here.
    fn initiator_secret(&self, user: &str) -> Option<Secret>;

    /// The target's own credential for mutual CHAP, or `None` if mutual CHAP
    /// is not configured here (an initiator that asks for it then fails).
    fn target_credential(&self) -> Option<Credential>;
}

impl<C: Credentials + ?Sized> Credentials for &C {
    fn initiator_secret(&self, user: &str) -> Option<Secret> {
        (**self).initiator_secret(user)
    }
    fn target_credential(&self) -> Option<Credential> {
        (**self).target_credential()
    }
}

/// A fixed set of initiator credentials plus an optional mutual credential.
#[derive(Clone, Debug, Default)]
pub struct CredentialSet {
    users: Vec<Credential>,
    mutual: Option<Credential>,
}

impl CredentialSet {
    /// An empty set: every user is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) an initiator credential.
    pub fn with_user(mut self, cred: Credential) -> Self {
        self.users.retain(|c| c.user != cred.user);
        self.users.push(cred);
        self
    }

    /// Set the target's credential for mutual CHAP.
    pub fn with_mutual(mut self, cred: Credential) -> Self {
        self.mutual = Some(cred);
        self
    }

    /// The initiator user names (for diagnostics; never the secrets).
    pub fn user_names(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(|c| c.user.as_str())
    }
}

impl Credentials for CredentialSet {
    fn initiator_secret(&self, user: &str) -> Option<Secret> {
        self.users
            .iter()
            .find(|c| c.user == user)
            .map(|c| c.secret.clone())
    }

    fn target_credential(&self) -> Option<Credential> {
        self.mutual.clone()
    }
}
