//! `opie isu` refuses bad configuration with a message naming the file, the
//! key and the problem, and exit status 2; bad disks fail at startup with
//! status 1 without touching existing data.

mod common;

use common::{both_refuse, opie, write_config};

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
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let check = |listen: &[&str]| {
        let mut c = opie();
        c.args(["isu", "check", "--config", ex, "--data-dir"])
            .arg(&data);
        for l in listen {
            c.args(["--listen", l]);
        }
        c.output().unwrap()
    };
    let mut out = check(&[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(1) && err.contains("cannot listen") {
        // Port 3260 is taken on this machine (check binds each portal for
        // a moment, as serve would): the file parsed; check the rest on a free port.
        let p = common::free_port();
        out = check(&[&format!("127.0.0.1:{p}"), &format!("[::1]:{p}")]);
    }
    assert!(!data.exists(), "check created the data dir");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("\ndisk ").count(), 3, "{text}");
    assert!(text.contains("read-only"), "{text}");
}

#[test]
fn planted_symlink_lock_file_is_refused_and_its_target_untouched() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let victim = t.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, data.join("opie-isu.lock")).unwrap();
    let cfg = write_config(
        t.path(),
        &format!("{HEAD}[[disk]]\nname = \"d\"\nsize = \"1M\"\n"),
    );
    both_refuse(&cfg, &data, &["opie-isu.lock", "symbolic link"]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    assert!(!data.join("d.img").exists(), "a disk was created");
}

#[test]
fn symlinked_state_directory_and_identity_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir_all(data.join("state")).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, data.join("state/d")).unwrap();
    let cfg = write_config(
        t.path(),
        &format!("{HEAD}[[disk]]\nname = \"d\"\nsize = \"1M\"\n"),
    );
    both_refuse(&cfg, &data, &["state/d", "symbolic link"]);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

    // The disk's identity file as a link to someone else's file.
    std::fs::remove_file(data.join("state/d")).unwrap();
    std::fs::create_dir(data.join("state/d")).unwrap();
    let victim = t.path().join("victim");
    std::fs::write(&victim, "uuid=0123456789abcdef0123456789abcdef\n").unwrap();
    std::os::unix::fs::symlink(&victim, data.join("state/d/identity")).unwrap();
    both_refuse(&cfg, &data, &["identity", "symbolic link"]);
}

/// `opie isu check|serve` run in `dir` (so relative paths are relative to it).
fn run_in(dir: &std::path::Path, sub: &str, data: &str, listen: &str) -> (Option<i32>, String) {
    let mut cmd = opie();
    cmd.current_dir(dir)
        .args(["isu", sub, "--config", "isu.toml", "--data-dir", data])
        .args(["--listen", listen]);
    common::run_cmd_to_exit(cmd, 10)
}

#[test]
fn one_file_as_two_disks_is_refused_however_spelled() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let abs = root.join("data/x.img");
    let abs = abs.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    // (second disk's path, whether x.img exists before the run)
    let cases = [
        // Relative data dir (run in `root`) and an absolute path.
        (abs.to_string(), false),
        (abs.to_string(), true),
        // The data dir spelled through a symbolic link.
        (format!("{}/alias/x.img", root.display()), false),
        (format!("{}/alias/x.img", root.display()), true),
        // A symbolic link to the file, and a hard link.
        (format!("{}/link.img", root.display()), true),
        (format!("{}/hard.img", root.display()), true),
    ];
    std::os::unix::fs::symlink(root.join("data"), root.join("alias")).unwrap();
    for (i, (other, exists)) in cases.iter().enumerate() {
        let _ = std::fs::remove_dir_all(root.join("data"));
        std::fs::create_dir(root.join("data")).unwrap();
        if *exists {
            std::fs::write(root.join("data/x.img"), vec![5u8; 1 << 20]).unwrap();
            let _ = std::fs::remove_file(root.join("link.img"));
            let _ = std::fs::remove_file(root.join("hard.img"));
            std::os::unix::fs::symlink(root.join("data/x.img"), root.join("link.img")).unwrap();
            std::fs::hard_link(root.join("data/x.img"), root.join("hard.img")).unwrap();
        }
        write_config(
            root,
            &format!(
                "{HEAD}[[disk]]\nname = \"a\"\npath = \"x.img\"\nsize = \"1M\"\n\
                 [[disk]]\nname = \"b\"\npath = \"{other}\"\nsize = \"1M\"\n"
            ),
        );
        for sub in ["check", "serve"] {
            let (code, err) = run_in(root, sub, "data", &listen);
            assert_eq!(
                code,
                Some(1),
                "case {i} {sub}: exit {code:?} (None: it served): {err}"
            );
            assert!(
                err.contains("disk \"b\"")
                    && err.contains("disk \"a\"")
                    && err.contains("same backing store"),
                "case {i} {sub}: {err}"
            );
        }
        assert_eq!(
            root.join("data/x.img").exists(),
            *exists,
            "case {i}: a backing file was created"
        );
        if *exists {
            assert_eq!(
                std::fs::read(root.join("data/x.img")).unwrap(),
                vec![5u8; 1 << 20]
            );
        }
        assert!(
            !root.join("data/state").exists(),
            "case {i}: state was created"
        );
    }
}

#[test]
fn paths_under_dev_are_never_created() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let name = format!("opie-test-missing-{}", std::process::id());
    std::os::unix::fs::symlink("/dev", t.path().join("devices")).unwrap();
    let paths = [
        format!("/dev/{name}"),
        format!("/dev/disk/by-id/{name}"),
        format!("{}/devices/{name}", t.path().display()),
    ];
    for p in &paths {
        let cfg = write_config(
            t.path(),
            &format!("{HEAD}[[disk]]\nname = \"d\"\npath = \"{p}\"\nsize = \"1M\"\n"),
        );
        let refused = std::panic::catch_unwind(|| {
            both_refuse(
                &cfg,
                &data,
                &["disk \"d\"", "never creates files under /dev"],
            )
        });
        let created = std::path::Path::new(&format!("/dev/{name}")).exists()
            || std::path::Path::new(&format!("/dev/disk/by-id/{name}")).exists();
        // Today's code creates them: leave nothing behind in /dev.
        let _ = std::fs::remove_file(format!("/dev/{name}"));
        let _ = std::fs::remove_file(format!("/dev/disk/by-id/{name}"));
        assert!(!created, "{p} was created");
        if let Err(e) = refused {
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn check_refuses_what_serve_refuses_at_startup() {
    let t = tempfile::tempdir().unwrap();
    let disk = "[[disk]]\nname = \"d\"\nsize = \"1M\"\n";
    // (config body, files to plant in the data dir, words of the message)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "[auth]\nsecrets = \"missing-secrets.toml\"\n",
            &[],
            &["secrets", "missing-secrets.toml"],
        ),
        (
            "[auth]\nsecrets = \"s.toml\"\ntargets = \"chap\"\n",
            &[],
            &["requires CHAP", "no [target."],
        ),
        (
            "[aoe]\ninterfaces = [\"opienoif0\"]\nshelf = 1\n[[disk]]\nname = \"e\"\nsize = \"1M\"\n[disk.aoe]\nslot = 1\n",
            &[],
            &["opienoif0", "no such interface"],
        ),
        ("", &[("state/d/pr-state", "nonsense\n")], &["pr-state", "malformed"]),
        ("", &[("state/d/identity", "uuid=12\n")], &["identity", "corrupt"]),
        ("", &[("d.img", "too short")], &["disk \"d\"", "9 bytes"]),
        (
            "[[disk]]\nname = \"small\"\n",
            &[("small.img", "")],
            &["disk \"small\"", "smaller than one 512-byte block"],
        ),
    ];
    for (i, (body, files, want)) in cases.iter().enumerate() {
        let dir = t.path().join(format!("c{i}"));
        let data = dir.join("data");
        std::fs::create_dir_all(data.join("state/d")).unwrap();
        std::fs::write(dir.join("s.toml"), "").unwrap();
        for (name, text) in *files {
            std::fs::write(data.join(name), text).unwrap();
        }
        let cfg = write_config(&dir, &format!("{HEAD}{body}{disk}"));
        both_refuse(&cfg, &data, want);
    }
    // A portal on an address this host does not have.
    let dir = t.path().join("portal");
    std::fs::create_dir(&dir).unwrap();
    let cfg = write_config(&dir, &format!("{HEAD}{disk}"));
    for sub in ["check", "serve"] {
        let args: Vec<&std::ffi::OsStr> = vec![
            "isu".as_ref(),
            sub.as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--listen".as_ref(),
            "192.0.2.1:3260".as_ref(),
        ];
        let (code, err) = common::run_to_exit(&args, 10);
        assert_eq!(code, Some(1), "{sub}: {err}");
        assert!(err.contains("192.0.2.1:3260"), "{sub}: {err}");
    }
    assert!(
        !dir.join("opie-data").exists(),
        "serve created its data dir for a config it refused"
    );
}
