//! Known-answer tests against vectors computed by Python's hashlib
//! (`tests/kat.py`), run at test time so nothing here is computed by our code.

mod common;

use std::process::Command;

use chap::{
    decode_binary, Algorithm, AlgorithmList, Authenticator, AuthenticatorConfig, Credential,
    CredentialSet, Secret, Step, CHAP_R,
};
use common::{expect_continue, expect_done, kv};
use rand::{rngs::StdRng, SeedableRng};

struct Vector {
    alg: Algorithm,
    id: u8,
    secret: Vec<u8>,
    challenge: String,
    response: String,
}

fn vectors() -> Vec<Vector> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kat.py");
    let out = Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 must be installed to run the known-answer tests");
    assert!(
        out.status.success(),
        "kat.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kat.py prints ASCII");
    let v: Vec<Vector> = text
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "bad line {line:?}");
            Vector {
                alg: Algorithm::from_code(f[0].parse().expect("code")).expect("known code"),
                id: f[1].parse().expect("id"),
                secret: if f[2] == "-" {
                    Vec::new()
                } else {
                    hex::decode(f[2]).expect("hex secret")
                },
                challenge: f[3].to_owned(),
                response: f[4].to_owned(),
            }
        })
        .collect();
    for alg in Algorithm::ALL {
        assert!(
            v.iter().filter(|x| x.alg == alg).count() >= 16,
            "too few vectors for {alg}"
        );
    }
    v
}

#[test]
fn response_matches_hashlib_for_every_algorithm_and_encoding() {
    for v in vectors() {
        let challenge = decode_binary("CHAP_C", &v.challenge).expect("decodes");
        let got = v
            .alg
            .response(v.id, &Secret::new(v.secret.clone()), &challenge);
        assert_eq!(got.len(), v.alg.digest_len());
        assert_eq!(
            hex::encode(got),
            v.response,
            "{} id {} challenge {}",
            v.alg,
            v.id,
            v.challenge
        );
    }
}

#[test]
fn responder_answers_python_challenges() {
    for v in vectors().into_iter().filter(|v| !v.secret.is_empty()) {
        let mut r = chap::Responder::new(chap::ResponderConfig {
            algorithms: AlgorithmList::default(),
            credential: Credential::new("u", Secret::new(v.secret.clone())),
            mutual: None,
        })
        .expect("config");
        r.start().expect("start");
        let code = v.alg.code().to_string();
        let id = v.id.to_string();
        let keys = kv(&[("CHAP_A", &code), ("CHAP_I", &id), ("CHAP_C", &v.challenge)]);
        let (out, _) = expect_done(r.step(&keys));
        assert_eq!(out.get(CHAP_R), Some(format!("0x{}", v.response).as_str()));
    }
}

#[test]
fn authenticator_mutual_answer_matches_python() {
    for v in vectors().into_iter().filter(|v| !v.secret.is_empty()) {
        let initiator_secret = Secret::from("initiator-secret-not-in-kat");
        let creds = CredentialSet::new()
            .with_user(Credential::new("u", initiator_secret.clone()))
            .with_mutual(Credential::new("t", Secret::new(v.secret.clone())));
        let mut a = Authenticator::with_rng(
            AuthenticatorConfig {
                allowed: AlgorithmList::new([v.alg]).expect("list"),
                challenge_len: None,
            },
            creds,
            StdRng::seed_from_u64(u64::from(v.id)),
        );
        let code = v.alg.code().to_string();
        let offer = expect_continue(a.step(kv(&[("CHAP_A", &code)])));
        let id: u8 = offer.get("CHAP_I").expect("I").parse().expect("u8");
        let ours = decode_binary("CHAP_C", offer.get("CHAP_C").expect("C")).expect("C");
        let r = chap::encode_hex(&v.alg.response(id, &initiator_secret, &ours));
        let their_id = v.id.to_string();
        let step = a.step(kv(&[
            ("CHAP_N", "u"),
            ("CHAP_R", &r),
            ("CHAP_I", &their_id),
            ("CHAP_C", &v.challenge),
        ]));
        let Ok(Step::Done { keys, peer }) = step else {
            panic!("mutual exchange failed: {step:?}");
        };
        assert_eq!(peer.as_deref(), Some("u"));
        assert_eq!(keys.get("CHAP_N"), Some("t"));
        assert_eq!(keys.get(CHAP_R), Some(format!("0x{}", v.response).as_str()));
    }
}
