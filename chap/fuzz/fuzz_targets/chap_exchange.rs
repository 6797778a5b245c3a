//! The CHAP key/value handling and both state machines on arbitrary input.
//!
//! Input layout: one control byte, then steps separated by a 0xFF byte; each
//! step is iSCSI text (`key=value` separated by NUL bytes), decoded lossily as
//! UTF-8 the way a login text decoder might. Control bits: 0x01 target side
//! (else initiator side), 0x02 mutual CHAP configured, 0x04 let an honest peer
//! produce the keys and merge the fuzzed pairs over them (so the
//! verification paths with valid responses are reached), 0xF0 the allow-list.
//! The RNG is seeded, so every input replays exactly.
#![no_main]

use chap::{
    Algorithm, AlgorithmList, Authenticator, AuthenticatorConfig, Credential, CredentialSet,
    Responder, ResponderConfig, Step,
};
use libfuzzer_sys::fuzz_target;
use rand::{rngs::StdRng, SeedableRng};

type Pairs = Vec<(String, String)>;

fn parse_text(step: &[u8]) -> Pairs {
    step.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.into_owned(), String::new()),
            }
        })
        .collect()
}

/// Honest keys with the fuzzed pairs replacing or adding to them.
fn merge(honest: &chap::KeyValues, fuzzed: Pairs) -> Pairs {
    let mut out: Pairs = honest
        .iter()
        .filter(|(k, _)| !fuzzed.iter().any(|(f, _)| f == k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    out.extend(fuzzed);
    out
}

fn allowed(mask: u8) -> AlgorithmList {
    let algs = Algorithm::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, a)| *a);
    AlgorithmList::new(algs).unwrap_or_default()
}

fn target_side(ctrl: u8, steps: Vec<Pairs>) {
    let mutual = ctrl & 0x02 != 0;
    let mut creds = CredentialSet::new().with_user(Credential::new("alice", "alice-secret-16b"));
    if mutual {
        creds = creds.with_mutual(Credential::new("disk0", "disk0-secret-16b"));
    }
    let config = AuthenticatorConfig {
        allowed: allowed(ctrl >> 4),
        challenge_len: None,
    };
    let mut target = Authenticator::with_rng(config, creds, StdRng::seed_from_u64(1));
    let mut honest = Responder::with_rng(
        ResponderConfig {
            algorithms: AlgorithmList::default(),
            credential: Credential::new("alice", "alice-secret-16b"),
            mutual: mutual.then(|| Credential::new("disk0", "disk0-secret-16b")),
        },
        StdRng::seed_from_u64(2),
    )
    .expect("valid config");
    let mut next = honest.start().expect("start");
    for fuzzed in steps {
        let input = if ctrl & 0x04 != 0 { merge(&next, fuzzed) } else { fuzzed };
        match target.step(&input) {
            Ok(step) => {
                let _ = format!("{step:?}");
                match honest.step(step.keys()) {
                    Ok(s) => next = s.keys().clone(),
                    Err(_) => next = Default::default(),
                }
            }
            Err(e) => {
                let _ = (e.kind(), e.login_status(), e.to_string());
            }
        }
    }
}

fn initiator_side(ctrl: u8, steps: Vec<Pairs>) {
    let mutual = ctrl & 0x02 != 0;
    let mut initiator = Responder::with_rng(
        ResponderConfig {
            algorithms: allowed(ctrl >> 4),
            credential: Credential::new("alice", "alice-secret-16b"),
            mutual: mutual.then(|| Credential::new("disk0", "disk0-secret-16b")),
        },
        StdRng::seed_from_u64(3),
    )
    .expect("valid config");
    let mut honest = Authenticator::with_rng(
        AuthenticatorConfig::default(),
        CredentialSet::new()
            .with_user(Credential::new("alice", "alice-secret-16b"))
            .with_mutual(Credential::new("disk0", "disk0-secret-16b")),
        StdRng::seed_from_u64(4),
    );
    let offer = initiator.start().expect("start");
    let mut next = match honest.step(&offer) {
        Ok(s) => s.keys().clone(),
        Err(_) => Default::default(),
    };
    for fuzzed in steps {
        let input = if ctrl & 0x04 != 0 { merge(&next, fuzzed) } else { fuzzed };
        match initiator.step(&input) {
            Ok(Step::Continue(keys)) => {
                next = match honest.step(&keys) {
                    Ok(s) => s.keys().clone(),
                    Err(_) => Default::default(),
                }
            }
            Ok(Step::Done { .. }) => {}
            Err(e) => {
                let _ = (e.kind(), e.login_status(), e.to_string());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctrl, rest)) = data.split_first() else {
        return;
    };
    let steps: Vec<Pairs> = rest.split(|&b| b == 0xFF).take(4).map(parse_text).collect();
    if ctrl & 0x01 != 0 {
        target_side(ctrl, steps);
    } else {
        initiator_side(ctrl, steps);
    }
});
