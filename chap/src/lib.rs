//! CHAP authentication for iSCSI (RFC 1994, RFC 7143 section 12.1.3), sans-I/O.
//!
//! The crate holds no sockets and no clock: the iSCSI login feeds it the text
//! keys it received and sends the keys it gets back. It has both sides:
//!
//! * [`Authenticator`]: the target. Picks the first algorithm of the
//!   initiator's CHAP_A list that the allow-list permits, issues a fresh
//!   CHAP_I and a CSPRNG challenge at least as long as the digest, checks
//!   CHAP_N/CHAP_R against a [`Credentials`] lookup in constant time, and
//!   answers a mutual challenge with the target credential, refusing a
//!   reflected challenge and a secret used both ways.
//! * [`Responder`]: the initiator. Offers CHAP_A, answers the challenge and,
//!   for mutual CHAP, challenges the target and checks its answer.
//!
//! Algorithms: MD5, SHA-1, SHA-256, SHA3-256 (CHAP_A 5, 6, 7, 8), computed by
//! the RustCrypto crates. Binary values are read as `0x` hex or `0b` base64 and
//! sent as `0x` hex. Errors are one enum, [`ChapError`]; its
//! [`kind`](ChapError::kind) separates authentication failures from protocol
//! errors and [`login_status`](ChapError::login_status) gives the Login
//! Response status class and detail.
//!
//! Transport-independent policy lives here too: [`LoginBackoff`] slows down
//! repeated failures per source address, and [`SecretsStore`] loads
//! credentials from a separate TOML file. Secrets ([`Secret`]) never print
//! their content, and [`KeyValues`] redacts CHAP_C and CHAP_R in `Debug`.
//!
//! # Target side, step by step
//!
//! After the login has agreed on `AuthMethod=CHAP` (security negotiation
//! stage), for each Login Request that carries CHAP keys:
//!
//! | initiator sends            | `step` returns                                      | target does                            |
//! |----------------------------|-----------------------------------------------------|----------------------------------------|
//! | `CHAP_A=<A1,A2,..>`        | `Ok(Step::Continue(keys))`: CHAP_A, CHAP_I, CHAP_C  | send the keys, T=0, stay in the stage  |
//! | `CHAP_N`, `CHAP_R` (+ `CHAP_I`, `CHAP_C` for mutual) | `Ok(Step::Done { keys, peer })`: keys empty, or CHAP_N, CHAP_R for mutual | authorize `peer`, send the keys, allow the stage transition |
//! | anything wrong             | `Err(e)`                                            | Login Response with `e.login_status()`, close |
//!
//! Keys that are not CHAP keys are ignored by the state machine (see
//! [`is_chap_key`]); the login answers them itself. Never log CHAP_C or CHAP_R
//! values ([`is_sensitive_key`]).
//!
//! # Example
//!
//! A target and an initiator doing mutual CHAP with SHA-256:
//!
//! ```
//! use chap::{
//!     Algorithm, AlgorithmList, Authenticator, AuthenticatorConfig, ChapError, Credential,
//!     CredentialSet, ErrorKind, Responder, ResponderConfig, Step,
//! };
//!
//! // Target: credentials for this target as seen by this initiator (normally
//! // `SecretsStore::target(target_iqn, initiator_iqn)`).
//! let creds = CredentialSet::new()
//!     .with_user(Credential::new("alice", "alice-secret-16b"))
//!     .with_mutual(Credential::new("disk0", "disk0-secret-16b"));
//! let config = AuthenticatorConfig {
//!     allowed: AlgorithmList::new([Algorithm::Sha256, Algorithm::Sha3_256])?,
//!     challenge_len: None,
//! };
//! let mut target = Authenticator::new(config, creds);
//!
//! // Initiator.
//! let mut initiator = Responder::new(ResponderConfig {
//!     algorithms: AlgorithmList::new([Algorithm::Md5, Algorithm::Sha256])?,
//!     credential: Credential::new("alice", "alice-secret-16b"),
//!     mutual: Some(Credential::new("disk0", "disk0-secret-16b")),
//! })?;
//!
//! // Login Request 1: CHAP_A=5,7. The target picks 7 (MD5 is not allowed).
//! let offer = initiator.start()?;
//! let Step::Continue(challenge) = target.step(&offer)? else { unreachable!() };
//! assert_eq!(challenge.get("CHAP_A"), Some("7"));
//!
//! // Login Request 2: CHAP_N, CHAP_R and the initiator's own CHAP_I, CHAP_C.
//! let Step::Continue(answer) = initiator.step(&challenge)? else { unreachable!() };
//! let Step::Done { keys: mutual_answer, peer } = target.step(&answer)? else { unreachable!() };
//! assert_eq!(peer.as_deref(), Some("alice"));
//!
//! // The initiator checks the target's CHAP_N, CHAP_R.
//! let Step::Done { peer: target_name, .. } = initiator.step(&mutual_answer)? else { unreachable!() };
//! assert_eq!(target_name.as_deref(), Some("disk0"));
//!
//! // A wrong secret is an authentication failure (status 0x0201).
//! let mut target = Authenticator::new(
//!     AuthenticatorConfig::default(),
//!     CredentialSet::new().with_user(Credential::new("alice", "alice-secret-16b")),
//! );
//! let mut intruder = Responder::new(ResponderConfig {
//!     algorithms: AlgorithmList::default(),
//!     credential: Credential::new("alice", "a-guessed-secret"),
//!     mutual: None,
//! })?;
//! let Step::Continue(challenge) = target.step(&intruder.start()?)? else { unreachable!() };
//! let Step::Done { keys, .. } = intruder.step(&challenge)? else { unreachable!() };
//! let err = target.step(&keys).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Authentication);
//! assert_eq!(err.login_status(), (0x02, 0x01));
//! # Ok::<(), ChapError>(())
//! ```
//!
//! The login passes keys as any iterator of string pairs, for example a
//! `&[(String, String)]` or `&[(&str, &str)]` from its text decoder.
//!
//! # Wiring it into the target's login
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::{Duration, Instant};
//! use chap::{
//!     Admission, Authenticator, AuthenticatorConfig, BackoffConfig, ErrorKind, LoginBackoff, SecretsStore,
//!     Step,
//! };
//!
//! // At startup (and on reload): the secrets file, normally
//! // `SecretsStore::load(path, strict)`, which checks the file mode too.
//! let store = SecretsStore::from_toml_str(r#"
//!     [target."iqn.2026-11.org.opie:disk0"]
//!     [[target."iqn.2026-11.org.opie:disk0".chap]]
//!     user = "alice"
//!     secret = "alice-secret-16b"
//! "#)?;
//! let mut backoff = LoginBackoff::new(BackoffConfig::default()); // shared by all connections
//!
//! // A connection from `peer` sends its first Login Request.
//! let peer: IpAddr = "192.0.2.10".parse().unwrap();
//! let now = Instant::now();
//! let wait: Duration = match backoff.admit(peer, now) {
//!     Admission::Proceed(wait) => wait, // sleep this long, then go on
//!     Admission::Retry(_) => unreachable!("too many logins from this source at once: wait and ask again"),
//! };
//! # let _ = wait;
//!
//! // InitiatorName and TargetName are known; AuthMethod=CHAP was agreed.
//! let creds = store
//!     .target("iqn.2026-11.org.opie:disk0", "iqn.1994-05.com.redhat:alice")
//!     .expect("target has CHAP credentials"); // else: no user can log in
//! let mut auth = Authenticator::new(AuthenticatorConfig::default(), creds);
//!
//! // For each Login Request with CHAP keys (here a bad one):
//! match auth.step([("CHAP_A", "5"), ("CHAP_N", "alice")]) {
//!     Ok(Step::Continue(keys)) => { /* send keys, T=0 */ }
//!     Ok(Step::Done { keys, peer: user }) => {
//!         // Authenticated as `user`: check the ACL, send `keys`, may transit.
//!         backoff.record_success(peer, Instant::now());
//!     }
//!     Err(e) => {
//!         let (class, detail) = e.login_status();
//!         if e.kind() != ErrorKind::Local {
//!             // The peer's fault: hold the failure response back by this long.
//!             let _hold: Duration = backoff.record_failure(peer, Instant::now());
//!         }
//!         // Send a Login Response with (class, detail), then close.
//! #       assert_eq!((class, detail), (0x02, 0x00));
//!     }
//! }
//! # Ok::<(), chap::ChapError>(())
//! ```
//!
//! Protocol errors count as failures too, so probing with malformed keys is
//! slowed down like guessing.

mod algorithm;
mod authenticator;
mod backoff;
mod error;
mod keys;
mod responder;
mod secret;
mod store;

pub use algorithm::{Algorithm, AlgorithmList};
pub use authenticator::{Authenticator, AuthenticatorConfig};
pub use backoff::{Admission, BackoffConfig, LoginBackoff, SourceKey};
pub use error::{ChapError, ErrorKind, Result};
pub use keys::{
    decode_binary, decode_number, encode_hex, has_chap_keys, is_chap_key, is_sensitive_key,
    KeyValues, TextPair, CHAP_A, CHAP_C, CHAP_I, CHAP_N, CHAP_R, MAX_CHALLENGE_LEN, MAX_NAME_LEN,
    MIN_CHALLENGE_LEN,
};
pub use responder::{Responder, ResponderConfig};
pub use secret::{Credential, CredentialSet, Credentials, Secret};
pub use store::{SecretsStore, MIN_RECOMMENDED_SECRET_LEN};

/// What a `step` of [`Authenticator`] or [`Responder`] asks the login to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `keys` and wait for the peer's next keys.
    Continue(KeyValues),
    /// This side is finished: send `keys` (may be empty).
    Done {
        /// Keys to send (the target's mutual answer, or the initiator's
        /// one-way CHAP_N/CHAP_R).
        keys: KeyValues,
        /// The authenticated peer name: on the target the initiator's CHAP_N;
        /// on the initiator the target's CHAP_N after mutual CHAP, else `None`.
        peer: Option<String>,
    },
}

impl Step {
    /// The keys to send, whichever the variant.
    pub fn keys(&self) -> &KeyValues {
        match self {
            Step::Continue(k) | Step::Done { keys: k, .. } => k,
        }
    }
}
