//! The send queue of a connection: PDUs in order, many per `sendmsg`,
//! payloads straight from their `Bytes` without copying, and data segments
//! that stay in a file's page cache sent with `sendfile` (the header before
//! them goes out with `MSG_MORE`, so header and data share segments).
//! Written without blocking from the connection's own task, so a response
//! usually leaves in the same wake-up that produced it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::outgoing::Outgoing;
use blockdev::FileSlice;

const BATCH: usize = 64;

/// Most bytes one `sendfile` call is asked for (the kernel's own cap).
const SENDFILE_MAX: usize = 0x7fff_f000;

/// PDUs waiting for the socket.
#[derive(Debug, Default)]
pub(super) struct SendQueue {
    queue: VecDeque<Outgoing>,
    /// Bytes of the front PDU already written.
    front_done: usize,
}

/// One piece of a PDU on the wire.
enum Part<'a> {
    Mem(&'a [u8]),
    File(&'a FileSlice),
}

fn parts(p: &Outgoing) -> [Option<Part<'_>>; 4] {
    [
        Some(Part::Mem(p.pdu.head())),
        Some(Part::Mem(&p.pdu.data)),
        p.file.as_ref().map(Part::File),
        Some(Part::Mem(p.pdu.tail())),
    ]
}

impl SendQueue {
    pub fn push(&mut self, p: Outgoing) {
        self.queue.push_back(p);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes as much as the socket takes now. `Ok(true)` when everything
    /// is out, `Ok(false)` when the socket is full.
    pub fn flush(&mut self, s: &TcpStream) -> io::Result<bool> {
        while !self.queue.is_empty() {
            let written = match self.write_some(s) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            let mut left = written + self.front_done;
            self.front_done = 0;
            while let Some(front) = self.queue.front() {
                let len = front.wire_len();
                if left >= len {
                    left -= len;
                    self.queue.pop_front();
                } else {
                    self.front_done = left;
                    break;
                }
            }
        }
        Ok(true)
    }

    /// One system call: the memory parts of as many PDUs as fit, up to the
    /// next file part (with `MSG_MORE` when one follows), or that file part
    /// itself when it comes first.
    fn write_some(&self, s: &TcpStream) -> io::Result<usize> {
        let mut slices: [IoSlice<'_>; BATCH * 4] = [IoSlice::new(&[]); BATCH * 4];
        let mut n = 0;
        let mut skip = self.front_done;
        let mut more = false;
        'pdus: for p in self.queue.iter().take(BATCH) {
            for part in parts(p).into_iter().flatten() {
                match part {
                    Part::Mem(m) => {
                        if skip >= m.len() {
                            skip -= m.len();
                            continue;
                        }
                        slices[n] = IoSlice::new(&m[skip..]);
                        skip = 0;
                        n += 1;
                    }
                    Part::File(f) => {
                        if skip >= f.len() {
                            skip -= f.len();
                            continue;
                        }
                        if n == 0 {
                            return send_file(s, f, skip);
                        }
                        more = true;
                        break 'pdus;
                    }
                }
            }
        }
        send_vectored(s, &slices[..n], more)
    }

    /// Writes everything, waiting for the socket as needed.
    pub async fn flush_all(&mut self, s: &TcpStream) -> io::Result<()> {
        while !self.flush(s)? {
            s.writable().await?;
        }
        Ok(())
    }
}

/// `sendmsg` of `slices`, with `MSG_MORE` when more data follows at once.
fn send_vectored(s: &TcpStream, slices: &[IoSlice<'_>], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    s.try_io(Interest::WRITABLE, || {
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec on Unix.
        msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = slices.len() as _;
        // SAFETY: the iovecs point into buffers borrowed for the call; the
        // socket descriptor is open while `s` lives.
        let r = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, flags) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    })
}

/// `sendfile` of `f` from `done` bytes into it.
fn send_file(s: &TcpStream, f: &FileSlice, done: usize) -> io::Result<usize> {
    let count = (f.len() - done).min(SENDFILE_MAX);
    s.try_io(Interest::WRITABLE, || {
        let mut off = (f.offset() + done as u64) as libc::off_t;
        // SAFETY: both descriptors are open for the call (the slice keeps
        // its file open); `off` is valid for reads and writes.
        let r = unsafe { libc::sendfile(s.as_raw_fd(), f.fd().as_raw_fd(), &mut off, count) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    })
}
