//! The initiator against vblade (the reference AoE target) in a private
//! network namespace: one vblade per network serving the same file as one
//! shelf.slot, so the initiator has two paths. Needs root and vblade; a
//! missing one fails under `CI=true` (see `common`).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, Bytes, WriteFlags};
use common::{check, root_or_skip, stamped, Netns};
use initiator_aoe::{AoeDevice, Driver, Settings};

const SHELF: u16 = 11;
const SLOT: u8 = 3;
const SECTORS: u64 = 8192;

/// A vblade process, killed on drop.
struct Vblade(Child);

impl Drop for Vblade {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vblade_present() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v vblade"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot run under CI=true: vblade is not installed (apt-get install vblade)"
        );
        eprintln!("SKIP: vblade is not installed");
    }
    found
}

#[test]
fn verified_io_against_vblade_over_two_links() {
    if !root_or_skip("the vblade test") || !vblade_present() {
        return;
    }
    let Some(ns) = Netns::enter() else { return };
    ns.network("br0", ["tgt0", "ini0"], 1500);
    ns.network("br1", ["tgt1", "ini1"], 1500);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(SECTORS * 512)
        .unwrap();
    let _blades: Vec<Vblade> = ["tgt0", "tgt1"]
        .iter()
        .map(|nic| {
            Vblade(
                Command::new("ip")
                    .args(["netns", "exec", &ns.0, "vblade", "-b", "16"])
                    .args([SHELF.to_string(), SLOT.to_string(), nic.to_string()])
                    .arg(&img)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start vblade"),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ifs = vec!["ini0".to_string(), "ini1".to_string()];
        let driver = Driver::open(&ifs).unwrap();
        // vblade answers discovery a moment after it starts.
        let mut found = Vec::new();
        for _ in 0..20 {
            found = driver.discover(Duration::from_millis(100)).await;
            if found.first().is_some_and(|f| f.macs.len() == 2) {
                break;
            }
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].shelf, found[0].slot), (SHELF, SLOT));
        assert_eq!(found[0].macs.len(), 2, "answered on both links");
        let d = AoeDevice::attach(
            &driver,
            &[],
            SHELF,
            SLOT,
            Settings::default(),
            Duration::from_secs(2),
        )
        .await
        .expect("open vblade's target");
        assert_eq!(d.geometry().num_blocks, SECTORS);
        // 8 writers at once (QD 8 and more in frames), each on its own
        // 1024-sector region, 20 generations of 24-sector writes read back.
        let d = Arc::new(d);
        let mut jobs = Vec::new();
        for w in 0..8u64 {
            let d = d.clone();
            jobs.push(tokio::spawn(async move {
                let mut last = vec![0u64; 1024];
                for gen in 1..=20u64 {
                    let lba = w * 1024 + (gen * 37) % 1000;
                    d.write(lba, Bytes::from(stamped(lba, 24, gen)), WriteFlags::NONE)
                        .await
                        .expect("write");
                    let at = (lba - w * 1024) as usize;
                    last[at..at + 24].fill(gen);
                }
                d.flush().await.expect("flush");
                let r = d.read(w * 1024, 1024).await.expect("read");
                for (l, g) in last.iter().enumerate() {
                    check(w * 1024 + l as u64, &r[l * 512..][..512], *g);
                }
            }));
        }
        for j in jobs {
            j.await.unwrap();
        }
    });
}
