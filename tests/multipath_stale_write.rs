//! The stale-write case over real sessions: a write held on path A by a
//! proxy that keeps its data, path A dead meanwhile; multipath re-issues
//! the write on path B. Once the write is reported, the caller rewrites the
//! same blocks, and then the proxy lets the held copy go to the ISU: the
//! newer data must survive. It does because multipath reports the write
//! only once A is fenced (`IscsiPath`: its session reinstated, which makes
//! the ISU end the old session and close the held copy's connection), so
//! the test lets A come back when the write waits for that. With the fence
//! removed the write is reported while A is dead and the stale copy lands
//! over the rewrite. Needs root (see `mpnet`).

mod mpnet;

use std::time::Duration;

use blockdev::BlockDevice;
use multipath::{Config, SelectorKind};
use tokio::time::{timeout, Instant};

use mpnet::head::{failed, head_runtime, multipath_over};
use mpnet::proxy::HoldingProxy;
use mpnet::Net;

const LBA: u64 = 100;
const BLOCKS: u64 = 8;

#[test]
fn a_held_write_released_after_a_rewrite_elsewhere_never_lands_over_it() {
    let Some(net) = Net::new() else { return };
    let portals = net.start_target(mpnet::disk(1 << 12));
    let rt = head_runtime(&net);
    rt.block_on(async {
        // Path A (0) through the proxy, path B (1) straight to the ISU.
        let proxy = HoldingProxy::start([127, 0, 0, 1].into(), portals[0]).await;
        let dev = std::sync::Arc::new(
            multipath_over(
                &[proxy.addr, portals[1]],
                Config {
                    // Round-robin from path 0: the first write takes A.
                    selector: SelectorKind::RoundRobin,
                    ..Config::default()
                },
            )
            .await,
        );
        // A's connection now keeps what the head sends, and A cannot be
        // reached again for now.
        proxy.hold();
        proxy.refuse(true);
        let start = Instant::now();
        let first = {
            let dev = dev.clone();
            tokio::spawn(async move {
                dev.write(LBA, mpnet::stamps(LBA, BLOCKS, 1), Default::default())
                    .await
            })
        };
        timeout(Duration::from_secs(10), failed(&dev, 0))
            .await
            .expect("path A is found dead");
        eprintln!("path A out of use after {:?}", start.elapsed());
        // While A stays dead, the write may only be reported if nothing of
        // it can land any more; with A's fence that needs A back (its
        // session reinstated), so A comes back if the write waits.
        let mut first = first;
        let reported_while_dead = timeout(Duration::from_secs(3), &mut first).await;
        eprintln!("reported while A was dead: {}", reported_while_dead.is_ok());
        let first = match reported_while_dead {
            Ok(done) => done,
            Err(_) => {
                proxy.refuse(false);
                timeout(Duration::from_secs(30), first)
                    .await
                    .expect("the write ends once A is fenced")
            }
        };
        first.unwrap().expect("the first write succeeds");
        assert!(
            dev.paths()[0].stats.failed_over >= 1,
            "the first write went to A and was re-issued"
        );
        // Reported: the caller writes the same blocks again, newer data.
        dev.write(LBA, mpnet::stamps(LBA, BLOCKS, 2), Default::default())
            .await
            .expect("the rewrite succeeds");
        // Now the held copy goes to the ISU, late; then A may come back.
        proxy.release();
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.refuse(false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let back = dev.read(LBA, BLOCKS as u32).await.unwrap();
        mpnet::verify(&back, LBA, 2).expect("the newer data survives");
    });
}
