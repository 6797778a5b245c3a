//! Discovery, sans-I/O: every target that answers a broadcast Query Config,
//! with the MACs it answered from on each local interface.
//!
//! The edge broadcasts [`crate::wire::discovery`] on each interface and
//! hands every frame received until its deadline to [`Discovery::take`];
//! [`Discovery::found`] then lists the targets by shelf.slot.

use std::collections::BTreeMap;

use aoe_proto::frame::{Command, ConfigArg, Frame, Mac, FLAG_ERROR};

/// A target that answered Query Config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Shelf.
    pub shelf: u16,
    /// Slot.
    pub slot: u8,
    /// The MACs it answered from, by the name of the local interface the
    /// answer arrived on.
    pub macs: BTreeMap<String, Vec<Mac>>,
    /// Frames it takes at once (the last answer's).
    pub buffer_count: u16,
    /// Its firmware version.
    pub firmware: u16,
    /// Most sectors per ATA frame it takes (its own word, before any MTU).
    pub max_sectors: u8,
    /// Its config string.
    pub config: Vec<u8>,
}

/// The answers to one discovery so far.
#[derive(Debug, Default, Clone)]
pub struct Discovery {
    found: BTreeMap<(u16, u8), Found>,
}

impl Discovery {
    /// Takes a frame received on the interface named `ifname`: a Query
    /// Config response adds its target (or the MAC to a known one).
    /// Anything else, or a malformed answer, is ignored; returns whether it
    /// was taken.
    pub fn take(&mut self, ifname: &str, frame: &Frame<'_>) -> bool {
        let h = &frame.header;
        if !h.is_response() || h.flags & FLAG_ERROR != 0 || h.command != Command::QueryConfig {
            return false;
        }
        let Ok(c) = ConfigArg::decode(frame.payload) else {
            return false;
        };
        let f = self
            .found
            .entry((h.shelf, h.slot))
            .or_insert_with(|| Found {
                shelf: h.shelf,
                slot: h.slot,
                macs: BTreeMap::new(),
                buffer_count: 0,
                firmware: 0,
                max_sectors: 0,
                config: Vec::new(),
            });
        f.buffer_count = c.buffer_count;
        f.firmware = c.firmware;
        f.max_sectors = c.max_sectors;
        f.config = c.config;
        let macs = f.macs.entry(ifname.to_string()).or_default();
        if !macs.contains(&frame.src) {
            macs.push(frame.src);
        }
        true
    }

    /// The targets found, by shelf.slot.
    pub fn found(self) -> Vec<Found> {
        self.found.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoe_proto::frame::{encode_headers, ConfigCommand, Header, AOE_VERSION};

    fn answer(src: Mac, shelf: u16, slot: u8, bufcnt: u16) -> Vec<u8> {
        let h = Header {
            version: AOE_VERSION,
            flags: 0,
            error: 0,
            shelf,
            slot,
            command: Command::QueryConfig,
            tag: 0,
        }
        .response();
        let mut out = Vec::new();
        encode_headers(&mut out, Mac([2; 6]), src, &h);
        ConfigArg {
            buffer_count: bufcnt,
            firmware: 0x4019,
            max_sectors: 2,
            aoe_version: AOE_VERSION,
            ccmd: ConfigCommand::Read,
            config: b"cfg".to_vec(),
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn every_target_with_its_macs_per_interface() {
        let mut d = Discovery::default();
        let (a, b) = (Mac([4; 6]), Mac([5; 6]));
        for (ifname, src, slot) in [("e0", a, 1), ("e1", b, 1), ("e1", b, 1), ("e0", a, 2)] {
            assert!(d.take(ifname, &Frame::decode(&answer(src, 7, slot, 16)).unwrap()));
        }
        // A request (ours, looped back) is not an answer.
        let mut req = answer(a, 7, 3, 16);
        req[14] &= !0x08;
        assert!(!d.take("e0", &Frame::decode(&req).unwrap()));
        let found = d.found();
        assert_eq!(found.len(), 2);
        let one = &found[0];
        assert_eq!((one.shelf, one.slot, one.buffer_count), (7, 1, 16));
        assert_eq!((one.firmware, one.max_sectors), (0x4019, 2));
        assert_eq!(one.config, b"cfg");
        assert_eq!(one.macs["e0"], vec![a]);
        assert_eq!(
            one.macs["e1"],
            vec![b],
            "a MAC once however often it answers"
        );
        assert_eq!(found[1].macs.keys().collect::<Vec<_>>(), ["e0"]);
    }
}
