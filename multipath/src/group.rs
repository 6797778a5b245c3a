//! Grouping of discovered paths into devices by the canonical disk
//! identity: every path that reports the same [`DeviceIdentity`] reaches the
//! same disk.

use std::collections::BTreeMap;

use blockdev::DeviceIdentity;

use crate::error::MultipathError;

/// The transport a path runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// An iSCSI session.
    Iscsi,
    /// AoE over an interface.
    Aoe,
}

/// The paths of one disk, by their index in the list given to [`group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGroup {
    /// The disk they all reach.
    pub identity: DeviceIdentity,
    /// Indexes of its paths, ascending.
    pub paths: Vec<usize>,
}

/// Groups paths, given as (identity, transport), into one group per disk,
/// in the order each disk was first seen. A disk reached over both iSCSI and
/// AoE is an error unless `allow_mixing`.
pub fn group(
    paths: &[(DeviceIdentity, Transport)],
    allow_mixing: bool,
) -> Result<Vec<PathGroup>, MultipathError> {
    let mut groups: Vec<PathGroup> = Vec::new();
    let mut transports: BTreeMap<usize, Transport> = BTreeMap::new();
    for (index, (identity, transport)) in paths.iter().enumerate() {
        match groups.iter().position(|g| &g.identity == identity) {
            Some(g) => {
                if !allow_mixing && transports[&g] != *transport {
                    return Err(MultipathError::MixedTransports {
                        identity: identity.clone(),
                    });
                }
                groups[g].paths.push(index);
            }
            None => {
                transports.insert(groups.len(), *transport);
                groups.push(PathGroup {
                    identity: identity.clone(),
                    paths: vec![index],
                });
            }
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_to_one_disk_form_one_group() {
        let (a, b) = (
            DeviceIdentity::from_name("a"),
            DeviceIdentity::from_name("b"),
        );
        let paths = [
            (a.clone(), Transport::Iscsi),
            (b.clone(), Transport::Iscsi),
            (a.clone(), Transport::Iscsi),
        ];
        let g = group(&paths, false).unwrap();
        assert_eq!(
            g,
            [
                PathGroup {
                    identity: a,
                    paths: vec![0, 2]
                },
                PathGroup {
                    identity: b,
                    paths: vec![1]
                }
            ]
        );
    }

    #[test]
    fn mixing_transports_needs_permission() {
        let a = DeviceIdentity::from_name("a");
        let paths = [(a.clone(), Transport::Iscsi), (a.clone(), Transport::Aoe)];
        assert!(matches!(
            group(&paths, false),
            Err(MultipathError::MixedTransports { identity }) if identity == a
        ));
        assert_eq!(group(&paths, true).unwrap()[0].paths, [0, 1]);
    }
}
