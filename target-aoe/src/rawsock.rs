//! AF_PACKET raw sockets bound to one interface and the AoE EtherType, with
//! batched receive (`recvmmsg`) and transmit (`sendmmsg`, scatter/gather).
//!
//! The interface (index, MAC address, state) is looked up with
//! `pnet_datalink`. Its datalink channel is not used for the frames: it moves
//! one frame per system call, while a window of AoE frames arrives in bursts
//! that `recvmmsg`/`sendmmsg` take in one call each, and replies carry read
//! data by scatter/gather without a copy into a send buffer.
//!
//! This is the only module with `unsafe`: each block is a plain libc call on
//! buffers this module owns, and says why it is sound.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::frame::{Mac, ETHERTYPE_AOE, ETH_HEADER_LEN};

/// Packet type of frames this host sent (seen by taps); never requests for us.
const PACKET_OUTGOING: u8 = 4;

/// A raw AoE socket on one interface.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
    name: String,
    mac: Mac,
    mtu: usize,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

impl RawSocket {
    /// Opens a socket on `ifname` receiving only AoE frames, with a receive
    /// buffer of at least `rcvbuf` bytes and a receive timeout of `timeout`.
    pub fn open(ifname: &str, rcvbuf: usize, timeout: Duration) -> io::Result<RawSocket> {
        let link = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == ifname)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such interface"))?;
        let mac = link.mac.map(|m| Mac(m.octets())).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface has no MAC address (AoE needs Ethernet)",
            )
        })?;
        let ifindex = i32::try_from(link.index).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range")
        })?;
        let proto = ETHERTYPE_AOE.to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        })?;
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a valid sockaddr_ll and the length matches it.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        let sock = RawSocket {
            fd,
            ifindex,
            name: ifname.to_string(),
            mac,
            mtu: 0,
        };
        let want = rcvbuf.min(i32::MAX as usize) as libc::c_int;
        if sock
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want)
            .is_err()
        {
            sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, want)?;
        }
        // Bypass the qdisc: we do our own batching and AoE has its own retransmits.
        let _ = sock.setsockopt(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval and the length matches it.
        cvt(unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        let mut req = ifreq_for(ifname)?;
        // (pnet_datalink's interface list has no MTU.)
        // SAFETY: SIOCGIFMTU fills ifr_ifru.ifru_mtu of the ifreq we pass.
        cvt(unsafe { libc::ioctl(sock.fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })?;
        // SAFETY: the kernel just wrote the mtu member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu } as usize;
        Ok(RawSocket { mtu, ..sock })
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: v is a valid c_int and the length matches it.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    /// The receive buffer size the kernel granted.
    pub fn rcvbuf(&self) -> io::Result<usize> {
        let mut v: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for writes of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        })?;
        Ok(v.max(0) as usize)
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Interface MAC address.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Interface MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Interface index.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// Receives up to `batch.capacity()` frames: waits for the first (up to the
    /// socket's timeout), then takes whatever else is queued. Returns how many
    /// arrived; 0 on timeout. Frames this host sent are skipped.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.bufs.len();
        for i in 0..n {
            batch.iov[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: batch.bufs[i].len(),
            };
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            batch.hdrs[i] = unsafe { mem::zeroed() };
            batch.hdrs[i].msg_hdr.msg_iov = &mut batch.iov[i];
            batch.hdrs[i].msg_hdr.msg_iovlen = 1;
            batch.hdrs[i].msg_hdr.msg_name =
                &mut batch.addrs[i] as *mut libc::sockaddr_ll as *mut libc::c_void;
            batch.hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as u32;
        }
        // SAFETY: every header points at an iovec and address of `batch`, which
        // outlive the call; buffer lengths are the vectors' lengths.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                batch.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => {
                    batch.count = 0;
                    Ok(0)
                }
                _ => Err(e),
            };
        }
        let rc = rc as usize;
        let mut kept = 0;
        for i in 0..rc {
            let len = batch.hdrs[i].msg_len as usize;
            let truncated = batch.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            if batch.addrs[i].sll_pkttype == PACKET_OUTGOING || truncated {
                continue;
            }
            batch.lens[kept] = len;
            if kept != i {
                batch.bufs.swap(kept, i);
            }
            kept += 1;
        }
        batch.count = kept;
        Ok(kept)
    }

    /// Sends every frame of `frames` (each the concatenation of its parts),
    /// in as few `sendmmsg` calls as the kernel allows. Returns how many were
    /// sent; a frame the kernel refuses (e.g. transmit queue full) is dropped,
    /// as the initiator retransmits.
    pub fn send_batch<'a, I>(&self, frames: I) -> io::Result<usize>
    where
        I: IntoIterator<Item = [&'a [u8]; 2]>,
    {
        let frames: Vec<[&[u8]; 2]> = frames.into_iter().collect();
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(frames.len() * 2);
        for f in &frames {
            for part in f {
                iov.push(libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                });
            }
        }
        let mut hdrs: Vec<libc::mmsghdr> = (0..frames.len())
            .map(|i| {
                // SAFETY: mmsghdr is plain old data; all-zero is valid.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_iov = &mut iov[2 * i];
                h.msg_hdr.msg_iovlen = if frames[i][1].is_empty() { 1 } else { 2 };
                h
            })
            .collect();
        let mut sent = 0;
        while sent < hdrs.len() {
            // SAFETY: the headers point at iovecs over slices borrowed for the
            // whole call; the kernel only reads them.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    hdrs[sent..].as_mut_ptr(),
                    (hdrs.len() - sent) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        sent += 1; // drop this one, the initiator retransmits
                        continue;
                    }
                    _ if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        sent += 1;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            sent += rc as usize;
        }
        Ok(frames.len())
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.send_batch([[frame, &[][..]]]).map(|_| ())
    }
}

/// Buffers for one [`RawSocket::recv_batch`] call, reused across calls.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_ll>,
    count: usize,
}

// SAFETY: the raw pointers inside iov/hdrs only ever point into this struct's
// own buffers and are rebuilt before every use.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for `n` frames of an interface with the given MTU.
    pub fn new(n: usize, mtu: usize) -> RecvBatch {
        let size = mtu + ETH_HEADER_LEN + 4;
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            lens: vec![0; n],
            // SAFETY: iovec, mmsghdr and sockaddr_ll are plain old data; zero is valid.
            iov: (0..n).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            hdrs: (0..n).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            addrs: (0..n).map(|_| unsafe { mem::zeroed() }).collect(),
            count: 0,
        }
    }

    /// The frames received by the last call.
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.count).map(|i| &self.bufs[i][..self.lens[i]])
    }
}
