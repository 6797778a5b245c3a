//! Multipath over real links: the head's `MultipathDevice` over two iSCSI
//! sessions, one per link, to opie's target in another network namespace,
//! under verified random I/O while links are cut with `ip link set down`.
//! Needs root (see `mpnet`).

mod mpnet;

use std::sync::Arc;
use std::time::Duration;

use multipath::Config;
use tokio::time::Instant;

use mpnet::head::{failed, head_runtime, multipath_over};
use mpnet::{workload, Net};

#[test]
fn a_cut_link_fails_over_with_no_error_and_no_mismatch() {
    let Some(net) = Net::new() else { return };
    let portals = net.start_target(mpnet::disk(1 << 15));
    let rt = head_runtime(&net);
    rt.block_on(async {
        let dev = Arc::new(multipath_over(&portals, Config::default()).await);
        let until = Instant::now() + Duration::from_secs(6);
        let io = tokio::spawn(workload::run(dev.clone(), 8, 2048, until));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let down = Instant::now();
        net.set_link(0, false);
        let failed_at = tokio::time::timeout(Duration::from_secs(3), failed(&dev, 0))
            .await
            .expect("the cut path is taken out of use");
        let report = io.await.unwrap();
        let took = report.failover(down, failed_at);
        eprintln!(
            "{} I/Os; path out of use {:?} after the cut; failover {took:?}",
            report.ios,
            failed_at - down
        );
        assert_eq!(
            report.errors,
            Vec::<String>::new(),
            "errors reached the caller"
        );
        assert_eq!(
            report.mismatches,
            Vec::<String>::new(),
            "blocks read back wrong"
        );
        let paths = dev.paths();
        assert!(paths[1].stats.completed > 0);
    });
}
