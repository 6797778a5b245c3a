//! `opie initiator discover`: SendTargets on each portal.

use crate::output::outln;
use initiator_iscsi::{Auth, Session};
use serde::Serialize;

use super::error::CliError;
use super::portal::{login_config, Portal};

/// One target a portal reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiscoveredTarget {
    /// TargetName.
    pub name: String,
    /// Its TargetAddress values (`host:port,tpgt`), in the target's order.
    pub addresses: Vec<String>,
}

/// What one portal reported.
#[derive(Debug, Clone, Serialize)]
pub struct PortalTargets {
    /// The portal asked.
    pub portal: String,
    /// The targets it reported.
    pub targets: Vec<DiscoveredTarget>,
}

/// Opens a discovery session on `portal`, asks SendTargets=All, logs out.
pub async fn discover(
    portal: &Portal,
    initiator: &str,
    auth: &Auth,
) -> Result<PortalTargets, CliError> {
    let fail = |source| CliError::Portal {
        portal: portal.name.clone(),
        target: None,
        source,
    };
    let mut s = Session::connect(portal.addr, login_config(initiator, None, auth))
        .await
        .map_err(fail)?;
    let keys = s.send_targets("All").await.map_err(fail)?;
    // A discovery session that ends badly has still answered.
    let _ = s.logout().await;
    let mut targets: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in keys.0 {
        match (k.as_str(), targets.last_mut()) {
            ("TargetName", _) => targets.push(DiscoveredTarget {
                name: v,
                addresses: Vec::new(),
            }),
            ("TargetAddress", Some(t)) => t.addresses.push(v),
            _ => {}
        }
    }
    Ok(PortalTargets {
        portal: portal.name.clone(),
        targets,
    })
}

/// The text form: one line per target and address.
pub fn print(found: &[PortalTargets]) {
    for p in found {
        outln!("portal {}", p.portal);
        if p.targets.is_empty() {
            outln!("  (no targets visible to this initiator)");
        }
        for t in &p.targets {
            outln!("  {}", t.name);
            for a in &t.addresses {
                outln!("    at {a}");
            }
        }
    }
}
