//! `opie isu` refuses bad configuration with a message naming the file, the
//! key and the problem, and exit status 2; bad disks fail at startup with
//! status 1 without touching existing data.

mod common;

use common::{opie, write_config};

fn run(args: &[&str]) -> (i32, String) {
    let out = opie().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HEAD: &str =
    "[isu]\nbase_iqn = \"iqn.2026-01.org.opie.test:cfg\"\nlisten = [\"127.0.0.1:3260\"]\n";

#[test]
fn bad_values_name_file_key_and_problem() {
    let t = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "[[disk]]\nname = \"d\"\nsize = \"12Q\"\n",
            &["size", "unknown unit"],
        ),
        (
            "[[disk]]\nname = \"d\"\nsize = 1000\n",
            &["disk \"d\".size", "multiple of the block size 512"],
        ),
        (
            "[[disk]]\nname = \"d\"\nsize = \"1M\"\nblock_size = 520\n",
            &["disk \"d\".block_size", "power of two"],
        ),
        (
            "[[disk]]\nname = \"D_1\"\nsize = \"1M\"\n",
            &["disk[0].name", "not a valid disk name"],
        ),
        (
            "[[disk]]\nname = \"d\"\nsize = \"1M\"\nreadonly = true\n",
            &["unknown field `readonly`"],
        ),
        (
            "[[disk]]\nname = \"d\"\nsize = \"1M\"\nlun = 20000\n",
            &["disk \"d\".lun", "16383"],
        ),
        (
            "[[disk]]\nname = \"d\"\nsize = \"1M\"\niqn = \"iqn.2026.x\"\n",
            &["disk \"d\".iqn", "YYYY-MM"],
        ),
        (
            "[[disk]]\nname = \"d\"\nsize = \"1M\"\nserial = \"012345678901234567890\"\n",
            &["disk \"d\".serial"],
        ),
        (
            "[[disk]]\nname = \"d\"\nsize = \"1M\"\nportal_groups = [9]\n",
            &["disk \"d\".portal_groups", "no portal has tag 9"],
        ),
        ("", &["no [[disk]] entries"]),
        (
            "[[disk]]\nname = \"d\"\nsize = \"1M\"\n[disk.aoe]\nslot = 3\n",
            &["disk \"d\".aoe", "[aoe] table"],
        ),
        (
            "[aoe]\ninterfaces = []\nshelf = 1\n[[disk]]\nname = \"d\"\nsize = \"1M\"\n",
            &["aoe.interfaces"],
        ),
        ("[[disk\nname = \"d\"\n", &["line"]),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let dir = t.path().join(format!("c{i}"));
        std::fs::create_dir(&dir).unwrap();
        let cfg = write_config(&dir, &format!("{HEAD}{body}"));
        let cfg_s = cfg.to_str().unwrap();
        for sub in ["check", "serve"] {
            let (code, err) = run(&["isu", sub, "--config", cfg_s]);
            assert_eq!(code, 2, "case {i} ({sub}): exit {code}, stderr: {err}");
            assert!(err.contains(cfg_s), "case {i}: file not named: {err}");
            for w in *want {
                assert!(err.contains(w), "case {i}: {w:?} missing from: {err}");
            }
        }
        // Nothing was created for a config that was refused.
        assert!(
            !dir.join("opie-data").exists(),
            "case {i} created the data dir"
        );
    }
}

#[test]
fn bad_listen_override_and_missing_file() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &format!("{HEAD}[[disk]]\nname = \"d\"\nsize = \"1M\"\n"),
    );
    let (code, err) = run(&[
        "isu",
        "check",
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        "::1:3260",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--listen[0]") && err.contains("brackets"),
        "{err}"
    );
    let (code, err) = run(&["isu", "serve", "--config", "/nonexistent/isu.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/isu.toml: cannot read"), "{err}");
}

#[test]
fn existing_backing_file_of_another_size_is_refused_untouched() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let img = data.join("d.img");
    std::fs::write(&img, vec![7u8; 8192]).unwrap();
    let cfg = write_config(
        t.path(),
        &format!("{HEAD}[[disk]]\nname = \"d\"\nsize = \"1M\"\n"),
    );
    let (code, err) = run(&[
        "isu",
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("disk \"d\"") && err.contains("8192 bytes") && err.contains("size = 1048576"),
        "{err}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), vec![7u8; 8192]);
    // A missing file with no size cannot be created.
    let cfg = write_config(t.path(), &format!("{HEAD}[[disk]]\nname = \"e\"\n"));
    let (code, err) = run(&[
        "isu",
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no size to create it with"), "{err}");
}

#[test]
fn example_config_is_valid() {
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/isu.toml");
    let out = opie()
        .args(["isu", "check", "--config", ex])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("\ndisk ").count(), 3, "{text}");
    assert!(text.contains("read-only"), "{text}");
}
