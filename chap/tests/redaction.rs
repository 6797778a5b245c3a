//! Secrets, challenges and responses never appear in `Debug` output, error
//! messages or log lines, even at trace level.

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chap::{
    Algorithm, AlgorithmList, Authenticator, AuthenticatorConfig, BackoffConfig, ChapError,
    Credential, CredentialSet, ErrorKind, KeyValues, LoginBackoff, Responder, ResponderConfig,
    Secret, SecretsStore, Step,
};
use common::{expect_continue, expect_done, set, Pairs};

const S_INIT: &str = "Initiator-Secret-Zebra";
const S_TARGET: &str = "Target-Secret-Walrus";
const S_SHORT: &str = "Short-Okapi";

const SECRETS_TOML: &str = r#"
[discovery]
mutual = { user = "isu", secret = "Discovery-Mutual-Heron" }
[[discovery.chap]]
user = "disc"
secret = "Discovery-Initiator-Ibis"

[target."iqn.2026-11.org.opie:disk0"]
mutual = { user = "disk0", secret = "Target-Secret-Walrus" }
[[target."iqn.2026-11.org.opie:disk0".chap]]
user = "alice"
secret = "Initiator-Secret-Zebra"
[[target."iqn.2026-11.org.opie:disk0".chap]]
user = "bob"
secret = "Short-Okapi"
"#;

/// Everything that must never be printed: the secrets, and (filled in during
/// the run) every challenge and response value exchanged.
struct Forbidden(Vec<String>);

impl Forbidden {
    fn new() -> Self {
        Forbidden(
            [
                S_INIT,
                S_TARGET,
                S_SHORT,
                "Discovery-Mutual-Heron",
                "Discovery-Initiator-Ibis",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        )
    }

    fn note(&mut self, keys: &KeyValues) {
        for (k, v) in keys.iter() {
            if chap::is_sensitive_key(k) {
                // Both the wire form and the bare hex digits.
                self.0.push(v.to_owned());
                self.0.push(v.trim_start_matches("0x").to_owned());
            }
        }
    }

    fn check(&self, what: &str, text: &str) {
        for f in &self.0 {
            assert!(!text.contains(f.as_str()), "{what} leaks {f:?}:\n{text}");
        }
    }
}

/// Runs one mutual exchange and one failing exchange, returning every public
/// value that took part, formatted with `{:?}`.
fn run_everything(forbidden: &mut Forbidden) -> Vec<String> {
    let mut out = Vec::new();
    let creds = CredentialSet::new()
        .with_user(Credential::new("alice", S_INIT))
        .with_mutual(Credential::new("disk0", S_TARGET));
    let config = AuthenticatorConfig {
        allowed: AlgorithmList::new([Algorithm::Sha256]).expect("list"),
        challenge_len: Some(40),
    };
    out.push(format!("{config:?} {creds:?}"));
    let mut t = Authenticator::new(config, creds.clone());
    let rconfig = ResponderConfig {
        algorithms: AlgorithmList::default(),
        credential: Credential::new("alice", S_INIT),
        mutual: Some(Credential::new("disk0", S_TARGET)),
    };
    out.push(format!("{rconfig:?}"));
    let mut i = Responder::new(rconfig).expect("responder");
    out.push(format!("{t:?} {i:?}"));

    let offer = i.start().expect("start");
    let step = t.step(&offer).expect("step 1");
    out.push(format!("{step:?} {t:?}"));
    let c = expect_continue(Ok(step));
    forbidden.note(&c);
    let step = i.step(&c).expect("answer");
    out.push(format!("{step:?} {i:?}"));
    let a = expect_continue(Ok(step));
    forbidden.note(&a);
    let step = t.step(&a).expect("verify");
    out.push(format!("{step:?} {t:?}"));
    let (m, _) = expect_done(Ok(step));
    forbidden.note(&m);
    let step = i.step(&m).expect("mutual");
    out.push(format!("{step:?} {i:?} {:?}", Step::Continue(m.clone())));

    // Failures: wrong secret, reflection, same secret both ways.
    let mut t = Authenticator::new(AuthenticatorConfig::default(), creds.clone());
    let mut bad = Responder::new(ResponderConfig {
        algorithms: AlgorithmList::default(),
        credential: Credential::new("alice", S_SHORT),
        mutual: None,
    })
    .expect("responder");
    let c = expect_continue(t.step(bad.start().expect("start")));
    forbidden.note(&c);
    let (a, _) = expect_done(bad.step(&c));
    forbidden.note(&a);
    let err = t.step(&a).expect_err("wrong secret");
    out.push(format!("{err:?} {err} {t:?} {bad:?}"));

    let mut t = Authenticator::new(AuthenticatorConfig::default(), creds);
    let c = expect_continue(t.step([("CHAP_A", "5")]));
    forbidden.note(&c);
    let mut a: Pairs = common::pairs(&c);
    a.retain(|(k, _)| k != "CHAP_A");
    set(&mut a, "CHAP_N", "alice");
    set(&mut a, "CHAP_R", "0x00112233445566778899aabbccddeeff");
    let err = t.step(&a).expect_err("reflection");
    out.push(format!("{err:?} {err}"));

    let err = Responder::new(ResponderConfig {
        algorithms: AlgorithmList::default(),
        credential: Credential::new("a", S_INIT),
        mutual: Some(Credential::new("b", S_INIT)),
    })
    .expect_err("same secret");
    out.push(format!("{err:?} {err} {:?}", ErrorKind::Authentication));

    // Store, secrets and backoff.
    let store = SecretsStore::from_toml_str(SECRETS_TOML).expect("store");
    out.push(format!("{store:?}"));
    out.push(format!(
        "{:?} {:?}",
        store.target("iqn.2026-11.org.opie:disk0", "iqn.x"),
        store.discovery("iqn.x")
    ));
    out.push(format!(
        "{:?} {:?}",
        Secret::from(S_INIT),
        Credential::new("x", S_TARGET)
    ));
    let bad_toml = format!("[target.\"t\"]\nmutual = {{ user = \"x\", secret = \"{S_INIT}\", extra = \"{S_TARGET}\" }}\n");
    let err = SecretsStore::from_toml_str(&bad_toml).expect_err("bad toml");
    out.push(format!("{err:?} {err}"));
    let bad_type = format!("[[target.\"t\".chap]]\nuser = \"{S_INIT}\"\nsecret = 5\n");
    let err = SecretsStore::from_toml_str(&bad_type).expect_err("bad type");
    forbidden.0.push(S_INIT.to_owned());
    out.push(format!("{err:?} {err}"));
    let mut file = tempfile::NamedTempFile::new().expect("tmp");
    file.write_all(SECRETS_TOML.as_bytes()).expect("write");
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let loaded = SecretsStore::load(file.path(), false).expect("non-strict load warns");
    out.push(format!("{loaded:?}"));
    let err = SecretsStore::load(file.path(), true).expect_err("strict");
    out.push(format!("{err:?} {err}"));

    let mut b = LoginBackoff::new(BackoffConfig::default());
    let now = Instant::now();
    b.record_failure(IpAddr::from([10, 0, 0, 1]), now);
    out.push(format!("{b:?} {:?}", b.config()));
    out.push(format!("{:?}", ChapError::Finished("failed")));
    out
}

#[test]
fn debug_output_and_trace_logs_hold_no_secret() {
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || LogWriter(sink.clone()))
        .finish();
    let mut forbidden = Forbidden::new();
    let formatted =
        tracing::subscriber::with_default(subscriber, || run_everything(&mut forbidden));

    for f in &formatted {
        forbidden.check("Debug output", f);
    }
    let log = String::from_utf8(log.lock().expect("lock").clone()).expect("utf8");
    forbidden.check("trace log", &log);
    // The checks above must have had something to look at.
    assert!(forbidden.0.len() > 10, "no challenges/responses recorded");
    assert!(
        log.contains("CHAP authenticated"),
        "no success logged:\n{log}"
    );
    assert!(log.contains("does not match"), "no failure logged:\n{log}");
    assert!(
        log.contains("readable by group or others"),
        "no permission warning:\n{log}"
    );
    assert!(
        log.contains("shorter than 12 bytes"),
        "no short-secret warning:\n{log}"
    );
    assert!(
        log.contains("user=\"bob\"") || log.contains("user=bob"),
        "warning names the user:\n{log}"
    );
    assert!(formatted.iter().any(|f| f.contains("<redacted>")));
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
