//! Where and as whom the initiator logs in: portals given as
//! `ADDR[:PORT]` (the ISU's own portal syntax, `aggregator::portal`), and the
//! login each session starts with.

use std::net::SocketAddr;

use initiator_iscsi::{Auth, LoginConfig};

use super::error::CliError;
use aggregator::portal::PortalSpec;

/// The initiator name used unless `--initiator-name` says otherwise.
pub const DEFAULT_INITIATOR: &str = "iqn.2026-01.org.opie:initiator";

/// A portal as the user wrote it and the address it resolved to.
#[derive(Debug, Clone)]
pub struct Portal {
    /// As given (`127.0.0.1:3260`).
    pub name: String,
    /// The address connected to.
    pub addr: SocketAddr,
}

impl Portal {
    /// Parses and resolves `ADDR[:PORT]` (port 3260 by default; a host
    /// name's first address).
    pub fn parse(s: &str) -> Result<Portal, CliError> {
        let bad = |why: String| CliError::Usage(format!("--portal {s:?}: {why}"));
        let spec = PortalSpec::parse(s).map_err(bad)?;
        let addr = spec
            .resolve()
            .map_err(bad)?
            .first()
            .map(|b| b.listen)
            .ok_or_else(|| bad("no address".into()))?;
        Ok(Portal {
            name: s.to_string(),
            addr,
        })
    }
}

/// A login of `initiator` to `target` (`None`: discovery) with `auth`,
/// under a random ISID of its own, so that sessions opened side by side
/// (two portals, two LUNs) never reinstate one another.
pub fn login_config(initiator: &str, target: Option<&str>, auth: &Auth) -> LoginConfig {
    let mut cfg = LoginConfig::new(initiator, target);
    let r: [u8; 5] = rand::random();
    // Random qualifier format (RFC 7143 §10.12.5): T=10b.
    cfg.isid = [0x80, r[0], r[1], r[2], r[3], r[4]];
    cfg.auth = auth.clone();
    cfg
}
