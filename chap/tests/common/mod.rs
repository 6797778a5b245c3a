//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod probe;

use chap::{
    AlgorithmList, Authenticator, AuthenticatorConfig, Credential, CredentialSet, KeyValues,
    Responder, ResponderConfig, Result, Step,
};

pub const USER: &str = "iqn.1994-05.com.redhat:alice";
pub const SECRET: &str = "alice-secret-16b";
pub const TARGET_USER: &str = "disk0";
pub const TARGET_SECRET: &str = "disk0-secret-16b";

/// Owned key/value pairs, as a login text decoder would hand them over.
pub type Pairs = Vec<(String, String)>;

pub fn pairs(keys: &KeyValues) -> Pairs {
    keys.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub fn kv(list: &[(&str, &str)]) -> Pairs {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Replace (or add) `key` in `pairs`.
pub fn set(pairs: &mut Pairs, key: &str, value: &str) {
    pairs.retain(|(k, _)| k != key);
    pairs.push((key.to_owned(), value.to_owned()));
}

pub fn remove(pairs: &mut Pairs, key: &str) {
    pairs.retain(|(k, _)| k != key);
}

pub fn target_creds(mutual: bool) -> CredentialSet {
    let set = CredentialSet::new().with_user(Credential::new(USER, SECRET));
    if mutual {
        set.with_mutual(Credential::new(TARGET_USER, TARGET_SECRET))
    } else {
        set
    }
}

pub fn authenticator(allowed: AlgorithmList, mutual: bool) -> Authenticator<CredentialSet> {
    Authenticator::new(
        AuthenticatorConfig {
            allowed,
            challenge_len: None,
        },
        target_creds(mutual),
    )
}

pub fn responder(algorithms: AlgorithmList, secret: &str, mutual: Option<&str>) -> Responder {
    Responder::new(ResponderConfig {
        algorithms,
        credential: Credential::new(USER, secret),
        mutual: mutual.map(|s| Credential::new(TARGET_USER, s)),
    })
    .expect("valid responder config")
}

pub fn expect_continue(step: Result<Step>) -> KeyValues {
    match step {
        Ok(Step::Continue(k)) => k,
        other => panic!("expected Continue, got {other:?}"),
    }
}

pub fn expect_done(step: Result<Step>) -> (KeyValues, Option<String>) {
    match step {
        Ok(Step::Done { keys, peer }) => (keys, peer),
        other => panic!("expected Done, got {other:?}"),
    }
}
