//! Stand-alone AoE target for tests and benchmarks until `opie isu serve`
//! wires up [`target_aoe::AoeServer`].
//!
//! ```text
//! aoe-serve --iface IF [--iface IF2 ...] --shelf N [--buffer-count N]
//!           [--mac-mask MAC ...] [--write-back] SLOT:FILE[:STATEFILE] ...
//! ```
//! The state file (config string) defaults to FILE.aoe-config. Runs until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use blockdev::file::{FileDevice, FileOptions};
use blockdev::DeviceIdentity;
use target_aoe::{AoeConfig, AoeDisk, AoeDiskConfig, AoeServer};

fn usage() -> ! {
    eprintln!("usage: aoe-serve --iface IF [--iface IF ...] --shelf N [--buffer-count N] [--mac-mask MAC ...] [--write-back] SLOT:FILE[:STATE] ...");
    std::process::exit(2)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut cfg = AoeConfig {
        interfaces: vec![],
        shelf: 0,
        buffer_count: None,
        mac_mask: vec![],
        write_back: false,
    };
    let mut disks = vec![];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--iface" => cfg.interfaces.push(val()),
            "--shelf" => cfg.shelf = val().parse().unwrap_or_else(|_| usage()),
            "--buffer-count" => cfg.buffer_count = Some(val().parse().unwrap_or_else(|_| usage())),
            "--mac-mask" => cfg.mac_mask.push(val()),
            "--write-back" => cfg.write_back = true,
            spec if !spec.starts_with('-') => {
                let mut parts = spec.splitn(3, ':');
                let slot: u8 = parts
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage());
                let file = PathBuf::from(parts.next().unwrap_or_else(|| usage()));
                let state = parts
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| file.with_extension("aoe-config"));
                disks.push((slot, file, state));
            }
            _ => usage(),
        }
    }
    if cfg.interfaces.is_empty() || disks.is_empty() {
        usage();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let disks = disks
            .into_iter()
            .map(|(slot, file, state_path)| {
                let dev = FileDevice::open(
                    &file,
                    &FileOptions::default(),
                    DeviceIdentity::from_name(&file.display().to_string()),
                )
                .unwrap_or_else(|e| {
                    eprintln!("aoe-serve: {}: {e}", file.display());
                    std::process::exit(1)
                });
                AoeDisk {
                    config: AoeDiskConfig {
                        slot,
                        mac_mask: None,
                        config_string: None,
                    },
                    device: Arc::new(dev),
                    state_path,
                }
            })
            .collect();
        let server = AoeServer::start(&cfg, disks).unwrap_or_else(|e| {
            eprintln!("aoe-serve: {e}");
            std::process::exit(1)
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if let Err(e) = server.shutdown().await {
            eprintln!("aoe-serve: shutdown: {e}");
            std::process::exit(1);
        }
    });
}
