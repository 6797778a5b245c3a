//! The CHAP state machines driven against each other and against hand-made
//! (hostile) peers.

mod common;

use chap::{
    decode_binary, encode_hex, Algorithm, AlgorithmList, Authenticator, AuthenticatorConfig,
    ChapError, Credential, CredentialSet, ErrorKind, Responder, ResponderConfig, Secret, Step,
};
use common::*;

fn all() -> AlgorithmList {
    AlgorithmList::default()
}

fn only(alg: Algorithm) -> AlgorithmList {
    AlgorithmList::new([alg]).expect("non-empty")
}

/// Runs step 1 against `a` with `CHAP_A=list`; returns (alg, id, challenge).
fn challenge_of(a: &mut Authenticator<CredentialSet>, list: &str) -> (Algorithm, u8, Vec<u8>) {
    let keys = expect_continue(a.step(kv(&[("CHAP_A", list)])));
    let alg =
        Algorithm::from_code(keys.get("CHAP_A").expect("A").parse().expect("num")).expect("alg");
    let id = keys.get("CHAP_I").expect("I").parse().expect("u8");
    let c = decode_binary("CHAP_C", keys.get("CHAP_C").expect("C")).expect("C");
    assert!(
        keys.get("CHAP_C").expect("C").starts_with("0x"),
        "we always send hex"
    );
    (alg, id, c)
}

/// A correct one-way step-2 answer to `a`.
fn answer(alg: Algorithm, id: u8, c: &[u8], user: &str, secret: &str) -> Pairs {
    kv(&[
        ("CHAP_N", user),
        (
            "CHAP_R",
            &encode_hex(&alg.response(id, &Secret::from(secret), c)),
        ),
    ])
}

#[test]
fn one_way_succeeds_with_each_algorithm() {
    for alg in Algorithm::ALL {
        let mut t = authenticator(only(alg), false);
        let mut i = responder(only(alg), SECRET, None);
        let c = expect_continue(t.step(i.start().expect("start")));
        assert_eq!(t.algorithm(), Some(alg));
        let challenge = decode_binary("CHAP_C", c.get("CHAP_C").expect("C")).expect("C");
        assert!(
            challenge.len() >= alg.digest_len(),
            "challenge as long as the digest"
        );
        let (answer, peer) = expect_done(i.step(&c));
        assert_eq!(peer, None);
        let (keys, peer) = expect_done(t.step(&answer));
        assert!(keys.is_empty(), "nothing to send for one-way CHAP");
        assert_eq!(peer.as_deref(), Some(USER));
        assert_eq!(t.authenticated_user(), Some(USER));
    }
}

#[test]
fn mutual_succeeds_with_each_algorithm() {
    for alg in Algorithm::ALL {
        let mut t = authenticator(only(alg), true);
        let mut i = responder(all(), SECRET, Some(TARGET_SECRET));
        let c = expect_continue(t.step(i.start().expect("start")));
        let a = expect_continue(i.step(&c));
        let (m, peer) = expect_done(t.step(&a));
        assert_eq!(peer.as_deref(), Some(USER));
        assert_eq!(m.get("CHAP_N"), Some(TARGET_USER));
        let (rest, target) = expect_done(i.step(&m));
        assert!(rest.is_empty());
        assert_eq!(target.as_deref(), Some(TARGET_USER));
    }
}

#[test]
fn target_picks_first_allowed_of_initiator_list() {
    let allowed = AlgorithmList::new([Algorithm::Md5, Algorithm::Sha3_256]).expect("list");
    let mut t = authenticator(allowed.clone(), false);
    assert_eq!(challenge_of(&mut t, "7,8,5").0, Algorithm::Sha3_256);
    let mut t = authenticator(allowed.clone(), false);
    assert_eq!(challenge_of(&mut t, "5,8").0, Algorithm::Md5);
    let mut t = authenticator(allowed, false);
    assert_eq!(
        challenge_of(&mut t, "99,0x5,8").0,
        Algorithm::Md5,
        "unknown values skipped, hex numbers read"
    );
}

#[test]
fn no_acceptable_algorithm_fails() {
    for list in ["", "1", "6", "99,100", "4294967296"] {
        let mut t = authenticator(AlgorithmList::new([Algorithm::Sha256]).expect("l"), false);
        let err = t.step(kv(&[("CHAP_A", list)])).expect_err(list);
        assert!(
            matches!(err, ChapError::NoAcceptableAlgorithm),
            "{list}: {err}"
        );
        assert_eq!(err.login_status(), (0x02, 0x01));
    }
}

#[test]
fn malformed_algorithm_list_is_a_protocol_error() {
    for list in ["5,", "five", "5;7", "-5", "+5", " 5"] {
        let mut t = authenticator(all(), false);
        let err = t.step(kv(&[("CHAP_A", list)])).expect_err(list);
        assert_eq!(err.kind(), ErrorKind::Protocol, "{list}: {err}");
    }
}

#[test]
fn identifier_and_challenge_are_fresh_per_exchange() {
    let mut seen = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..64 {
        let mut t = authenticator(all(), false);
        let (_, id, c) = challenge_of(&mut t, "5");
        assert!(seen.insert(c), "challenge repeated");
        ids.insert(id);
    }
    assert!(ids.len() > 16, "CHAP_I looks constant: {ids:?}");
}

#[test]
fn configured_challenge_length_is_honoured_but_never_below_digest() {
    for (want, alg, expect) in [
        (Some(64), Algorithm::Md5, 64),
        (Some(4), Algorithm::Sha256, 32),
        (Some(5000), Algorithm::Md5, chap::MAX_CHALLENGE_LEN),
    ] {
        let mut t = Authenticator::new(
            AuthenticatorConfig {
                allowed: all(),
                challenge_len: want,
            },
            target_creds(false),
        );
        let code = alg.code().to_string();
        assert_eq!(challenge_of(&mut t, &code).2.len(), expect);
    }
}

#[test]
fn response_in_base64_and_uppercase_prefixes_is_accepted() {
    use base64::Engine;
    for (prefix, b64) in [("0b", true), ("0B", true), ("0X", false)] {
        let mut t = authenticator(all(), false);
        let (alg, id, c) = challenge_of(&mut t, "7");
        let r = alg.response(id, &Secret::from(SECRET), &c);
        let enc = if b64 {
            base64::engine::general_purpose::STANDARD.encode(&r)
        } else {
            hex::encode_upper(&r)
        };
        let v = format!("{prefix}{enc}");
        let (_, peer) = expect_done(t.step(kv(&[("CHAP_N", USER), ("CHAP_R", &v)])));
        assert_eq!(peer.as_deref(), Some(USER));
    }
}

#[test]
fn wrong_secret_fails() {
    let mut t = authenticator(all(), false);
    let mut i = responder(all(), "not-the-secret!!", None);
    let c = expect_continue(t.step(i.start().expect("start")));
    let (a, _) = expect_done(i.step(&c));
    let err = t.step(&a).expect_err("wrong secret");
    assert!(
        matches!(err, ChapError::BadResponse(ref u) if u == USER),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Authentication);
    assert_eq!(t.authenticated_user(), None);
}

#[test]
fn wrong_user_fails_like_a_wrong_secret() {
    let mut t = authenticator(all(), false);
    let (alg, id, c) = challenge_of(&mut t, "5");
    let err = t
        .step(answer(alg, id, &c, "mallory", SECRET))
        .expect_err("unknown user");
    assert!(matches!(err, ChapError::UnknownUser(_)), "{err}");
    assert_eq!(
        err.login_status(),
        ChapError::BadResponse(String::new()).login_status()
    );
}

#[test]
fn response_to_wrong_identifier_or_challenge_fails() {
    let mut t = authenticator(all(), false);
    let (alg, id, c) = challenge_of(&mut t, "6");
    let err = t
        .step(answer(alg, id.wrapping_add(1), &c, USER, SECRET))
        .expect_err("id");
    assert!(matches!(err, ChapError::BadResponse(_)));
    let mut t = authenticator(all(), false);
    let (alg, id, mut c) = challenge_of(&mut t, "6");
    c[0] ^= 1;
    let err = t
        .step(answer(alg, id, &c, USER, SECRET))
        .expect_err("challenge");
    assert!(matches!(err, ChapError::BadResponse(_)));
}

#[test]
fn missing_keys_fail_with_missing_parameter() {
    // Step 1 without CHAP_A.
    let mut t = authenticator(all(), false);
    let err = t.step(kv(&[("AuthMethod", "CHAP")])).expect_err("no A");
    assert!(matches!(err, ChapError::MissingKey("CHAP_A")));
    assert_eq!(err.login_status(), (0x02, 0x07));

    // Step 2 with one key missing at a time, including half a mutual pair.
    let cases: [(&[&str], &str); 4] = [
        (&["CHAP_N"], "CHAP_N"),
        (&["CHAP_R"], "CHAP_R"),
        (&["CHAP_C"], "CHAP_C"),
        (&["CHAP_I"], "CHAP_I"),
    ];
    for (drop, missing) in cases {
        let mut t = authenticator(all(), true);
        let (alg, id, c) = challenge_of(&mut t, "7");
        let mut a = answer(alg, id, &c, USER, SECRET);
        set(&mut a, "CHAP_I", "3");
        set(&mut a, "CHAP_C", "0x0102030405060708");
        for k in drop {
            remove(&mut a, k);
        }
        let err = t.step(&a).expect_err(missing);
        assert!(
            matches!(err, ChapError::MissingKey(k) if k == missing),
            "{missing}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }
}

#[test]
fn duplicate_and_unexpected_keys_fail() {
    let mut t = authenticator(all(), false);
    let err = t
        .step(kv(&[("CHAP_A", "5"), ("CHAP_A", "7")]))
        .expect_err("dup");
    assert!(matches!(err, ChapError::DuplicateKey("CHAP_A")));

    let mut t = authenticator(all(), false);
    let err = t
        .step(kv(&[("CHAP_A", "5"), ("CHAP_N", USER)]))
        .expect_err("early N");
    assert!(matches!(err, ChapError::UnexpectedKey("CHAP_N")));

    let mut t = authenticator(all(), false);
    let (alg, id, c) = challenge_of(&mut t, "5");
    let mut a = answer(alg, id, &c, USER, SECRET);
    a.push(("CHAP_A".into(), "5".into()));
    assert!(matches!(
        t.step(&a),
        Err(ChapError::UnexpectedKey("CHAP_A"))
    ));

    let mut t = authenticator(all(), false);
    let (alg, id, c) = challenge_of(&mut t, "5");
    let mut a = answer(alg, id, &c, USER, SECRET);
    a.push(("CHAP_N".into(), USER.into()));
    assert!(matches!(t.step(&a), Err(ChapError::DuplicateKey("CHAP_N"))));
}

#[test]
fn non_chap_keys_are_ignored() {
    let mut t = authenticator(all(), false);
    let mut step1 = kv(&[("InitiatorName", "iqn.x"), ("CHAP_A", "5")]);
    step1.push(("X-opie-foo".into(), "bar".into()));
    let c = expect_continue(t.step(&step1));
    let alg = Algorithm::Md5;
    let id = c.get("CHAP_I").expect("I").parse().expect("u8");
    let ch = decode_binary("CHAP_C", c.get("CHAP_C").expect("C")).expect("C");
    let mut a = answer(alg, id, &ch, USER, SECRET);
    a.insert(0, ("HeaderDigest".into(), "None".into()));
    expect_done(t.step(&a));
}

#[test]
fn malformed_response_values_fail_as_protocol_errors() {
    for bad in [
        "", "0x", "0b", "deadbeef", "0xzz", "0b!!!!", "0x00", "0b====", "0xABCD",
    ] {
        let mut t = authenticator(all(), false);
        challenge_of(&mut t, "5");
        let err = t
            .step(kv(&[("CHAP_N", USER), ("CHAP_R", bad)]))
            .expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::Protocol, "{bad:?}: {err}");
    }
    // Over-long challenge in a mutual answer.
    let mut t = authenticator(all(), true);
    let (alg, id, c) = challenge_of(&mut t, "5");
    let mut a = answer(alg, id, &c, USER, SECRET);
    set(&mut a, "CHAP_I", "1");
    set(
        &mut a,
        "CHAP_C",
        &encode_hex(&vec![7u8; chap::MAX_CHALLENGE_LEN + 1]),
    );
    assert_eq!(t.step(&a).expect_err("long").kind(), ErrorKind::Protocol);
    // Identifier out of range.
    let mut t = authenticator(all(), true);
    let (alg, id, c) = challenge_of(&mut t, "5");
    let mut a = answer(alg, id, &c, USER, SECRET);
    set(&mut a, "CHAP_I", "256");
    set(&mut a, "CHAP_C", "0x0102");
    assert_eq!(t.step(&a).expect_err("I").kind(), ErrorKind::Protocol);
}

#[test]
fn reflected_challenge_is_refused() {
    for encode in [true, false] {
        let mut t = authenticator(all(), true);
        let (alg, id, c) = challenge_of(&mut t, "7");
        let mut a = answer(alg, id, &c, USER, SECRET);
        let reflected = if encode {
            encode_hex(&c)
        } else {
            use base64::Engine;
            format!("0b{}", base64::engine::general_purpose::STANDARD.encode(&c))
        };
        set(&mut a, "CHAP_I", &id.to_string());
        set(&mut a, "CHAP_C", &reflected);
        let err = t.step(&a).expect_err("reflection");
        assert!(matches!(err, ChapError::Reflection), "{err}");
        assert_eq!(err.kind(), ErrorKind::Authentication);
    }
}

#[test]
fn same_secret_both_ways_is_refused() {
    let creds = CredentialSet::new()
        .with_user(Credential::new(USER, SECRET))
        .with_mutual(Credential::new(TARGET_USER, SECRET));
    let mut t = Authenticator::new(AuthenticatorConfig::default(), creds);
    let (alg, id, c) = challenge_of(&mut t, "8");
    let mut a = answer(alg, id, &c, USER, SECRET);
    set(&mut a, "CHAP_I", "9");
    set(&mut a, "CHAP_C", "0x00112233445566778899aabbccddeeff");
    let err = t.step(&a).expect_err("same secret");
    assert!(matches!(err, ChapError::SameSecretBothWays), "{err}");

    // The initiator refuses such a configuration up front.
    let err = Responder::new(ResponderConfig {
        algorithms: all(),
        credential: Credential::new(USER, SECRET),
        mutual: Some(Credential::new(TARGET_USER, SECRET)),
    })
    .expect_err("same secret");
    assert!(matches!(err, ChapError::SameSecretBothWays));
}

#[test]
fn mutual_request_without_target_credential_fails() {
    let mut t = authenticator(all(), false);
    let mut i = responder(all(), SECRET, Some(TARGET_SECRET));
    let c = expect_continue(t.step(i.start().expect("start")));
    let a = expect_continue(i.step(&c));
    assert!(matches!(t.step(&a), Err(ChapError::MutualNotConfigured)));
}

#[test]
fn initiator_refuses_target_with_wrong_mutual_secret_or_name() {
    // Wrong secret: the target is configured with a different mutual secret.
    let mut t = authenticator(all(), true);
    let mut i = responder(all(), SECRET, Some("the-expected-target-secret"));
    let c = expect_continue(t.step(i.start().expect("start")));
    let a = expect_continue(i.step(&c));
    let (m, _) = expect_done(t.step(&a));
    let err = i.step(&m).expect_err("wrong target secret");
    assert!(matches!(err, ChapError::TargetNotAuthenticated(_)), "{err}");

    // Right secret, wrong name.
    let mut t = authenticator(all(), true);
    let mut i = responder(all(), SECRET, Some(TARGET_SECRET));
    let c = expect_continue(t.step(i.start().expect("start")));
    let a = expect_continue(i.step(&c));
    let (m, _) = expect_done(t.step(&a));
    let mut m = pairs(&m);
    set(&mut m, "CHAP_N", "impostor");
    assert!(matches!(
        i.step(&m),
        Err(ChapError::TargetNotAuthenticated(_))
    ));

    // No answer at all.
    let mut t = authenticator(all(), true);
    let mut i = responder(all(), SECRET, Some(TARGET_SECRET));
    let c = expect_continue(t.step(i.start().expect("start")));
    expect_continue(i.step(&c));
    assert!(matches!(
        i.step(kv(&[])),
        Err(ChapError::MissingKey("CHAP_N"))
    ));
}

#[test]
fn initiator_refuses_algorithm_it_did_not_offer_or_reject() {
    let mut i = responder(only(Algorithm::Sha256), SECRET, None);
    assert_eq!(i.start().expect("start").get("CHAP_A"), Some("7"));
    let err = i
        .step(kv(&[
            ("CHAP_A", "5"),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x0102"),
        ]))
        .expect_err("not offered");
    assert!(matches!(err, ChapError::AlgorithmNotOffered(5)));

    let mut i = responder(all(), SECRET, None);
    assert_eq!(i.start().expect("start").get("CHAP_A"), Some("8,7,6,5"));
    assert!(matches!(
        i.step(kv(&[("CHAP_A", "Reject")])),
        Err(ChapError::NoAcceptableAlgorithm)
    ));

    let mut i = responder(all(), SECRET, None);
    i.start().expect("start");
    let err = i
        .step(kv(&[
            ("CHAP_A", "5,7"),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x0102"),
        ]))
        .expect_err("two algorithms");
    assert_eq!(err.kind(), ErrorKind::Protocol);
}

#[test]
fn initiator_mutual_challenge_differs_from_target_challenge() {
    for _ in 0..32 {
        let mut t = authenticator(only(Algorithm::Md5), true);
        let mut i = responder(all(), SECRET, Some(TARGET_SECRET));
        let c = expect_continue(t.step(i.start().expect("start")));
        let a = expect_continue(i.step(&c));
        assert_ne!(a.get("CHAP_C"), c.get("CHAP_C"));
        assert_eq!(
            decode_binary("CHAP_C", a.get("CHAP_C").expect("C"))
                .expect("C")
                .len(),
            16
        );
    }
}

#[test]
fn exchange_is_dead_after_completion_or_failure() {
    let mut t = authenticator(all(), false);
    let (alg, id, c) = challenge_of(&mut t, "5");
    let good = answer(alg, id, &c, USER, SECRET);
    expect_done(t.step(&good));
    assert!(matches!(t.step(&good), Err(ChapError::Finished(_))));

    // A failed exchange cannot be retried with the right answer.
    let mut t = authenticator(all(), false);
    let (alg, id, c) = challenge_of(&mut t, "5");
    assert!(t
        .step(answer(alg, id, &c, USER, "wrong-secret-123"))
        .is_err());
    assert!(matches!(
        t.step(answer(alg, id, &c, USER, SECRET)),
        Err(ChapError::Finished(_))
    ));

    // A second CHAP_A restarts nothing.
    let mut t = authenticator(all(), false);
    challenge_of(&mut t, "5");
    assert!(t.step(kv(&[("CHAP_A", "5")])).is_err());
}

#[test]
fn responder_rejects_empty_secrets_and_step_before_start() {
    assert!(Responder::new(ResponderConfig {
        algorithms: all(),
        credential: Credential::new(USER, ""),
        mutual: None,
    })
    .is_err());
    let mut i = responder(all(), SECRET, None);
    assert!(i.step(kv(&[("CHAP_A", "5")])).is_err());
    assert!(i.start().is_ok(), "still startable after a premature step");
}

#[test]
fn step_keys_accessor_and_text_form() {
    let mut t = authenticator(all(), false);
    let step = t.step(kv(&[("CHAP_A", "5")])).expect("step");
    let Step::Continue(ref keys) = step else {
        panic!("continue")
    };
    assert_eq!(step.keys(), keys);
    let text = keys.to_text();
    assert!(text.starts_with(b"CHAP_A=5\0CHAP_I="));
    assert_eq!(text.iter().filter(|&&b| b == 0).count(), 3);
    assert!(chap::has_chap_keys(keys));
    assert!(!chap::has_chap_keys(kv(&[("AuthMethod", "CHAP")])));
}

#[test]
fn empty_configured_secret_never_authenticates() {
    let creds = CredentialSet::new().with_user(Credential::new(USER, ""));
    let mut t = Authenticator::new(AuthenticatorConfig::default(), creds);
    let (alg, id, c) = challenge_of(&mut t, "5");
    let err = t
        .step(answer(alg, id, &c, USER, ""))
        .expect_err("empty secret");
    assert_eq!(err.kind(), ErrorKind::Local);
    assert_eq!(err.login_status(), (0x03, 0x00));
}
