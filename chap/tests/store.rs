//! The secrets store: schema, scoping per target and initiator, validation and
//! file permission checks.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use chap::{ChapError, Credentials, ErrorKind, SecretsStore};

const GOOD: &str = r#"
[discovery]
mutual = { user = "isu-a", secret = "discovery-target-secret" }
[[discovery.chap]]
user = "backup"
secret = "discovery-initiator-secret"

[target."iqn.2026-11.org.opie:disk0"]
mutual = { user = "disk0", secret = "disk0-target-secret" }
[[target."iqn.2026-11.org.opie:disk0".chap]]
user = "alice"
secret = "alice-secret-16b"
initiators = ["iqn.1994-05.com.redhat:alice"]
[[target."iqn.2026-11.org.opie:disk0".chap]]
user = "shared"
secret = "shared-secret-16b"

[target."iqn.2026-11.org.opie:disk1"]
[[target."iqn.2026-11.org.opie:disk1".chap]]
user = "alice"
secret = "alice-disk1-secret"
"#;

fn write_file(text: &str, mode: u32) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("tmp");
    f.write_all(text.as_bytes()).expect("write");
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
    f
}

#[test]
fn credentials_are_scoped_by_target_and_initiator() {
    let s = SecretsStore::from_toml_str(GOOD).expect("parses");
    let alice_iqn = "iqn.1994-05.com.redhat:alice";
    let other_iqn = "iqn.1994-05.com.redhat:eve";

    let disk0 = s
        .target("iqn.2026-11.org.opie:disk0", alice_iqn)
        .expect("disk0");
    assert!(disk0.initiator_secret("alice").is_some());
    assert!(disk0.initiator_secret("shared").is_some());
    assert_eq!(disk0.target_credential().expect("mutual").user, "disk0");

    // alice's credential is bound to her IQN; IQNs compare case-insensitively.
    let eve = s
        .target("iqn.2026-11.org.opie:disk0", other_iqn)
        .expect("disk0");
    assert!(eve.initiator_secret("alice").is_none());
    assert!(eve.initiator_secret("shared").is_some());
    let upper = s
        .target("IQN.2026-11.ORG.OPIE:DISK0", "IQN.1994-05.com.redhat:ALICE")
        .expect("case");
    assert!(upper.initiator_secret("alice").is_some());

    // Secrets differ per target: disk0's alice secret does not open disk1.
    let disk1 = s
        .target("iqn.2026-11.org.opie:disk1", alice_iqn)
        .expect("disk1");
    let (a0, a1) = (
        disk0.initiator_secret("alice").expect("a0"),
        disk1.initiator_secret("alice").expect("a1"),
    );
    assert!(!a0.ct_eq(&a1));
    assert!(disk1.target_credential().is_none());

    assert!(s.target("iqn.2026-11.org.opie:nope", alice_iqn).is_none());
    let disc = s.discovery(other_iqn).expect("discovery");
    assert!(disc.initiator_secret("backup").is_some());
    assert_eq!(s.target_names().count(), 2);
}

#[test]
fn empty_file_is_an_empty_store() {
    let s = SecretsStore::from_toml_str("").expect("empty");
    assert!(s.discovery("x").is_none());
    assert_eq!(s.target_names().count(), 0);
}

#[test]
fn one_secret_for_both_directions_is_refused() {
    // The mutual secret of one target equals an initiator secret of another
    // scope: RFC 7143 forbids it anywhere.
    let text = r#"
[target."a"]
mutual = { user = "a", secret = "reused-secret-123" }
[target."b"]
[[target."b".chap]]
user = "u"
secret = "reused-secret-123"
"#;
    let err = SecretsStore::from_toml_str(text).expect_err("reuse");
    assert_eq!(err.kind(), ErrorKind::Local);
    let msg = err.to_string();
    assert!(msg.contains("both directions"), "{msg}");
    assert!(!msg.contains("reused-secret-123"), "{msg}");
}

#[test]
fn schema_errors_are_clear_and_quote_no_values() {
    let cases = [
        ("[target.\"t\"]\nmutual = { user = \"x\", secret = \"leaky-secret-1\", pasword = \"leaky-secret-2\" }\n", "unknown field `pasword`"),
        ("[[target.\"t\".chap]]\nuser = \"x\"\nsecret = \"\"\n", "empty secret"),
        ("[[target.\"t\".chap]]\nuser = \"x\"\nsecret = \"leaky-secret-1\"\n[[target.\"t\".chap]]\nuser = \"x\"\nsecret = \"leaky-secret-2\"\n", "listed twice"),
        ("[[target.\"t\".chap]]\nsecret = \"leaky-secret-1\"\n", "missing field `user`"),
        ("[target.\"t\"]\nchap = \"leaky-secret-1\"\n", "line 2"),
        ("secret = \"leaky-secret-1\"\n", "line 1"),
        ("[target.\"t\"\nsecret = \"leaky-secret-1\"", "line 1"),
        ("[target.\"t\"]\n[target.\"T\"]\n", "twice"),
    ];
    for (text, expect) in cases {
        let err = SecretsStore::from_toml_str(text).expect_err(text);
        let msg = format!("{err} {err:?}");
        assert!(msg.contains(expect), "{text:?}: {msg}");
        assert!(!msg.contains("leaky-secret"), "{text:?} leaks: {msg}");
    }
}

#[test]
fn group_readable_file_warns_or_is_refused_when_strict() {
    let open = write_file(GOOD, 0o640);
    let s = SecretsStore::load(open.path(), false).expect("loads with a warning");
    assert!(s.target("iqn.2026-11.org.opie:disk0", "x").is_some());
    let err = SecretsStore::load(open.path(), true).expect_err("strict refuses");
    assert!(
        matches!(err, ChapError::InsecurePermissions { mode: 0o640, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"));

    let closed = write_file(GOOD, 0o600);
    SecretsStore::load(closed.path(), true).expect("0600 is fine in strict mode");
    let owner_ro = write_file(GOOD, 0o400);
    SecretsStore::load(owner_ro.path(), true).expect("0400 is fine in strict mode");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = SecretsStore::load("/nonexistent/opie-secrets.toml", false).expect_err("missing");
    assert!(matches!(err, ChapError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/opie-secrets.toml"));
}
