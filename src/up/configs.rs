//! The configs `opie up` writes for a new appliance: three ISUs with one
//! sparse disk each on two loopback portals, and a head with one RAID5
//! array over the three disks, one volume (no size: all the array's space)
//! and one export.
//! They are ordinary `opie isu serve` and `opie head serve` configs, written
//! once; after that they are the user's (edits are kept).

use std::io::Write;
use std::path::Path;

use aggregator::portal::PortalSpec;

use super::error::UpError;
use super::layout::{Layout, ISUS};

/// The IQN prefix of everything `opie up` names.
pub const BASE_IQN: &str = "iqn.2026-01.org.opie.up";

/// The second loopback address each ISU listens on (its second path).
pub const SECOND_LOOPBACK: &str = "127.0.0.2";

/// What a new appliance's configs say.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The head's portals.
    pub head_listen: Vec<PortalSpec>,
    /// Each ISU's port (on 127.0.0.1 and [`SECOND_LOOPBACK`]).
    pub isu_ports: [u16; ISUS],
    /// Each ISU's disk size in bytes.
    pub disk_bytes: u64,
}

/// The target name of ISU `n`'s disk.
pub fn isu_target(n: usize) -> String {
    format!("{BASE_IQN}:isu{n}:d0")
}

/// `bytes` as the configs write sizes: `"1G"`, `"64M"`, or bytes.
fn size_text(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes.is_multiple_of(GIB) {
        format!("\"{}G\"", bytes / GIB)
    } else if bytes.is_multiple_of(MIB) {
        format!("\"{}M\"", bytes / MIB)
    } else {
        bytes.to_string()
    }
}

/// ISU `n`'s config.
pub fn isu_config(n: usize, plan: &Plan) -> String {
    let port = plan.isu_ports[n];
    format!(
        "# ISU {n} of `opie up`: written once, then yours (edits are kept).\n\
         # Reference: README, \"opie isu serve\".\n\
         [isu]\n\
         base_iqn = \"{BASE_IQN}:isu{n}\"\n\
         listen = [\"127.0.0.1:{port},1\", \"{SECOND_LOOPBACK}:{port},2\"]\n\
         data_dir = \"data\"\n\
         \n\
         # A sparse file, data/d0.img; target {target}.\n\
         [[disk]]\n\
         name = \"d0\"\n\
         size = {size}\n",
        target = isu_target(n),
        size = size_text(plan.disk_bytes),
    )
}

/// The head's config.
pub fn head_config(plan: &Plan) -> String {
    let listen: Vec<String> = plan
        .head_listen
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect();
    let mut s = format!(
        "# The head of `opie up`: written once, then yours (edits are kept).\n\
         # Reference: README, \"opie head serve\".\n\
         [head]\n\
         initiator = \"{BASE_IQN}:head\"\n\
         listen = [{}]\n\
         data_dir = \"data\"\n\n",
        listen.join(", ")
    );
    for (n, port) in plan.isu_ports.iter().enumerate() {
        s += &format!(
            "[[isu]]\nname = \"isu{n}\"\nportals = [\"127.0.0.1:{port}\", \"{SECOND_LOOPBACK}:{port}\"]\n\n"
        );
    }
    s += "# RAID5 over one disk of each ISU; created at the first start, assembled\n\
          # from the disks' superblocks at every start after that.\n\
          [[array]]\nname = \"a0\"\nmembers = [\n";
    for n in 0..ISUS {
        s += &format!(
            "  {{ isu = \"isu{n}\", target = \"{}\" }},\n",
            isu_target(n)
        );
    }
    s += &format!(
        "]\n\n[[volume]]\nname = \"v0\"\narray = \"a0\"\n\n\
         [[export]]\nvolume = \"v0\"\niqn = \"{BASE_IQN}:v0\"\n"
    );
    s
}

/// Writes the configs of `plan`, each only if it does not exist.
pub fn write_new(layout: &Layout, plan: &Plan) -> Result<(), UpError> {
    for n in 0..ISUS {
        write_once(&layout.isu_config(n), &isu_config(n, plan))?;
    }
    write_once(&layout.head_config(), &head_config(plan))
}

fn write_once(path: &Path, text: &str) -> Result<(), UpError> {
    let io = |source| UpError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IsuConfig, Overrides};
    use aggregator::config::{HeadConfig, Member};

    fn plan() -> Plan {
        Plan {
            head_listen: vec![PortalSpec::parse("127.0.0.1:3260").unwrap()],
            isu_ports: [3261, 3262, 3263],
            disk_bytes: 64 << 20,
        }
    }

    /// What `opie up` writes is what the daemons load, and says what the
    /// plan says.
    #[test]
    fn configs_load_as_planned() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        write_new(&layout, &plan()).unwrap();
        for n in 0..ISUS {
            let c = IsuConfig::load(&layout.isu_config(n), &Overrides::default()).unwrap();
            let listen: Vec<String> = c.listen.iter().map(|p| p.to_string()).collect();
            let port = 3261 + n;
            assert_eq!(
                listen,
                [format!("127.0.0.1:{port},1"), format!("127.0.0.2:{port},2")]
            );
            assert_eq!(c.disks.len(), 1);
            assert_eq!(c.disks[0].size, Some(64 << 20));
            assert_eq!(c.disks[0].iqn, isu_target(n));
            assert_eq!(c.data_dir, layout.isu_dir(n).join("data"));
        }
        let h = HeadConfig::load(&layout.head_config()).unwrap();
        assert_eq!(h.listen[0].spec.to_string(), "127.0.0.1:3260,1");
        assert_eq!(h.isus.len(), ISUS);
        assert_eq!(h.arrays.len(), 1);
        for (n, m) in h.arrays[0].members.iter().enumerate() {
            match m {
                Member::Lun(r) => {
                    assert_eq!(r.isu, format!("isu{n}"));
                    assert_eq!(r.target, isu_target(n));
                }
                Member::Identity(_) => panic!("member {n} by identity"),
            }
        }
        assert_eq!(h.exports[0].iqn, format!("{BASE_IQN}:v0"));
        assert_eq!(h.data_dir, layout.head_dir().join("data"));
    }

    /// A config that exists is never overwritten.
    #[test]
    fn existing_configs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(layout.head_dir()).unwrap();
        std::fs::write(layout.head_config(), "# mine\n").unwrap();
        assert!(write_new(&layout, &plan()).is_err());
        assert_eq!(
            std::fs::read_to_string(layout.head_config()).unwrap(),
            "# mine\n"
        );
    }

    #[test]
    fn sizes_are_written_readably() {
        assert_eq!(size_text(1 << 30), "\"1G\"");
        assert_eq!(size_text(96 << 20), "\"96M\"");
        assert_eq!(size_text(1536 * 1024), "1572864");
    }
}
