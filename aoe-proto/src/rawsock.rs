//! AF_PACKET raw sockets bound to one interface and the AoE EtherType, with
//! batched receive (a `PACKET_RX_RING`, or `recvmmsg` where the kernel gives
//! no ring) and transmit (`sendmmsg`, scatter/gather).
//!
//! The receive ring (TPACKET_V2) is memory shared with the kernel: it copies
//! each frame into the next free slot as it arrives, and the receiver takes
//! every frame waiting without a system call, sleeping in `poll` only when
//! the ring is empty. Frames are copied out of their slots (a request is
//! small; a write's data is copied once, as `recvmmsg` would), so slots go
//! back to the kernel at once. Transmit has no ring on purpose: a
//! `PACKET_TX_RING` slot is reusable as soon as the receiver takes the frame
//! over (before it reads the data, on veth or tap), so a busy ring could
//! overwrite a reply still queued for a local reader.
//!
//! The interface (index, MAC address, state) is looked up with
//! `pnet_datalink`. Its datalink channel is not used for the frames: it moves
//! one frame per system call, while a window of AoE frames arrives in bursts,
//! and replies carry read data by scatter/gather without a copy into a send
//! buffer.
//!
//! This is the only module with `unsafe`: each block is a plain libc call on
//! buffers this module owns, or an access to a ring slot the kernel has
//! handed over, and says why it is sound.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::frame::{Mac, ETHERTYPE_AOE, ETH_HEADER_LEN};

/// Packet type of frames this host sent (seen by taps); never requests for us.
const PACKET_OUTGOING: u8 = 4;

/// Most memory one socket's receive ring may take.
const RING_MAX_BYTES: usize = 64 << 20;
/// Fewest frames a receive ring holds.
const RING_MIN_FRAMES: usize = 64;
/// Least memory a receive ring takes: room for bursts beyond what the buffer
/// counts promise (a flood, many initiators) while the receiving thread
/// waits for a CPU. (The kernel's pages, mapped once at start.)
const RING_MIN_BYTES: usize = 4 << 20;

/// A raw AoE socket on one interface.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
    name: String,
    mac: Mac,
    mtu: usize,
    timeout: Duration,
    /// The receive ring, when the kernel gave us one (else `recvmmsg`).
    ring: Option<RxRing>,
}

/// A `PACKET_RX_RING` (TPACKET_V2) mapped into this process: the kernel
/// copies each frame into the next free slot and marks it the user's; the
/// receiver copies it out and hands the slot back, with no system call while
/// frames are waiting.
#[derive(Debug)]
struct RxRing {
    base: *mut u8,
    map_len: usize,
    block_size: usize,
    frame_size: usize,
    /// Slots per block (a slot never straddles two blocks).
    per_block: usize,
    frames: usize,
    /// The next slot to look at. (Only one thread receives on a socket; the
    /// lock keeps a second one from corrupting the walk.)
    head: std::sync::Mutex<usize>,
}

// SAFETY: the mapping is owned by the ring and lives until it is dropped;
// slots are only read after the kernel marked them the user's (an acquire
// load of their status) and only by the thread holding `head`.
unsafe impl Send for RxRing {}
// SAFETY: as above; every access to a slot goes through the `head` lock.
unsafe impl Sync for RxRing {}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: base/map_len are exactly what mmap returned; nothing
        // borrows the mapping past this point (frames are copied out).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }
}

impl RxRing {
    /// Sets up a ring of about `bytes` on `fd` for frames of an interface
    /// with MTU `mtu`.
    fn new(fd: &OwnedFd, mtu: usize, bytes: usize) -> io::Result<RxRing> {
        let align = |x: usize| x.div_ceil(libc::TPACKET_ALIGNMENT) * libc::TPACKET_ALIGNMENT;
        // Header, address, the kernel's alignment slack, then the frame.
        let frame_size = align(libc::TPACKET2_HDRLEN + 32 + ETH_HEADER_LEN + mtu + 4);
        let block_size = (4 * frame_size).next_power_of_two().max(4096);
        let per_block = block_size / frame_size;
        let want = (bytes.max(RING_MIN_BYTES) / frame_size).max(RING_MIN_FRAMES);
        let blocks = want
            .div_ceil(per_block)
            .min((RING_MAX_BYTES / block_size).max(1));
        let frames = blocks * per_block;
        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        set_opt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let req = libc::tpacket_req {
            tp_block_size: block_size as libc::c_uint,
            tp_block_nr: blocks as libc::c_uint,
            tp_frame_size: frame_size as libc::c_uint,
            tp_frame_nr: frames as libc::c_uint,
        };
        set_opt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let map_len = blocks * block_size;
        // SAFETY: maps the ring the kernel just allocated for this socket;
        // the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            base: base as *mut u8,
            map_len,
            block_size,
            frame_size,
            per_block,
            frames,
            head: std::sync::Mutex::new(0),
        })
    }

    /// Start of slot `i` (`i < frames`; the kernel numbers slots block by
    /// block, `per_block` to a block).
    fn slot(&self, i: usize) -> *mut u8 {
        let (block, within) = (i / self.per_block, i % self.per_block);
        // The offset is inside the mapping: block < blocks, within < per_block.
        self.base
            .wrapping_add(block * self.block_size + within * self.frame_size)
    }

    /// The status word of slot `i`, shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: every slot starts 16-aligned with a tpacket2_hdr whose first
        // field is the u32 status; the mapping outlives `self`'s borrows.
        unsafe { AtomicU32::from_ptr(self.slot(i) as *mut u32) }
    }

    /// Copies the frames the kernel has handed over (up to `max`) into
    /// `out` and gives their slots back. Returns how many slots were taken.
    fn take(&self, max: usize, out: &mut Vec<Bytes>) -> usize {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = 0;
        while out.len() < max {
            let i = *head;
            let status = self.status(i);
            if status.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                break;
            }
            let slot = self.slot(i);
            // SAFETY: the slot is ours until its status goes back to the
            // kernel; it starts with a tpacket2_hdr, followed (aligned) by the
            // sockaddr_ll, both inside the slot.
            let (hdr, sll) = unsafe {
                (
                    std::ptr::read(slot as *const libc::tpacket2_hdr),
                    std::ptr::read_unaligned(
                        slot.add(libc::TPACKET_ALIGN(mem::size_of::<libc::tpacket2_hdr>()))
                            as *const libc::sockaddr_ll,
                    ),
                )
            };
            let (off, len) = (usize::from(hdr.tp_mac), hdr.tp_snaplen as usize);
            let whole = hdr.tp_snaplen == hdr.tp_len && off + len <= self.frame_size;
            if whole && sll.sll_pkttype != PACKET_OUTGOING {
                // SAFETY: off + len lies within the slot (checked above).
                let data = unsafe { std::slice::from_raw_parts(slot.add(off), len) };
                out.push(Bytes::copy_from_slice(data));
            }
            status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
            *head = (i + 1) % self.frames;
            taken += 1;
        }
        taken
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Sets a socket option whose value is the plain C struct or integer `v`.
fn set_opt<T: Copy>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points at a valid T (a plain C type, as the option expects)
    // and the length is its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
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

/// The socket's descriptor, for a caller that waits on several sockets at
/// once (`poll`, `epoll`) and then calls [`RawSocket::recv_batch`] on the
/// ready ones.
impl AsFd for RawSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl RawSocket {
    /// Opens a socket on `ifname` receiving only AoE frames, with a receive
    /// ring (or, failing that, a receive buffer) of at least `rcvbuf` bytes
    /// and a receive timeout of `timeout`.
    pub fn open(ifname: &str, rcvbuf: usize, timeout: Duration) -> io::Result<RawSocket> {
        Self::open_with(ifname, rcvbuf, timeout, true)
    }

    /// As [`RawSocket::open`], but frames always come by `recvmmsg` (no
    /// receive ring): the path taken where the kernel gives no ring.
    pub fn open_without_ring(
        ifname: &str,
        rcvbuf: usize,
        timeout: Duration,
    ) -> io::Result<RawSocket> {
        Self::open_with(ifname, rcvbuf, timeout, false)
    }

    fn open_with(
        ifname: &str,
        rcvbuf: usize,
        timeout: Duration,
        want_ring: bool,
    ) -> io::Result<RawSocket> {
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
            timeout,
            ring: None,
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
        set_opt(&sock.fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        let mut req = ifreq_for(ifname)?;
        // (pnet_datalink's interface list has no MTU.)
        // SAFETY: SIOCGIFMTU fills ifr_ifru.ifru_mtu of the ifreq we pass.
        cvt(unsafe { libc::ioctl(sock.fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })?;
        // SAFETY: the kernel just wrote the mtu member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu } as usize;
        // A receive ring of about the buffer asked for; without one (an
        // old or restricted kernel), frames come by recvmmsg.
        let ring = if want_ring && rcvbuf > 0 {
            match RxRing::new(&sock.fd, mtu, rcvbuf) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(iface = ifname, error = %e, "no packet receive ring; using recvmmsg");
                    None
                }
            }
        } else {
            None
        };
        Ok(RawSocket { mtu, ring, ..sock })
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        set_opt(&self.fd, level, name, &v)
    }

    /// Frames the kernel dropped since the last call because the receive
    /// ring (or buffer) was full. (`PACKET_STATISTICS`, which resets them.)
    pub fn take_drops(&self) -> io::Result<u32> {
        // SAFETY: tpacket_stats is plain old data; all-zero is valid.
        let mut st: libc::tpacket_stats = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: st and len are valid for writes of the sizes given; for
        // TPACKET_V1/V2 sockets (and without a ring) the kernel writes a
        // tpacket_stats.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
                &mut len,
            )
        })?;
        Ok(st.tp_drops)
    }

    /// Whether frames arrive through a packet receive ring (else `recvmmsg`).
    pub fn has_rx_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// The receive buffer size the kernel granted.
    pub fn rcvbuf(&self) -> io::Result<usize> {
        Ok(self.int_opt(libc::SO_RCVBUF)?.max(0) as usize)
    }

    /// Reads an integer `SOL_SOCKET` option.
    fn int_opt(&self, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for writes of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        })?;
        Ok(v)
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
        batch.frames.clear();
        if let Some(ring) = &self.ring {
            return self.recv_ring(ring, batch);
        }
        let n = batch.bufs.len();
        // Only the slots the last call used (or every one, the first time)
        // need a fresh buffer and their header reset. A slot whose previous
        // frame is no longer referenced gets its own memory back.
        for i in 0..batch.dirty.min(n) {
            let buf = &mut batch.bufs[i];
            buf.clear();
            buf.reserve(batch.size);
            batch.iov[i] = libc::iovec {
                iov_base: buf.spare_capacity_mut().as_mut_ptr() as *mut libc::c_void,
                iov_len: batch.size,
            };
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            batch.hdrs[i] = unsafe { mem::zeroed() };
            batch.hdrs[i].msg_hdr.msg_iov = &mut batch.iov[i];
            batch.hdrs[i].msg_hdr.msg_iovlen = 1;
            batch.hdrs[i].msg_hdr.msg_name =
                &mut batch.addrs[i] as *mut libc::sockaddr_ll as *mut libc::c_void;
            batch.hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as u32;
        }
        batch.dirty = 0;
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
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let rc = rc as usize;
        batch.dirty = rc;
        for i in 0..rc {
            let len = (batch.hdrs[i].msg_len as usize).min(batch.size);
            let truncated = batch.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            if batch.addrs[i].sll_pkttype == PACKET_OUTGOING || truncated {
                continue;
            }
            // SAFETY: the kernel wrote `len` bytes (at most the iovec's
            // length, which is within the reserved capacity) at the start of
            // this buffer's spare capacity.
            unsafe { batch.bufs[i].set_len(len) };
            let frame = batch.bufs[i].split().freeze();
            batch.frames.push(frame);
        }
        Ok(batch.frames.len())
    }

    /// [`RawSocket::recv_batch`] from the receive ring: takes what is
    /// waiting; if nothing is, waits (poll) up to the timeout once.
    fn recv_ring(&self, ring: &RxRing, batch: &mut RecvBatch) -> io::Result<usize> {
        let max = batch.bufs.len();
        let mut waited = false;
        loop {
            let taken = ring.take(max, &mut batch.frames);
            if !batch.frames.is_empty() || waited {
                return Ok(batch.frames.len());
            }
            if taken > 0 {
                continue; // only frames we skip (our own, truncated): look again
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = self.timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd, count 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    return Ok(0);
                }
                return Err(e);
            }
            if pfd.revents & libc::POLLERR != 0 {
                // A pending socket error (e.g. the interface went down).
                let v = self.int_opt(libc::SO_ERROR)?;
                if v != 0 {
                    return Err(io::Error::from_raw_os_error(v));
                }
            }
            waited = true;
        }
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
///
/// Each received frame is handed out as [`Bytes`] of its own, so a request's
/// data can travel on (e.g. to a device write) without a copy; its slot gets
/// new memory for the next call only while the frame is still referenced.
pub struct RecvBatch {
    bufs: Vec<BytesMut>,
    size: usize,
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_ll>,
    /// Slots `0..dirty` were filled in by the kernel (or never set up).
    dirty: usize,
}

// SAFETY: the raw pointers inside iov/hdrs only ever point into this struct's
// own buffers and are rebuilt before every use.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for `n` frames of an interface with the given MTU.
    pub fn new(n: usize, mtu: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..n).map(|_| BytesMut::new()).collect(),
            size: mtu + ETH_HEADER_LEN + 4,
            frames: Vec::with_capacity(n),
            // SAFETY: iovec, mmsghdr and sockaddr_ll are plain old data; zero is valid.
            iov: (0..n).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            hdrs: (0..n).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            addrs: (0..n).map(|_| unsafe { mem::zeroed() }).collect(),
            dirty: n,
        }
    }

    /// The frames received by the last call.
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }
}
