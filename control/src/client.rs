//! A blocking client, for the `opie` CLI: one connection, one request at a
//! time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::request::Request;
use crate::response::Response;

/// Longest response line read (a status of a large appliance fits).
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Why a request got no answer, by what the user may do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached: is it running, is this its socket,
    /// may this user open it (root)?
    #[error("cannot reach the head at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The connection failed or timed out during the request: retry.
    #[error("the head's control connection failed: {0}")]
    Io(#[from] io::Error),
    /// The daemon's answer is not a response (another version, or a bug).
    #[error("the head answered something unreadable: {0}")]
    Protocol(String),
}

/// A connection to the control socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`; every later read and write may
    /// take up to `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(connect_err)?;
        let writer = stream.try_clone().map_err(connect_err)?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and returns the response line as the daemon sent
    /// it (without its newline) and as read.
    pub fn call(&mut self, request: &Request) -> Result<(String, Response), ClientError> {
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        // A daemon that refuses the connection (credentials, too many
        // clients) answers and closes at once, maybe before the request is
        // written: its answer is still to be read.
        let written = self.writer.write_all(&line);
        let mut answer = String::new();
        let read = (&mut self.reader).take(MAX_RESPONSE).read_line(&mut answer);
        match (written, read) {
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) | (Ok(()), Err(e)) => return Err(ClientError::Io(e)),
            (Ok(()), Ok(_)) => return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
        }
        if !answer.ends_with('\n') {
            return Err(ClientError::Protocol(
                "response line cut short or too long".into(),
            ));
        }
        answer.pop();
        let response =
            serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((answer, response))
    }
}
