//! `opie initiator discover|ls --aoe IFACE` against `opie isu serve` in a
//! private network namespace (a veth pair: the ISU's AoE on one end, the
//! initiator on the other): the AoE target is listed, and `ls` shows the
//! disk exported over both iSCSI and AoE as one disk with a path of each
//! transport. Needs root (network namespace, raw sockets); skips without
//! it, except under `CI=true`, where that is a failure.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const BASE: &str = "iqn.2026-01.org.opie.test:cliaoe";

/// `opie initiator ARGS --json` inside `ns`: exit status, stdout as JSON,
/// stderr.
fn initiator(ns: &str, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_opie"), "initiator"])
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn aoe_targets_are_discovered_and_listed_beside_their_iscsi_paths() {
    if !root_or_skip("aoe_targets_are_discovered_and_listed_beside_their_iscsi_paths") {
        return;
    }
    let ns = PrivateNet::enter("cliaoe");

    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &format!(
            "[isu]\nbase_iqn = \"{BASE}\"\n[aoe]\ninterfaces = [\"isu0\"]\nshelf = 7\n\
             [[disk]]\nname = \"a\"\nsize = \"8M\"\nidentity = \"00112233445566778899aabbccddeeff\"\n\
             [disk.aoe]\nslot = 2\n\
             [[disk]]\nname = \"b\"\nsize = \"4M\"\n"
        ),
    );
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_opie")]);
    let d = Daemon::start_with(
        cmd,
        &cfg,
        &t.path().join("data"),
        &[addr.to_string()],
        &[addr],
    );
    let portal = addr.to_string();

    // discover: the portal's two targets, then the AoE entry with e7.2.
    let (code, j, err) = initiator(&ns.name, &["discover", "-p", &portal, "--aoe", "ini0"]);
    assert_eq!(code, 0, "{err}\n{}", d.log_text());
    let entries = j.as_array().expect("an array");
    assert_eq!(entries.len(), 2, "{j}");
    assert_eq!(entries[0]["targets"].as_array().unwrap().len(), 2, "{j}");
    let aoe = &entries[1]["aoe_targets"];
    assert_eq!(aoe.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(aoe[0]["name"], "e7.2");
    assert_eq!(aoe[0]["interfaces"]["ini0"].as_array().unwrap().len(), 1);

    // AoE alone needs no portal.
    let (code, j, err) = initiator(&ns.name, &["discover", "--aoe", "ini0"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j[0]["aoe_targets"][0]["name"], "e7.2");

    // ls: disk a has an iSCSI and an AoE path, disk b only iSCSI.
    let (code, j, err) = initiator(&ns.name, &["ls", "-p", &portal, "--aoe", "ini0"]);
    assert_eq!(code, 0, "{err}");
    let disks = j["disks"].as_array().expect("disks");
    assert_eq!(disks.len(), 2, "{j}");
    let a = disks
        .iter()
        .find(|d| d["identity"]["uuid"] == "00112233445566778899aabbccddeeff")
        .unwrap_or_else(|| panic!("disk a missing: {j}"));
    let mut transports: Vec<&str> = a["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["transport"].as_str().unwrap())
        .collect();
    transports.sort();
    assert_eq!(transports, ["aoe", "iscsi"], "{j}");
    let aoe_path = a["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["transport"] == "aoe")
        .unwrap();
    assert_eq!(aoe_path["target"], "e7.2");
    assert!(aoe_path["portal"].as_str().unwrap().starts_with("ini0 "));
    let b = disks.iter().find(|d| d != &a).unwrap();
    assert_eq!(b["paths"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(b["paths"][0]["transport"], "iscsi");

    // A missing interface: a clear error, exit 1.
    let (code, _, err) = initiator(&ns.name, &["discover", "--aoe", "nosuch0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--aoe IFACE"), "{err}");
    drop(d);
}
