//! The initiator's login state machine, against our target's and against
//! hand-made responses of a faulty target.

mod common;

use chap::{AlgorithmList, Credential, ResponderConfig};
use common::*;
use iscsi_proto::digest::Digest;
use iscsi_proto::login::{
    Auth, InitiatorLogin, LoginConfig, LoginError, LoginPdu, LoginProgress, SessionType,
};
use iscsi_proto::negotiate::Limits;
use iscsi_proto::pdu::{LoginResponse, Sns, Stage};
use iscsi_proto::text::TextList;

fn cfg(auth: Auth) -> LoginConfig {
    LoginConfig {
        auth,
        ..LoginConfig::new(INITIATOR, Some(TARGET))
    }
}

fn chap(secret: &str, target_secret: Option<&str>) -> Auth {
    Auth::Chap(ResponderConfig {
        algorithms: AlgorithmList::default(),
        credential: Credential::new("alice", secret),
        mutual: target_secret.map(|s| Credential::new("disk0", s)),
    })
}

#[test]
fn a_login_without_authentication_goes_through_both_stages() {
    let (l, est, requests) = login(cfg(Auth::None), Limits::default(), &Ctx { creds: None });
    let (l, est) = (l.unwrap(), est.unwrap());
    assert_eq!(requests, 2);
    assert_eq!((l.tsih, est.tsih), (0x1234, 0x1234));
    assert_eq!(l.session_type, SessionType::Normal);
    assert_eq!(l.target_alias.as_deref(), Some("disk"));
    assert_eq!(l.tpgt, Some(1));
    assert_eq!(l.cmd_sn, est.exp_cmd_sn);
    assert_eq!(l.exp_stat_sn, est.stat_sn);
    // Both sides hold the same values, and each other's segment limits.
    assert_eq!(l.params.max_burst_length, est.params.max_burst_length);
    assert_eq!(
        l.params.send_data_segment_length,
        est.params.recv_data_segment_length
    );
    assert_eq!(
        l.params.recv_data_segment_length,
        est.params.send_data_segment_length
    );
    assert_eq!(l.params.max_burst_length, 1_048_576);
    assert!(l.params.immediate_data && !l.params.initial_r2t);
}

#[test]
fn the_security_stage_can_be_skipped() {
    let (l, est, requests) = login(cfg(Auth::Skip), Limits::default(), &Ctx { creds: None });
    assert_eq!(requests, 1);
    assert_eq!(l.unwrap().params, {
        let mut p = est.unwrap().params;
        std::mem::swap(
            &mut p.send_data_segment_length,
            &mut p.recv_data_segment_length,
        );
        p
    });
}

#[test]
fn a_discovery_session_offers_no_normal_session_keys() {
    let c = LoginConfig::new(INITIATOR, None);
    let (l, est, _) = login(c, Limits::default(), &Ctx { creds: None });
    let l = l.unwrap();
    assert_eq!(l.session_type, SessionType::Discovery);
    assert_eq!(est.unwrap().session_type, SessionType::Discovery);
    assert_eq!(l.target_keys.get("MaxBurstLength"), None);
    assert!(l.target_keys.get("HeaderDigest").is_some());
}

#[test]
fn digests_as_offered() {
    let mut c = cfg(Auth::None);
    c.limits.header_digests = vec![Digest::Crc32c];
    c.limits.data_digests = vec![Digest::Crc32c, Digest::None];
    let (l, est, _) = login(c, Limits::default(), &Ctx { creds: None });
    let (l, est) = (l.unwrap(), est.unwrap());
    assert_eq!(
        (l.params.header_digest, l.params.data_digest),
        (Digest::Crc32c, Digest::Crc32c)
    );
    assert_eq!(
        (est.params.header_digest, est.params.data_digest),
        (Digest::Crc32c, Digest::Crc32c)
    );
}

#[test]
fn chap_one_way_and_mutual() {
    let ctx = Ctx {
        creds: Some(target_creds()),
    };
    let (l, _, requests) = login(cfg(chap("alice-secret-16b", None)), Limits::default(), &ctx);
    let l = l.unwrap();
    assert_eq!(requests, 4, "AuthMethod, CHAP_A, CHAP_R, operational");
    assert_eq!(l.authenticated_target, None);
    let (l, est, _) = login(
        cfg(chap("alice-secret-16b", Some("disk0-secret-16b"))),
        Limits::default(),
        &ctx,
    );
    let l = l.unwrap();
    assert_eq!(l.authenticated_target.as_deref(), Some("disk0"));
    assert!(est.is_some());
    assert_eq!(l.target_keys.get("AuthMethod"), Some("CHAP"));
    assert!(
        !l.target_keys.0.iter().any(|(k, _)| k.starts_with("CHAP_")),
        "CHAP values kept: {:?}",
        l.target_keys
    );
}

#[test]
fn authentication_failures_are_typed() {
    let ctx = Ctx {
        creds: Some(target_creds()),
    };
    let (e, _, _) = login(cfg(chap("wrong-secret-16b", None)), Limits::default(), &ctx);
    let e = e.unwrap_err();
    assert!(matches!(e, LoginError::AuthenticationFailed), "{e}");
    assert_eq!(e.status(), Some((2, 1)));
    // The target does not know the secret we expect of it.
    let (e, _, _) = login(
        cfg(chap("alice-secret-16b", Some("other-secret-16b"))),
        Limits::default(),
        &ctx,
    );
    assert!(
        matches!(e, Err(LoginError::TargetNotAuthenticated(_))),
        "{e:?}"
    );
    // No authentication offered to a target that wants CHAP.
    let (e, _, _) = login(cfg(Auth::None), Limits::default(), &ctx);
    assert!(matches!(e, Err(LoginError::AuthenticationFailed)), "{e:?}");
    // One secret both ways is refused before anything is sent.
    let (e, _, requests) = login(
        cfg(chap("alice-secret-16b", Some("alice-secret-16b"))),
        Limits::default(),
        &ctx,
    );
    assert!(matches!(e, Err(LoginError::Chap(_))), "{e:?}");
    assert_eq!(requests, 0);
}

#[test]
fn refusals_are_typed() {
    let ctx = Ctx { creds: None };
    let c = LoginConfig::new(INITIATOR, Some("iqn.2026-01.test:nope"));
    let e = login(c, Limits::default(), &ctx).0.unwrap_err();
    assert!(matches!(e, LoginError::TargetNotFound { detail: 3 }), "{e}");
    let c = LoginConfig {
        tsih: 9,
        ..cfg(Auth::Skip)
    };
    let e = login(c, Limits::default(), &ctx).0.unwrap_err();
    assert!(matches!(e, LoginError::Refused { detail: 0x0a }), "{e}");
    assert_eq!(e.status(), Some((2, 0x0a)));
}

#[test]
fn long_text_goes_in_several_requests() {
    let mut c = cfg(Auth::Skip);
    for i in 0..40 {
        c.overrides.push(format!("X-test.k{i}"), "v".repeat(250));
    }
    let (l, est, requests) = login(c, Limits::default(), &Ctx { creds: None });
    assert!(requests >= 2, "{requests}");
    assert!(est.is_some());
    assert_eq!(
        l.unwrap().target_keys.get("X-test.k39"),
        Some("NotUnderstood")
    );
}

// ---- a faulty target, by hand ------------------------------------------------------

/// A response to `req` in its stage, moving to `nsg` if given.
fn answer(req: &LoginPdu, nsg: Option<Stage>, keys: &[(&str, &str)]) -> (LoginResponse, Vec<u8>) {
    let bhs = LoginResponse {
        transit: nsg.is_some(),
        cont: false,
        csg: req.bhs.csg,
        nsg: nsg.unwrap_or(Stage::Security),
        version_max: 0,
        version_active: 0,
        isid: req.bhs.isid,
        tsih: if nsg == Some(Stage::FullFeature) {
            5
        } else {
            0
        },
        itt: req.bhs.itt,
        sns: Sns {
            stat_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
        },
        status_class: 0,
        status_detail: 0,
    };
    let text = TextList(
        keys.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    );
    (bhs, text.encode())
}

fn send(p: Result<LoginProgress, LoginError>) -> LoginPdu {
    match p {
        Ok(LoginProgress::Send(p)) => p,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn a_redirect_names_the_new_address() {
    let mut l = InitiatorLogin::new(cfg(Auth::None)).unwrap();
    let req = l.start();
    let (mut r, d) = answer(&req, None, &[("TargetAddress", "192.0.2.9:3260,1")]);
    (r.status_class, r.status_detail) = (1, 2);
    let e = l.receive(&r, &d).unwrap_err();
    assert!(
        matches!(&e, LoginError::Redirected { address, permanent: true } if address == "192.0.2.9:3260,1"),
        "{e}"
    );
    assert_eq!(e.status(), Some((1, 2)));
}

#[test]
fn a_failure_status_counts_without_the_requests_tags() {
    // tgt answers a wrong CHAP secret with ITT and ISID left out.
    let mut l = InitiatorLogin::new(cfg(Auth::None)).unwrap();
    let req = l.start();
    let (mut r, d) = answer(&req, None, &[]);
    (r.status_class, r.status_detail, r.isid, r.itt) = (2, 1, [0; 6], 0xffff_ffff);
    let e = l.receive(&r, &d).unwrap_err();
    assert!(matches!(e, LoginError::AuthenticationFailed), "{e}");
}

#[test]
fn the_authentication_method_follows_the_list_rule() {
    for (method, refused) in [("Reject", true), ("None", false), ("SRP", false)] {
        let mut l = InitiatorLogin::new(cfg(chap("alice-secret-16b", None))).unwrap();
        let req = l.start();
        let (r, d) = answer(&req, None, &[("AuthMethod", method)]);
        match l.receive(&r, &d) {
            Err(LoginError::AuthMethodRefused(m)) if refused => assert_eq!(m, method),
            Err(LoginError::Protocol(_)) if !refused => {}
            other => panic!("AuthMethod={method}: {other:?}"),
        }
    }
}

#[test]
fn a_target_that_skips_authentication_is_refused() {
    let mut l = InitiatorLogin::new(cfg(chap("alice-secret-16b", None))).unwrap();
    let req = l.start();
    assert!(!req.bhs.transit);
    // AuthMethod=CHAP agreed, and already moving on.
    let (r, d) = answer(&req, Some(Stage::Operational), &[("AuthMethod", "CHAP")]);
    let e = l.receive(&r, &d).unwrap_err();
    assert!(matches!(e, LoginError::Protocol(_)), "{e}");
}

#[test]
fn mutual_chap_without_the_targets_answer_is_refused() {
    let mut l =
        InitiatorLogin::new(cfg(chap("alice-secret-16b", Some("disk0-secret-16b")))).unwrap();
    let req = l.start();
    let (r, d) = answer(&req, None, &[("AuthMethod", "CHAP")]);
    let req = send(l.receive(&r, &d));
    assert!(TextList::parse(&req.data).unwrap().get("CHAP_A").is_some());
    let (r, d) = answer(
        &req,
        None,
        &[
            ("CHAP_A", "5"),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x00112233445566778899aabbccddeeff"),
        ],
    );
    let req = send(l.receive(&r, &d));
    let sent = TextList::parse(&req.data).unwrap();
    assert!(sent.get("CHAP_R").is_some() && sent.get("CHAP_C").is_some());
    assert!(req.bhs.transit && req.bhs.nsg == Stage::Operational);
    // The target moves on without proving itself.
    let (r, d) = answer(&req, Some(Stage::Operational), &[]);
    let e = l.receive(&r, &d).unwrap_err();
    assert!(matches!(e, LoginError::TargetNotAuthenticated(_)), "{e}");
}

#[test]
fn an_inadmissible_answer_fails_the_login() {
    let mut l = InitiatorLogin::new(cfg(Auth::Skip)).unwrap();
    let req = l.start();
    let offered = TextList::parse(&req.data).unwrap();
    assert_eq!(offered.get("MaxBurstLength"), Some("16776192"));
    // A minimum above the offer.
    let (r, d) = answer(
        &req,
        Some(Stage::FullFeature),
        &[("MaxBurstLength", "16777215")],
    );
    let e = l.receive(&r, &d).unwrap_err();
    assert!(matches!(e, LoginError::Negotiation(_)), "{e}");
}

#[test]
fn a_continued_response_is_asked_for_and_joined() {
    let mut l = InitiatorLogin::new(cfg(Auth::Skip)).unwrap();
    let req = l.start();
    let (mut r, _) = answer(&req, None, &[]);
    r.cont = true;
    let req2 = send(l.receive(&r, b"TargetAl"));
    assert!(req2.data.is_empty() && !req2.bhs.transit && !req2.bhs.cont);
    let (r, _) = answer(&req2, Some(Stage::FullFeature), &[]);
    match l.receive(&r, b"ias=joined\0") {
        Ok(LoginProgress::Done(s)) => {
            assert_eq!(s.target_alias.as_deref(), Some("joined"));
            assert_eq!(s.tsih, 5);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn responses_of_another_login_are_refused() {
    let mut l = InitiatorLogin::new(cfg(Auth::None)).unwrap();
    let req = l.start();
    let (mut r, d) = answer(&req, Some(Stage::Operational), &[("AuthMethod", "None")]);
    r.isid[5] ^= 1;
    assert!(matches!(l.receive(&r, &d), Err(LoginError::Protocol(_))));
    // A transition nobody asked for.
    let mut l = InitiatorLogin::new(cfg(Auth::None)).unwrap();
    let req = l.start();
    let (r, d) = answer(&req, Some(Stage::FullFeature), &[("AuthMethod", "None")]);
    assert!(matches!(l.receive(&r, &d), Err(LoginError::Protocol(_))));
}

proptest::proptest! {
    /// Whatever a target answers, the initiator's login goes on, ends or
    /// fails: it never panics, and never loops for ever.
    #[test]
    fn arbitrary_responses_never_panic(
        steps in proptest::collection::vec(
            (proptest::prelude::any::<[u8; 48]>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
            1..12,
        ),
        chap_mutual in proptest::prelude::any::<bool>(),
        keys in proptest::collection::vec(
            proptest::sample::select(vec![
                "AuthMethod=CHAP", "AuthMethod=None", "CHAP_A=5", "CHAP_I=7",
                "CHAP_C=0x00112233445566778899aabbccddeeff", "CHAP_N=disk0",
                "CHAP_R=0x00112233445566778899aabbccddeeff", "MaxBurstLength=512",
                "MaxRecvDataSegmentLength=4096", "DefaultTime2Wait=9", "X-y=z",
                "TargetPortalGroupTag=x", "HeaderDigest=CRC32C",
            ]),
            0..6,
        ),
    ) {
        let auth = if chap_mutual {
            chap("alice-secret-16b", Some("disk0-secret-16b"))
        } else {
            Auth::None
        };
        let mut l = InitiatorLogin::new(cfg(auth)).unwrap();
        let mut req = l.start();
        for (raw, noise) in steps {
            // A header of the right opcode, addressed to this login half
            // of the time, with keys or noise for text.
            let mut raw = raw;
            raw[0] = 0x23;
            let Ok(iscsi_proto::pdu::Bhs::LoginResponse(mut r)) = iscsi_proto::pdu::Bhs::decode(&raw) else {
                continue;
            };
            if noise.first().is_some_and(|b| b & 1 == 0) {
                (r.itt, r.isid, r.status_class, r.status_detail, r.version_active) =
                    (req.bhs.itt, req.bhs.isid, 0, 0, 0);
                r.csg = req.bhs.csg;
            }
            let data = if noise.len() % 2 == 0 {
                keys.iter().flat_map(|k| format!("{k}\0").into_bytes()).collect()
            } else {
                noise
            };
            match l.receive(&r, &data) {
                Ok(LoginProgress::Send(next)) => req = next,
                Ok(LoginProgress::Done(_)) | Err(_) => break,
            }
        }
    }
}
