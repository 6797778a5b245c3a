//! A small blocking AoE test and benchmark client on the codec and the raw
//! sockets: request builders (sans-I/O) and a [`Client`] over a [`RawSocket`]
//! that sends a frame and waits for the reply with its tag.
//!
//! It is what the target's tests, `opie`'s AoE tests and the `aoe-bench` and
//! `aoe-flood` examples drive the target with. It is **not** an initiator: no
//! discovery state, no retransmission, no window, no error mapping, one thread
//! blocking on the socket. The head's asynchronous AoE initiator (issue 14)
//! will replace it; until then keep it this small. Behind the `client`
//! feature, so nothing in production links it.

use std::io;
use std::time::{Duration, Instant};

use crate::frame::{
    encode_headers, pad_min, AtaArg, Command, ConfigArg, ConfigCommand, Frame, Header, Mac,
    MaskArg, ReserveArg, AOE_VERSION,
};
use crate::rawsock::{RawSocket, RecvBatch};

/// Builds a request frame: headers, then `arg` (already encoded), then `data`.
/// (One argument per header field: this mirrors the wire layout.)
#[allow(clippy::too_many_arguments)]
pub fn request(
    dst: Mac,
    src: Mac,
    shelf: u16,
    slot: u8,
    command: Command,
    tag: u32,
    arg: &[u8],
    data: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + arg.len() + data.len());
    request_head(&mut v, dst, src, shelf, slot, command, tag, arg);
    v.extend_from_slice(data);
    pad_min(&mut v);
    v
}

/// Writes a request's headers and `arg` into `out` (cleared first), with no
/// data and no padding: for a sender that sends the data as a second part
/// (pad with [`pad_min`] when there is none).
#[allow(clippy::too_many_arguments)]
pub fn request_head(
    out: &mut Vec<u8>,
    dst: Mac,
    src: Mac,
    shelf: u16,
    slot: u8,
    command: Command,
    tag: u32,
    arg: &[u8],
) {
    out.clear();
    let h = Header {
        version: AOE_VERSION,
        flags: 0,
        error: 0,
        shelf,
        slot,
        command,
        tag,
    };
    encode_headers(out, dst, src, &h);
    out.extend_from_slice(arg);
}

/// Encodes an ATA argument.
pub fn ata_arg(a: &AtaArg) -> Vec<u8> {
    let mut v = Vec::new();
    a.encode(&mut v);
    v
}

/// Encodes a Query Config request argument.
pub fn config_arg(ccmd: ConfigCommand, config: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ConfigArg {
        buffer_count: 0,
        firmware: 0,
        max_sectors: 0,
        aoe_version: AOE_VERSION,
        ccmd,
        config: config.to_vec(),
    }
    .encode(&mut v);
    v
}

/// Encodes a MAC Mask List request argument.
pub fn mask_arg(m: &MaskArg) -> Vec<u8> {
    let mut v = Vec::new();
    m.encode(&mut v);
    v
}

/// Encodes a Reserve/Release request argument.
pub fn reserve_arg(r: &ReserveArg) -> Vec<u8> {
    let mut v = Vec::new();
    r.encode(&mut v);
    v
}

/// A blocking test initiator on one interface.
pub struct Client {
    sock: RawSocket,
    batch: RecvBatch,
    next_tag: u32,
}

/// A received response, owned.
#[derive(Debug, Clone)]
pub struct Response {
    /// The whole frame.
    pub bytes: Vec<u8>,
}

impl Response {
    /// The decoded frame.
    pub fn frame(&self) -> Frame<'_> {
        Frame::decode(&self.bytes).expect("responses are checked when received")
    }
}

impl Client {
    /// Opens a client on `ifname`.
    pub fn open(ifname: &str) -> io::Result<Client> {
        Self::open_with_timeout(ifname, Duration::from_millis(20))
    }

    /// Opens a client on `ifname` whose receive calls wait at most `timeout`
    /// for a frame (a client with its own pace, e.g. a benchmark, wants less
    /// than [`Client::open`]'s 20 ms).
    pub fn open_with_timeout(ifname: &str, timeout: Duration) -> io::Result<Client> {
        // recvmmsg here, so the tests cover it while the server under test
        // takes the receive ring.
        let sock = RawSocket::open_without_ring(ifname, 8 << 20, timeout)?;
        let batch = RecvBatch::new(64, sock.mtu());
        Ok(Client {
            sock,
            batch,
            next_tag: 1,
        })
    }

    /// The client's MAC.
    pub fn mac(&self) -> Mac {
        self.sock.mac()
    }

    /// The socket.
    pub fn socket(&self) -> &RawSocket {
        &self.sock
    }

    /// A fresh tag (bit 31 clear, as the Linux driver expects of targets' echoes).
    pub fn tag(&mut self) -> u32 {
        self.next_tag = (self.next_tag + 1) & 0x7fff_ffff;
        self.next_tag
    }

    /// Sends a raw frame.
    pub fn send_raw(&self, frame: &[u8]) -> io::Result<()> {
        self.sock.send(frame)
    }

    /// Collects every response (any tag) that arrives within `wait`.
    pub fn responses(&mut self, wait: Duration) -> io::Result<Vec<Response>> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        while Instant::now() < end {
            self.sock.recv_batch(&mut self.batch)?;
            for f in self.batch.frames() {
                if Frame::decode(f).is_ok_and(|fr| fr.header.is_response()) {
                    got.push(Response { bytes: f.to_vec() });
                }
            }
        }
        Ok(got)
    }

    /// Collects every response with `tag` that arrives within `wait`.
    pub fn collect(&mut self, tag: u32, wait: Duration) -> io::Result<Vec<Response>> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        while Instant::now() < end {
            self.sock.recv_batch(&mut self.batch)?;
            for f in self.batch.frames() {
                if let Ok(fr) = Frame::decode(f) {
                    if fr.header.is_response() && fr.header.tag == tag {
                        got.push(Response { bytes: f.to_vec() });
                    }
                }
            }
        }
        Ok(got)
    }

    /// Sends a request and waits up to `wait` for the first response with its tag.
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &mut self,
        dst: Mac,
        shelf: u16,
        slot: u8,
        cmd: Command,
        arg: &[u8],
        data: &[u8],
        wait: Duration,
    ) -> io::Result<Option<Response>> {
        let tag = self.tag();
        let f = request(dst, self.mac(), shelf, slot, cmd, tag, arg, data);
        self.sock.send(&f)?;
        self.wait_for(tag, wait)
    }

    /// Waits up to `wait` for the first response with `tag`.
    pub fn wait_for(&mut self, tag: u32, wait: Duration) -> io::Result<Option<Response>> {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            self.sock.recv_batch(&mut self.batch)?;
            for f in self.batch.frames() {
                if let Ok(fr) = Frame::decode(f) {
                    if fr.header.is_response() && fr.header.tag == tag {
                        return Ok(Some(Response { bytes: f.to_vec() }));
                    }
                }
            }
        }
        Ok(None)
    }
}
