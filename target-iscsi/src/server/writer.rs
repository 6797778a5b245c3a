//! The send queue of a connection: PDUs in order, many per `writev`,
//! payloads straight from their `Bytes` without copying. Written without
//! blocking from the connection's own task, so a response usually leaves in
//! the same wake-up that produced it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use tokio::net::TcpStream;

use crate::frame::OutPdu;

const BATCH: usize = 64;

/// PDUs waiting for the socket.
#[derive(Debug, Default)]
pub(super) struct SendQueue {
    queue: VecDeque<OutPdu>,
    /// Bytes of the front PDU already written.
    front_done: usize,
}

impl SendQueue {
    pub fn push(&mut self, p: OutPdu) {
        self.queue.push_back(p);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes as much as the socket takes now. `Ok(true)` when everything
    /// is out, `Ok(false)` when the socket is full.
    pub fn flush(&mut self, s: &TcpStream) -> io::Result<bool> {
        while !self.queue.is_empty() {
            let mut slices: [IoSlice<'_>; BATCH * 3] = [IoSlice::new(&[]); BATCH * 3];
            let mut n = 0;
            let mut skip = self.front_done;
            for p in self.queue.iter().take(BATCH) {
                for part in [p.head(), &p.data[..], p.tail()] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[n] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    n += 1;
                }
            }
            let written = match s.try_write_vectored(&slices[..n]) {
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

    /// Writes everything, waiting for the socket as needed.
    pub async fn flush_all(&mut self, s: &TcpStream) -> io::Result<()> {
        while !self.flush(s)? {
            s.writable().await?;
        }
        Ok(())
    }
}
