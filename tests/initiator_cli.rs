//! `opie initiator discover|login|ls` against `opie isu serve`: the JSON
//! each prints, and the exit status of each kind of failure.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::{free_port, opie, write_config, Daemon};
use serde_json::Value;

const BASE: &str = "iqn.2026-01.org.opie.test:cli";
const ALICE_SECRET: &str = "alice-secret-16b";
const TARGET_SECRET: &str = "target-secret-16";

fn iqn(disk: &str) -> String {
    format!("{BASE}:{disk}")
}

/// A daemon on two portals (portal groups 1 and 2) with `d0` (fixed
/// identity and serial, 4 KiB blocks), `ro` (read-only), `chap` (one-way
/// CHAP) and `mutual` (mutual CHAP).
struct Isu {
    dir: tempfile::TempDir,
    portals: [String; 2],
    _daemon: Daemon,
}

fn start() -> Isu {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let cfg = format!(
        "[isu]\nbase_iqn = \"{BASE}\"\nlisten = [\"127.0.0.1:{p1}\", \"127.0.0.1:{p2},2\"]\n\
         [auth]\nsecrets = \"secrets.toml\"\n\
         [[disk]]\nname = \"d0\"\nsize = \"8M\"\nblock_size = 4096\n\
         identity = \"00112233445566778899aabbccddeeff\"\nserial = \"SERIAL-D0\"\n\
         [[disk]]\nname = \"ro\"\nsize = \"2M\"\nread_only = true\n\
         [[disk]]\nname = \"chap\"\nsize = \"2M\"\nauth = \"chap\"\n\
         [[disk]]\nname = \"mutual\"\nsize = \"2M\"\nauth = \"chap\"\n"
    );
    let secrets = format!(
        "[target.\"{c}\"]\n[[target.\"{c}\".chap]]\nuser = \"alice\"\nsecret = \"{ALICE_SECRET}\"\n\
         [target.\"{m}\"]\nmutual = {{ user = \"isu\", secret = \"{TARGET_SECRET}\" }}\n\
         [[target.\"{m}\".chap]]\nuser = \"alice\"\nsecret = \"{ALICE_SECRET}\"\n",
        c = iqn("chap"),
        m = iqn("mutual"),
    );
    let cfg = write_config(dir.path(), &cfg);
    let sec = dir.path().join("secrets.toml");
    std::fs::write(&sec, secrets).unwrap();
    std::fs::set_permissions(&sec, std::fs::Permissions::from_mode(0o600)).unwrap();
    let addrs: Vec<SocketAddr> = [p1, p2]
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let daemon = Daemon::start(&cfg, &dir.path().join("data"), &[], &addrs);
    Isu {
        portals: [format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")],
        dir,
        _daemon: daemon,
    }
}

/// Runs `opie initiator ARGS` (with `env` set): exit status, stdout as
/// JSON, stderr.
fn initiator(args: &[&str], env: &[(&str, &str)]) -> (i32, Value, String) {
    let mut cmd: Command = opie();
    cmd.arg("initiator")
        .args(args)
        .env_remove("OPIE_CHAP_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn discover_lists_every_target_with_the_portals_of_its_groups() {
    let isu = start();
    let (code, j, err) = initiator(&["discover", "-p", &isu.portals[0], "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let portal = &j[0];
    assert_eq!(portal["portal"], isu.portals[0].as_str());
    let names: Vec<&str> = portal["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for d in ["d0", "ro", "chap", "mutual"] {
        assert!(names.contains(&iqn(d).as_str()), "{d} missing: {j}");
    }
    let d0 = portal["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == iqn("d0").as_str())
        .unwrap();
    assert_eq!(
        d0["addresses"],
        serde_json::json!([
            format!("{},1", isu.portals[0]),
            format!("{},2", isu.portals[1])
        ])
    );
}

#[test]
fn login_reports_identity_size_and_limits_of_each_lun() {
    let isu = start();
    let (code, j, err) = initiator(
        &["login", "-p", &isu.portals[1], "-t", &iqn("d0"), "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let t = &j[0];
    assert_eq!(t["target"], iqn("d0").as_str());
    let lun = &t["luns"][0];
    assert_eq!(lun["lun"], 0);
    assert_eq!(lun["device_type"], 0);
    assert_eq!(lun["identity"]["uuid"], "00112233445566778899aabbccddeeff");
    assert_eq!(lun["identity"]["serial"], "SERIAL-D0");
    let naa = lun["identity"]["naa"].as_str().unwrap();
    assert!(naa.starts_with('6') && naa.len() == 32, "{naa}");
    assert!(lun["naa"].as_array().unwrap().iter().any(|n| n == naa));
    assert_eq!(lun["serial"], "SERIAL-D0");
    let disk = &lun["disk"];
    assert_eq!(disk["block_size"], 4096);
    assert_eq!(disk["num_blocks"], 2048);
    assert_eq!(disk["size_bytes"], 8 << 20);
    assert_eq!(disk["read_only"], false);
    assert!(disk["max_transfer"].as_u64().unwrap() > 0, "{disk}");
    assert_eq!(lun["unusable"], Value::Null);

    let (code, j, err) = initiator(
        &["login", "-p", &isu.portals[0], "-t", &iqn("ro"), "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(j[0]["luns"][0]["disk"]["read_only"], true);
}

#[test]
fn ls_groups_the_paths_of_each_disk_by_identity() {
    let isu = start();
    let (code, j, err) = initiator(
        &[
            "ls",
            "-p",
            &isu.portals[0],
            "-p",
            &isu.portals[1],
            "-t",
            &iqn("d0"),
            "-t",
            &iqn("ro"),
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let disks = j["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{j}");
    for d in disks {
        let paths = d["paths"].as_array().unwrap();
        let portals: Vec<&str> = paths
            .iter()
            .map(|p| p["portal"].as_str().unwrap())
            .collect();
        assert_eq!(portals, [&isu.portals[0], &isu.portals[1]], "{d}");
        assert!(paths
            .iter()
            .all(|p| p["state"] == "up" && p["transport"] == "iscsi"));
        assert_eq!(paths[0]["target"], paths[1]["target"]);
    }
    assert_eq!(
        disks[0]["identity"]["uuid"],
        "00112233445566778899aabbccddeeff"
    );
    assert_eq!(j["errors"], serde_json::json!([]));
}

#[test]
fn ls_reports_a_dead_portal_and_lists_what_the_others_show() {
    let isu = start();
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, j, _) = initiator(
        &[
            "ls",
            "-p",
            &isu.portals[0],
            "-p",
            &dead,
            "-t",
            &iqn("d0"),
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["disks"].as_array().unwrap().len(), 1);
    assert_eq!(j["disks"][0]["paths"].as_array().unwrap().len(), 1);
    let e = &j["errors"][0];
    assert_eq!(e["portal"], dead.as_str());
    assert_eq!(e["exit_code"], 1);
}

#[test]
fn failures_have_exit_codes_and_say_what_to_do() {
    let isu = start();
    let p = isu.portals[0].as_str();
    // No such target: 4.
    let (code, j, err) = initiator(&["login", "-p", p, "-t", &iqn("nope"), "--json"], &[]);
    assert_eq!(code, 4, "{err}");
    assert_eq!(j["exit_code"], 4);
    assert!(err.contains("opie initiator discover"), "{err}");
    // Nobody listening: 1.
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = initiator(&["discover", "-p", &dead], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is the target running"), "{err}");
    // A bad portal: 2, as clap's own errors.
    let (code, _, err) = initiator(&["discover", "-p", "127.0.0.1:notaport"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = initiator(&["discover"], &[]);
    assert_eq!(code, 2);
    // A CHAP target without credentials, and with a wrong secret: 3.
    let (code, _, err) = initiator(&["login", "-p", p, "-t", &iqn("chap")], &[]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = initiator(
        &["login", "-p", p, "-t", &iqn("chap"), "--chap-user", "alice"],
        &[("OPIE_CHAP_SECRET", "wrong-secret-16b")],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("check --chap-user"), "{err}");
    // A CHAP user without any secret: 2, naming where to put it.
    let (code, _, err) = initiator(
        &["login", "-p", p, "-t", &iqn("chap"), "--chap-user", "alice"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("OPIE_CHAP_SECRET"), "{err}");
    // A secret file that cannot be read: 2.
    let missing = isu.dir.path().join("missing");
    let (code, _, _) = initiator(
        &[
            "login",
            "-p",
            p,
            "-t",
            &iqn("chap"),
            "--chap-user",
            "alice",
            "--chap-secret-file",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2);
}

#[test]
fn chap_secrets_come_from_a_file_or_the_environment_one_way_and_mutual() {
    let isu = start();
    let p = isu.portals[0].as_str();
    let dir = isu.dir.path();
    let mine = dir.join("alice.secret");
    std::fs::write(&mine, format!("{ALICE_SECRET}\n")).unwrap();
    let theirs = dir.join("isu.secret");
    std::fs::write(&theirs, TARGET_SECRET).unwrap();
    let chap = [
        "--chap-user",
        "alice",
        "--chap-secret-file",
        mine.to_str().unwrap(),
    ];
    let ok = |args: &[&str], env: &[(&str, &str)]| {
        let (code, j, err) = initiator(args, env);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(j[0]["luns"][0]["disk"]["size_bytes"], 2 << 20);
    };
    let (chap_t, mutual_t) = (iqn("chap"), iqn("mutual"));
    let login = |t: &str| {
        let t = if t == "chap" { &chap_t } else { &mutual_t };
        vec!["login", "-p", p, "-t", t.as_str(), "--json"]
    };
    ok(&[login("chap"), chap.to_vec()].concat(), &[]);
    ok(
        &[login("chap"), vec!["--chap-user", "alice"]].concat(),
        &[("OPIE_CHAP_SECRET", ALICE_SECRET)],
    );
    let mutual = [
        "--mutual-user",
        "isu",
        "--mutual-secret-file",
        theirs.to_str().unwrap(),
    ];
    ok(
        &[login("mutual"), chap.to_vec(), mutual.to_vec()].concat(),
        &[],
    );
    // The target proving a secret other than the one we hold: refused, 3.
    let wrong = dir.join("wrong.secret");
    std::fs::write(&wrong, "not-the-target-16").unwrap();
    let (code, _, err) = initiator(
        &[
            login("mutual"),
            chap.to_vec(),
            vec![
                "--mutual-user",
                "isu",
                "--mutual-secret-file",
                wrong.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 3, "{err}");
    // No secret option takes the secret itself.
    let (code, _, err) = initiator(
        &[
            login("chap"),
            vec!["--chap-user", "alice", "--chap-secret", ALICE_SECRET],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn perf_over_two_portals_goes_round_robin_and_reports_each_paths_share() {
    let isu = start();
    let (p0, p1) = (isu.portals[0].as_str(), isu.portals[1].as_str());
    let t = iqn("d0");
    let args = [
        "perf", "-p", p0, "-p", p1, "-t", &t, "-s", "0.5", "--qd", "8",
    ];
    let (code, j, err) = initiator(
        &[&args[..], &["-w", "read-4k-rand", "-w", "write-128k-seq"]].concat(),
        &[],
    );
    // Writes overwrite the LUN: only when allowed.
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allow-writes"), "{err}");
    let (code, j2, err) = initiator(
        &[
            &args[..],
            &[
                "-w",
                "read-4k-rand",
                "-w",
                "write-128k-seq",
                "--allow-writes",
                "--json",
            ],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 0, "{err} {j}");
    assert_eq!(j2["via"], "multipath");
    let results = j2["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["workload"], "read-4k-rand-qd8");
    for r in results {
        assert_eq!(r["error"], Value::Null, "{r}");
        let ios = r["ios"].as_u64().unwrap();
        assert!(ios > 0, "{r}");
        assert!(r["cpu_us_per_io"].as_f64().unwrap() > 0.0, "{r}");
        let paths = r["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 2);
        let done: Vec<u64> = paths
            .iter()
            .map(|p| p["completed"].as_u64().unwrap())
            .collect();
        assert_eq!(done.iter().sum::<u64>(), ios, "{r}");
        // Round robin: each path carries half, but for what was in flight.
        for d in done {
            assert!(d.abs_diff(ios / 2) <= 8, "{r}");
        }
    }
    // One portal: the disk itself, no paths.
    let (code, j3, err) = initiator(&["perf", "-p", p0, "-t", &t, "-s", "0.2", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j3["via"], "iscsi-device");
    assert_eq!(j3["results"][1]["workload"], "read-128k-seq-qd32");
}

#[test]
fn perf_reuses_its_buffers_instead_of_faulting_in_fresh_pages_for_each_io() {
    let isu = start();
    let t = iqn("d0");
    let (code, j, err) = initiator(
        &[
            "perf",
            "-p",
            &isu.portals[0],
            "-t",
            &t,
            "-w",
            "read-128k-seq",
            "-w",
            "read-128k-seq",
            "-s",
            "1",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // The second run, once the heap holds the buffers of 32 I/Os in flight.
    let r = &j["results"][1];
    assert!(r["ios"].as_u64().unwrap() > 0, "{r}");
    // A 128 KiB buffer is 32 pages: with glibc's defaults each I/O's
    // buffer came back from the kernel zeroed (about 30 faults per I/O).
    let faults = r["page_faults_per_io"].as_f64().unwrap();
    assert!(faults < 4.0, "{faults} page faults per 128 KiB read: {r}");
}

#[test]
fn a_reader_that_goes_away_is_not_a_crash() {
    // `opie initiator ls | head -0`: stdout is a pipe whose reader is gone
    // before the command writes; it ends as it would have, without a panic.
    let isu = start();
    let d0 = iqn("d0");
    let ls = [
        "ls",
        "-p",
        &isu.portals[0],
        "-p",
        &isu.portals[1],
        "-t",
        &d0,
    ];
    let (expected, _, err) = initiator(&ls, &[]);
    assert_eq!(expected, 0, "{err}");
    for json in [true, false] {
        let mut cmd: Command = opie();
        cmd.arg("initiator").args(ls).env_remove("OPIE_CHAP_SECRET");
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "json={json}: {err}");
        assert_eq!(out.status.code(), Some(0), "json={json}: {err}");
    }
}
