//! The writer task of a connection: PDUs in order, many per `writev`,
//! payloads straight from their `Bytes` without copying.

use std::io::{self, IoSlice};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::frame::OutPdu;

/// Messages to the writer.
#[derive(Debug)]
pub(super) enum Out {
    /// Send a PDU.
    Pdu(OutPdu),
    /// Send everything before this, then close the socket.
    Close,
}

const BATCH: usize = 64;

/// Runs until [`Out::Close`] or until every sender is gone.
pub(super) async fn run(mut wr: OwnedWriteHalf, mut rx: UnboundedReceiver<Out>) -> io::Result<()> {
    let mut batch: Vec<OutPdu> = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut close = false;
        match first {
            Out::Pdu(p) => batch.push(p),
            Out::Close => close = true,
        }
        while !close && batch.len() < BATCH {
            match rx.try_recv() {
                Ok(Out::Pdu(p)) => batch.push(p),
                Ok(Out::Close) => close = true,
                Err(_) => break,
            }
        }
        write_all(&mut wr, &batch).await?;
        batch.clear();
        if close {
            break;
        }
    }
    wr.shutdown().await
}

async fn write_all(wr: &mut OwnedWriteHalf, batch: &[OutPdu]) -> io::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 3);
    for p in batch {
        for part in [p.head(), &p.data[..], p.tail()] {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}
