//! The AoE (ATA over Ethernet, revision 11) wire format and raw-socket edge,
//! shared by opie's AoE target (`target-aoe`, on the ISU) and its AoE
//! initiator (the head's, to come), so both roles speak one codec.
//!
//! - [`frame`]: the frame codec (Ethernet and AoE headers, the arguments of
//!   the four commands, error codes), sans-I/O;
//! - [`ata`]: the ATA taskfile registers the ATA argument carries (opcodes,
//!   status and error bits), sans-I/O;
//! - [`identify`]: reading an IDENTIFY DEVICE page (capacity, LBA48, names,
//!   the disk's whole identity) and writing the identity words into one,
//!   sans-I/O;
//! - [`outcome`]: what the reply to an ATA command says (registers, AoE
//!   errors) and the block-device error it stands for, both ways, sans-I/O;
//! - [`rawsock`]: AF_PACKET sockets bound to one interface and the AoE
//!   EtherType, with batched receive (a `PACKET_RX_RING`) and transmit
//!   (`sendmmsg`), the only I/O here and the only `unsafe`;
//! - `client` (feature `client`): a small blocking test and benchmark client
//!   on the two, used by the tests and the `aoe-bench`/`aoe-flood` examples;
//!   not a production initiator.

pub mod ata;
#[cfg(feature = "client")]
pub mod client;
pub mod frame;
pub mod identify;
pub mod outcome;
pub mod rawsock;
