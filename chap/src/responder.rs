//! The initiator side of CHAP: the responder (and, for mutual CHAP, the
//! authenticator of the target).

use rand::rngs::OsRng;
use rand::{CryptoRng, Rng, RngCore};
use subtle::ConstantTimeEq;
use tracing::debug;

use crate::algorithm::{Algorithm, AlgorithmList};
use crate::error::{ChapError, Result};
use crate::keys::{
    decode_algorithm_list, decode_binary, decode_identifier, decode_name, encode_hex, KeyValues,
    Received, TextPair, CHAP_A, CHAP_C, CHAP_I, CHAP_N, CHAP_R, MIN_CHALLENGE_LEN,
};
use crate::secret::Credential;
use crate::Step;

/// Initiator-side configuration.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    /// Algorithms offered in CHAP_A, in preference order.
    pub algorithms: AlgorithmList,
    /// Our name and secret.
    pub credential: Credential,
    /// For mutual CHAP: the name the target must answer with and its secret.
    /// `None` for one-way CHAP.
    pub mutual: Option<Credential>,
}

#[derive(Debug)]
enum State {
    Start,
    AwaitChallenge,
    AwaitMutual {
        alg: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
    Failed,
}

/// The initiator (responder) side of one CHAP exchange.
///
/// Call [`Responder::start`] for the CHAP_A offer, then [`Responder::step`]
/// with the keys of each Login Response until it returns [`Step::Done`].
pub struct Responder<R = OsRng> {
    config: ResponderConfig,
    rng: R,
    state: State,
    span: tracing::Span,
}

impl Responder<OsRng> {
    /// A responder drawing its mutual challenge from the operating system's
    /// CSPRNG. Fails if a secret is empty or the same secret is configured
    /// for both directions.
    pub fn new(config: ResponderConfig) -> Result<Self> {
        Self::with_rng(config, OsRng)
    }
}

impl<R: RngCore + CryptoRng> Responder<R> {
    /// A responder with the given cryptographically secure RNG.
    pub fn with_rng(config: ResponderConfig, rng: R) -> Result<Self> {
        if config.credential.secret.is_empty() {
            return Err(ChapError::Config("empty CHAP secret".into()));
        }
        if let Some(m) = &config.mutual {
            if m.secret.is_empty() {
                return Err(ChapError::Config("empty mutual CHAP secret".into()));
            }
            if m.secret.ct_eq(&config.credential.secret) {
                return Err(ChapError::SameSecretBothWays);
            }
        }
        Ok(Responder {
            config,
            rng,
            state: State::Start,
            span: tracing::debug_span!("chap", role = "responder"),
        })
    }

    /// The first keys to send: our CHAP_A list.
    pub fn start(&mut self) -> Result<KeyValues> {
        if !matches!(self.state, State::Start) {
            return Err(ChapError::Finished("started"));
        }
        let list: Vec<String> = self
            .config
            .algorithms
            .as_slice()
            .iter()
            .map(|a| a.code().to_string())
            .collect();
        let mut out = KeyValues::default();
        out.push(CHAP_A, list.join(","));
        self.state = State::AwaitChallenge;
        Ok(out)
    }

    /// Process the keys of one received Login Response.
    pub fn step<I>(&mut self, received: I) -> Result<Step>
    where
        I: IntoIterator,
        I::Item: TextPair,
    {
        if matches!(self.state, State::Start) {
            return Err(ChapError::Config("call start() before step()".into()));
        }
        let span = self.span.clone();
        let _enter = span.enter();
        let state = std::mem::replace(&mut self.state, State::Failed);
        let result = Received::collect(received).and_then(|keys| match state {
            State::Start => Err(ChapError::Config("call start() before step()".into())),
            State::AwaitChallenge => self.respond(&keys),
            State::AwaitMutual {
                alg,
                id,
                ref challenge,
            } => self.check_target(&keys, alg, id, challenge),
            State::Done => Err(ChapError::Finished("completed")),
            State::Failed => Err(ChapError::Finished("failed")),
        });
        if let Err(e) = &result {
            debug!(error = %e, "CHAP exchange failed");
        }
        result
    }

    /// The target's CHAP_A, CHAP_I, CHAP_C: answer CHAP_N, CHAP_R (and our
    /// challenge for mutual CHAP).
    fn respond(&mut self, keys: &Received) -> Result<Step> {
        keys.refuse(&[CHAP_N, CHAP_R])?;
        let a = keys.a.as_deref().ok_or(ChapError::MissingKey(CHAP_A))?;
        if a == "Reject" || a == "NotUnderstood" || a == "Irrelevant" {
            return Err(ChapError::NoAcceptableAlgorithm);
        }
        let codes = decode_algorithm_list(a)?;
        let [code] = codes[..] else {
            return Err(ChapError::malformed(
                CHAP_A,
                "target must choose one algorithm",
            ));
        };
        let alg = Algorithm::from_code(code)
            .filter(|&a| self.config.algorithms.contains(a))
            .ok_or(ChapError::AlgorithmNotOffered(code))?;
        let id = decode_identifier(keys.i.as_deref().ok_or(ChapError::MissingKey(CHAP_I))?)?;
        let challenge = decode_binary(
            CHAP_C,
            keys.c.as_deref().ok_or(ChapError::MissingKey(CHAP_C))?,
        )?;
        debug_assert!(challenge.len() >= MIN_CHALLENGE_LEN);

        let mut out = KeyValues::default();
        out.push(CHAP_N, self.config.credential.user.clone());
        out.push(
            CHAP_R,
            encode_hex(&alg.response(id, &self.config.credential.secret, &challenge)),
        );
        debug!(algorithm = %alg, mutual = self.config.mutual.is_some(), "CHAP challenge answered");
        if self.config.mutual.is_none() {
            self.state = State::Done;
            return Ok(Step::Done {
                keys: out,
                peer: None,
            });
        }
        let our_id: u8 = self.rng.gen();
        let mut ours = vec![0u8; alg.digest_len()];
        // A reflected challenge would let the target answer with our own
        // response; draw again in the (astronomically unlikely) case of a match.
        while ours == challenge || ours.iter().all(|&b| b == 0) {
            self.rng.fill_bytes(&mut ours);
        }
        out.push(CHAP_I, our_id.to_string());
        out.push(CHAP_C, encode_hex(&ours));
        self.state = State::AwaitMutual {
            alg,
            id: our_id,
            challenge: ours,
        };
        Ok(Step::Continue(out))
    }

    /// The target's CHAP_N, CHAP_R answering our challenge.
    fn check_target(
        &mut self,
        keys: &Received,
        alg: Algorithm,
        id: u8,
        ours: &[u8],
    ) -> Result<Step> {
        keys.refuse(&[CHAP_A, CHAP_I, CHAP_C])?;
        let name = decode_name(keys.n.as_deref().ok_or(ChapError::MissingKey(CHAP_N))?)?;
        let response = decode_binary(
            CHAP_R,
            keys.r.as_deref().ok_or(ChapError::MissingKey(CHAP_R))?,
        )?;
        let Some(expected) = &self.config.mutual else {
            return Err(ChapError::Finished("completed"));
        };
        let want = alg.response(id, &expected.secret, ours);
        let ok: bool = want.ct_eq(&response).into();
        if name != expected.user {
            return Err(ChapError::TargetNotAuthenticated(
                "unexpected target CHAP_N",
            ));
        }
        if !ok {
            return Err(ChapError::TargetNotAuthenticated("wrong target CHAP_R"));
        }
        debug!(target_user = %name, "target authenticated (mutual CHAP)");
        self.state = State::Done;
        Ok(Step::Done {
            keys: KeyValues::default(),
            peer: Some(name),
        })
    }
}

impl<R> std::fmt::Debug for Responder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("config", &self.config)
            .field(
                "state",
                &match self.state {
                    State::Start => "start",
                    State::AwaitChallenge => "await challenge",
                    State::AwaitMutual { .. } => "await target response",
                    State::Done => "done",
                    State::Failed => "failed",
                },
            )
            .finish_non_exhaustive()
    }
}
