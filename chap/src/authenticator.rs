//! The target side of CHAP: the authenticator.

use rand::rngs::OsRng;
use rand::{CryptoRng, Rng, RngCore};
use subtle::ConstantTimeEq;
use tracing::debug;

use crate::algorithm::{Algorithm, AlgorithmList};
use crate::error::{ChapError, Result};
use crate::keys::{
    decode_algorithm_list, decode_binary, decode_identifier, decode_name, encode_hex, KeyValues,
    Received, TextPair, CHAP_A, CHAP_C, CHAP_I, CHAP_N, CHAP_R, MAX_CHALLENGE_LEN,
};
use crate::secret::{Credentials, Secret};
use crate::Step;

/// Target-side policy for one exchange.
#[derive(Debug, Clone, Default)]
pub struct AuthenticatorConfig {
    /// Algorithms the target permits. The target picks the first algorithm of
    /// the initiator's CHAP_A list that is in here.
    pub allowed: AlgorithmList,
    /// Challenge length in bytes. `None` means the digest length of the chosen
    /// algorithm; a smaller value is raised to the digest length, a larger one
    /// is capped at [`MAX_CHALLENGE_LEN`].
    pub challenge_len: Option<usize>,
}

#[derive(Debug)]
enum State {
    AwaitAlgorithms,
    AwaitResponse {
        alg: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done {
        user: String,
    },
    Failed,
}

/// The target (authenticator) side of one CHAP exchange.
///
/// Feed it the keys of each Login Request received while in the security
/// negotiation stage with `AuthMethod=CHAP` agreed, and send the keys it
/// returns. See the crate documentation for the sequence.
///
/// After an error the exchange is dead: every further `step` returns
/// [`ChapError::Finished`]. A new login needs a new `Authenticator` (so a fresh
/// CHAP_I and CHAP_C).
pub struct Authenticator<C, R = OsRng> {
    config: AuthenticatorConfig,
    credentials: C,
    rng: R,
    state: State,
    /// The algorithm picked from CHAP_A, kept after a failure for diagnostics.
    chosen: Option<Algorithm>,
    span: tracing::Span,
}

impl<C: Credentials> Authenticator<C, OsRng> {
    /// An authenticator drawing its identifier and challenge from the
    /// operating system's CSPRNG.
    pub fn new(config: AuthenticatorConfig, credentials: C) -> Self {
        Self::with_rng(config, credentials, OsRng)
    }
}

impl<C: Credentials, R: RngCore + CryptoRng> Authenticator<C, R> {
    /// An authenticator with the given cryptographically secure RNG.
    pub fn with_rng(config: AuthenticatorConfig, credentials: C, rng: R) -> Self {
        Authenticator {
            config,
            credentials,
            rng,
            state: State::AwaitAlgorithms,
            chosen: None,
            span: tracing::debug_span!("chap", role = "authenticator"),
        }
    }

    /// The algorithm chosen, once the initiator's CHAP_A has been processed
    /// (also after a later failure).
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.chosen
    }

    /// The authenticated CHAP user name, once the exchange has succeeded.
    pub fn authenticated_user(&self) -> Option<&str> {
        match &self.state {
            State::Done { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Process the keys of one received Login Request. Keys other than the
    /// five CHAP keys are ignored (the login handles them).
    pub fn step<I>(&mut self, received: I) -> Result<Step>
    where
        I: IntoIterator,
        I::Item: TextPair,
    {
        let span = self.span.clone();
        let _enter = span.enter();
        let state = std::mem::replace(&mut self.state, State::Failed);
        let result = Received::collect(received).and_then(|keys| match state {
            State::AwaitAlgorithms => self.offer(&keys),
            State::AwaitResponse {
                alg,
                id,
                ref challenge,
            } => self.verify(&keys, alg, id, challenge),
            State::Done { .. } => Err(ChapError::Finished("completed")),
            State::Failed => Err(ChapError::Finished("failed")),
        });
        if let Err(e) = &result {
            debug!(error = %e, "CHAP exchange failed");
        }
        // On error the state stays `Failed`; on success the handlers set it.
        result
    }

    /// Step 1: the initiator's CHAP_A list; answer CHAP_A, CHAP_I, CHAP_C.
    fn offer(&mut self, keys: &Received) -> Result<Step> {
        keys.refuse(&[CHAP_I, CHAP_C, CHAP_N, CHAP_R])?;
        let list = keys.a.as_deref().ok_or(ChapError::MissingKey(CHAP_A))?;
        let offered = decode_algorithm_list(list)?;
        let alg = offered
            .iter()
            .filter_map(|&code| Algorithm::from_code(code))
            .find(|&a| self.config.allowed.contains(a))
            .ok_or(ChapError::NoAcceptableAlgorithm)?;
        let len = self
            .config
            .challenge_len
            .unwrap_or(0)
            .max(alg.digest_len())
            .min(MAX_CHALLENGE_LEN);
        let id: u8 = self.rng.gen();
        let mut challenge = vec![0u8; len];
        self.rng.fill_bytes(&mut challenge);
        debug!(algorithm = %alg, challenge_len = len, "CHAP algorithm chosen");
        let mut out = KeyValues::default();
        out.push(CHAP_A, alg.code().to_string());
        out.push(CHAP_I, id.to_string());
        out.push(CHAP_C, encode_hex(&challenge));
        self.chosen = Some(alg);
        self.state = State::AwaitResponse { alg, id, challenge };
        Ok(Step::Continue(out))
    }

    /// Step 2: CHAP_N, CHAP_R and optionally the mutual CHAP_I, CHAP_C.
    fn verify(&mut self, keys: &Received, alg: Algorithm, id: u8, ours: &[u8]) -> Result<Step> {
        keys.refuse(&[CHAP_A])?;
        let name = decode_name(keys.n.as_deref().ok_or(ChapError::MissingKey(CHAP_N))?)?;
        let response = decode_binary(
            CHAP_R,
            keys.r.as_deref().ok_or(ChapError::MissingKey(CHAP_R))?,
        )?;
        if response.len() != alg.digest_len() {
            return Err(ChapError::malformed(
                CHAP_R,
                format!("{} bytes, {alg} needs {}", response.len(), alg.digest_len()),
            ));
        }
        let mutual = match (keys.i.as_deref(), keys.c.as_deref()) {
            (None, None) => None,
            (Some(_), None) => return Err(ChapError::MissingKey(CHAP_C)),
            (None, Some(_)) => return Err(ChapError::MissingKey(CHAP_I)),
            (Some(i), Some(c)) => Some((decode_identifier(i)?, decode_binary(CHAP_C, c)?)),
        };
        if let Some((_, their)) = &mutual {
            if their.as_slice() == ours {
                return Err(ChapError::Reflection);
            }
        }

        let secret = self.credentials.initiator_secret(&name);
        let expected = alg.response(id, secret.as_ref().unwrap_or(&dummy_secret()), ours);
        let matches: bool = expected.ct_eq(&response).into();
        let Some(secret) = secret else {
            return Err(ChapError::UnknownUser(name));
        };
        if secret.is_empty() {
            // A misconfigured (empty) secret must not let anyone in.
            return Err(ChapError::Config(format!(
                "empty CHAP secret for user {name:?}"
            )));
        }
        if !matches {
            return Err(ChapError::BadResponse(name));
        }

        let mut out = KeyValues::default();
        if let Some((their_id, their_challenge)) = mutual {
            let target = self
                .credentials
                .target_credential()
                .ok_or(ChapError::MutualNotConfigured)?;
            if target.secret.ct_eq(&secret) {
                return Err(ChapError::SameSecretBothWays);
            }
            if target.secret.is_empty() {
                return Err(ChapError::Config("empty mutual CHAP secret".into()));
            }
            out.push(CHAP_N, target.user.clone());
            out.push(
                CHAP_R,
                encode_hex(&alg.response(their_id, &target.secret, &their_challenge)),
            );
        }
        debug!(user = %name, algorithm = %alg, mutual = !out.is_empty(), "CHAP authenticated");
        self.state = State::Done { user: name.clone() };
        Ok(Step::Done {
            keys: out,
            peer: Some(name),
        })
    }
}

/// Stand-in secret for unknown users, so that an unknown user costs the same
/// digest computation as a known one.
fn dummy_secret() -> Secret {
    Secret::new(b"opie-chap-unknown-user".to_vec())
}

impl<C, R> std::fmt::Debug for Authenticator<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::AwaitAlgorithms => "await CHAP_A",
            State::AwaitResponse { .. } => "await CHAP_N/CHAP_R",
            State::Done { .. } => "done",
            State::Failed => "failed",
        };
        f.debug_struct("Authenticator")
            .field("allowed", &self.config.allowed)
            .field("state", &state)
            .field("algorithm", &self.chosen)
            .finish_non_exhaustive()
    }
}
