//! A development runner: serves file-backed LUNs on the given portals, for
//! driving the server with libiscsi tools and benchmarks by hand.
//!
//! `cargo run -p target-iscsi --release --example serve -- IQN FILE SIZE_MIB ADDR...`
//! (set `RO=1` for a read-only LUN, `LUNS=n` for n LUNs on files FILE.0..n).

use std::sync::Arc;
use std::time::Duration;

use blockdev::file::FileOptions;
use blockdev::{DeviceIdentity, FileDevice};
use scsi_disk::{LuConfig, ScsiTarget};
use target_iscsi::server::{Portal, Server, ServerConfig, TargetConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // RT=current runs everything on one thread (plus the blocking pool).
    let rt = if std::env::var("RT").is_ok_and(|v| v == "current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: serve IQN FILE SIZE_MIB ADDR...".into());
    }
    let ro = std::env::var("RO").is_ok_and(|v| v == "1");
    let luns: u64 = std::env::var("LUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let size: u64 = args[2].parse()?;
    let mut lus = Vec::new();
    for i in 0..luns {
        let path = if luns == 1 {
            args[1].clone()
        } else {
            format!("{}.{i}", args[1])
        };
        let opts = FileOptions {
            block_size: 512,
            read_only: ro,
            create_size: Some(size << 20),
        };
        let dev = FileDevice::open(&path, &opts, DeviceIdentity::from_name(&path))?;
        lus.push((
            i,
            LuConfig {
                device: Arc::new(dev),
                read_only: ro,
                state_path: None,
            },
        ));
    }
    let scsi = ScsiTarget::new(&args[0], lus, vec![])?;
    let portals = args[3..]
        .iter()
        .map(|a| {
            Ok(Portal {
                listen: a.parse()?,
                advertise: None,
                tpgt: 1,
            })
        })
        .collect::<Result<Vec<_>, std::net::AddrParseError>>()?;
    let cfg = ServerConfig {
        portals,
        targets: vec![TargetConfig {
            iqn: args[0].clone(),
            alias: None,
            scsi,
            portals: None,
        }],
        nop_interval: Duration::from_secs(5),
        nop_timeout: Duration::from_secs(
            std::env::var("NOP_TIMEOUT_S")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10),
        ),
        ..Default::default()
    };
    let server = Server::bind(cfg).await?;
    eprintln!("listening on {:?}", server.local_addrs());
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
