//! The small subset of the memcached text protocol this store needs, over
//! one tokio `TcpStream`: `gets` (single and multi), `add`, `cas`,
//! `delete`, `incr`, and ElastiCache's `config get cluster`.
//!
//! It is written here rather than taken from a client crate because none of
//! the async clients on crates.io offered `gets`/`cas` together with
//! bounded reads and a connection that is dropped, never reused, after any
//! failure or cancellation (see the crate docs). Every read is bounded: a
//! reply line may not exceed [`MAX_LINE`] bytes and a value may not exceed
//! the limit the connection was opened with, so a confused or hostile peer
//! cannot make us allocate without bound.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// The longest reply line we accept (a `VALUE` header with a 250-byte key
/// is well under this).
pub(crate) const MAX_LINE: u64 = 1024;

/// What went wrong talking to one node.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    /// The socket failed.
    #[error("connection to memcached failed")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("memcached closed the connection")]
    Closed,
    /// The server refused the item as too large for its item size limit.
    #[error("memcached refused the item as too large: {0}")]
    TooLarge(String),
    /// The server answered "try again later": out of memory (`-M`, or no
    /// page left for the item's slab class), too many connections, busy or
    /// temporarily unavailable.
    #[error("memcached is out of capacity: {0}")]
    Overloaded(String),
    /// The server answered `ERROR`, `CLIENT_ERROR` or `SERVER_ERROR`.
    #[error("memcached answered with an error: {0}")]
    Server(String),
    /// The server answered something this client does not understand.
    #[error("unexpected memcached reply: {0}")]
    Unexpected(String),
}

impl ProtocolError {
    /// Whether the connection itself broke (as opposed to the server
    /// answering with an error): the case where a pooled connection may
    /// just have been stale.
    pub(crate) fn is_connection(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Closed)
    }

    /// Whether the server said to try again later (an outage, not a bug).
    pub(crate) fn is_overload(&self) -> bool {
        matches!(self, Self::Overloaded(_))
    }
}

/// One value returned by `gets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Value {
    /// The key, as the server echoed it.
    pub(crate) key: String,
    /// The stored bytes.
    pub(crate) data: Vec<u8>,
    /// The CAS token of this version of the item.
    pub(crate) cas: u64,
}

/// A storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreCommand {
    /// Store only if the key is absent.
    Add,
    /// Store only if the item still has this CAS token.
    Cas(u64),
}

/// The answer to a storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreReply {
    /// Written.
    Stored,
    /// `add` found the key present.
    NotStored,
    /// `cas` found another token: someone wrote in between.
    Exists,
    /// `cas` found no item.
    NotFound,
}

/// A request to one node.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request<'a> {
    /// `gets k1 k2 ...`
    Gets(&'a [&'a str]),
    /// `add`/`cas` with the value and expiry.
    Store {
        /// Which command.
        command: StoreCommand,
        /// The key.
        key: &'a str,
        /// Memcached exptime (relative seconds, absolute time, or 0).
        exptime: u64,
        /// The value.
        data: &'a [u8],
    },
    /// `delete k`
    Delete(&'a str),
    /// `incr k n`
    Incr(&'a str, u64),
    /// `config get cluster` (ElastiCache auto-discovery).
    ConfigGetCluster,
}

impl Request<'_> {
    /// Whether the request may be sent again on a fresh connection when a
    /// pooled one turns out to be dead. Everything but `cas` is harmless to
    /// repeat: a repeated `cas` could apply a change twice.
    pub(crate) fn retryable(&self) -> bool {
        !matches!(
            self,
            Self::Store {
                command: StoreCommand::Cas(_),
                ..
            }
        )
    }
}

/// The answer to a [`Request`], by kind.
#[derive(Debug)]
pub(crate) enum Response {
    /// Values found by `gets` (missing keys are simply absent).
    Values(Vec<Value>),
    /// The answer to `add`/`cas`.
    Store(StoreReply),
    /// `delete`: whether the key was there.
    Deleted(bool),
    /// `incr`: the new value, or `None` if the key was absent.
    Incremented(Option<u64>),
    /// `config get cluster`: the configuration block.
    Config(Vec<u8>),
}

/// One connection to one memcached node.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: BufStream<TcpStream>,
    max_value: usize,
    line: Vec<u8>,
}

impl Connection {
    /// Wraps a connected socket; values longer than `max_value` bytes are
    /// refused as a protocol error.
    pub(crate) fn new(stream: TcpStream, max_value: usize) -> Self {
        // Small requests must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Self {
            stream: BufStream::new(stream),
            max_value,
            line: Vec::with_capacity(128),
        }
    }

    /// Sends one request and reads its whole answer. After an error the
    /// connection must be dropped: its stream may be mid-reply.
    pub(crate) async fn execute(
        &mut self,
        request: &Request<'_>,
    ) -> Result<Response, ProtocolError> {
        match *request {
            Request::Gets(keys) => {
                let mut command =
                    Vec::with_capacity(8 + keys.iter().map(|k| k.len() + 1).sum::<usize>());
                command.extend_from_slice(b"gets");
                for key in keys {
                    command.push(b' ');
                    command.extend_from_slice(key.as_bytes());
                }
                command.extend_from_slice(b"\r\n");
                self.send(&command, None).await?;
                self.read_values().await.map(Response::Values)
            }
            Request::Store {
                command,
                key,
                exptime,
                data,
            } => {
                let header = match command {
                    StoreCommand::Add => format!("add {key} 0 {exptime} {}\r\n", data.len()),
                    StoreCommand::Cas(token) => {
                        format!("cas {key} 0 {exptime} {} {token}\r\n", data.len())
                    }
                };
                self.send(header.as_bytes(), Some(data)).await?;
                let line = self.read_line().await?;
                let reply = match line {
                    "STORED" => StoreReply::Stored,
                    "NOT_STORED" => StoreReply::NotStored,
                    "EXISTS" => StoreReply::Exists,
                    "NOT_FOUND" => StoreReply::NotFound,
                    other => return Err(error_line(other)),
                };
                Ok(Response::Store(reply))
            }
            Request::Delete(key) => {
                self.send(format!("delete {key}\r\n").as_bytes(), None)
                    .await?;
                match self.read_line().await? {
                    "DELETED" => Ok(Response::Deleted(true)),
                    "NOT_FOUND" => Ok(Response::Deleted(false)),
                    other => Err(error_line(other)),
                }
            }
            Request::Incr(key, by) => {
                self.send(format!("incr {key} {by}\r\n").as_bytes(), None)
                    .await?;
                match self.read_line().await? {
                    "NOT_FOUND" => Ok(Response::Incremented(None)),
                    other => match other.parse::<u64>() {
                        Ok(n) => Ok(Response::Incremented(Some(n))),
                        Err(_) => Err(error_line(other)),
                    },
                }
            }
            Request::ConfigGetCluster => {
                self.send(b"config get cluster\r\n", None).await?;
                let max = self.max_value;
                let line = self.read_line().await?;
                let len = match line.strip_prefix("CONFIG cluster ") {
                    Some(rest) => rest
                        .split(' ')
                        .nth(1)
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n <= max)
                        .ok_or_else(|| error_line(line))?,
                    None => return Err(error_line(line)),
                };
                let mut data = vec![0; len + 2];
                self.stream.read_exact(&mut data).await?;
                data.truncate(len);
                match self.read_line().await? {
                    "END" => Ok(Response::Config(data)),
                    other => Err(error_line(other)),
                }
            }
        }
    }

    /// Writes a command line and, for storage commands, its data block.
    async fn send(&mut self, header: &[u8], data: Option<&[u8]>) -> Result<(), ProtocolError> {
        self.stream.write_all(header).await?;
        if let Some(data) = data {
            self.stream.write_all(data).await?;
            self.stream.write_all(b"\r\n").await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads one `\r\n`-terminated line, without the terminator.
    async fn read_line(&mut self) -> Result<&str, ProtocolError> {
        self.line.clear();
        let read = (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.line)
            .await?;
        if read == 0 {
            return Err(ProtocolError::Closed);
        }
        if !self.line.ends_with(b"\r\n") {
            let shown = String::from_utf8_lossy(&self.line).into_owned();
            return Err(if self.line.len() as u64 >= MAX_LINE {
                ProtocolError::Unexpected(format!("reply line longer than {MAX_LINE} bytes"))
            } else if self.line.ends_with(b"\n") {
                ProtocolError::Unexpected(shown)
            } else {
                ProtocolError::Closed
            });
        }
        let body = &self.line[..self.line.len() - 2];
        std::str::from_utf8(body)
            .map_err(|_| ProtocolError::Unexpected(String::from_utf8_lossy(body).into_owned()))
    }

    async fn read_values(&mut self) -> Result<Vec<Value>, ProtocolError> {
        let mut values = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line == "END" {
                return Ok(values);
            }
            let header = parse_value_header(line)?;
            if header.len > self.max_value {
                return Err(ProtocolError::Unexpected(format!(
                    "value of {} bytes exceeds the {} bytes this client accepts",
                    header.len, self.max_value
                )));
            }
            let mut data = vec![0; header.len + 2];
            self.stream.read_exact(&mut data).await?;
            if !data.ends_with(b"\r\n") {
                return Err(ProtocolError::Unexpected(
                    "value not followed by CRLF".into(),
                ));
            }
            data.truncate(header.len);
            values.push(Value {
                key: header.key,
                data,
                cas: header.cas,
            });
        }
    }
}

struct ValueHeader {
    key: String,
    len: usize,
    cas: u64,
}

/// Parses `VALUE <key> <flags> <bytes> <cas>`.
fn parse_value_header(line: &str) -> Result<ValueHeader, ProtocolError> {
    let mut parts = line.split(' ');
    let bad = || error_line(line);
    if parts.next() != Some("VALUE") {
        return Err(bad());
    }
    let key = parts.next().ok_or_else(bad)?.to_owned();
    let _flags: u32 = parts.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let len: usize = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    let cas: u64 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(ValueHeader { key, len, cas })
}

/// Classifies a reply line that is not the expected answer.
fn error_line(line: &str) -> ProtocolError {
    if let Some(message) = line.strip_prefix("SERVER_ERROR ")
        && message.contains("too large")
    {
        return ProtocolError::TooLarge(message.to_owned());
    }
    if line.starts_with("SERVER_ERROR") || line.starts_with("ERROR") {
        // memcached refuses a connection over `-c` with `ERROR Too many
        // open connections`, and a store without memory (`-M`, or no page
        // left for the item's slab class) with `SERVER_ERROR out of memory
        // storing object`.
        let lower = line.to_ascii_lowercase();
        if ["out of memory", "too many", "busy", "temporar"]
            .iter()
            .any(|m| lower.contains(m))
        {
            return ProtocolError::Overloaded(line.to_owned());
        }
    }
    if line == "ERROR" || line.starts_with("CLIENT_ERROR") || line.starts_with("SERVER_ERROR") {
        return ProtocolError::Server(line.to_owned());
    }
    let mut shown = line.to_owned();
    shown.truncate(200);
    ProtocolError::Unexpected(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_headers_parse() {
        let h = parse_value_header("VALUE offstate:abc 0 12 99").unwrap();
        assert_eq!((h.key.as_str(), h.len, h.cas), ("offstate:abc", 12, 99));
        assert!(parse_value_header("VALUE k 0 12").is_err());
        assert!(parse_value_header("VALUE k 0 -1 5").is_err());
        assert!(parse_value_header("VALUE k 0 1 5 extra").is_err());
        assert!(parse_value_header("NOPE k 0 1 5").is_err());
    }

    #[test]
    fn error_lines_are_classified() {
        assert!(matches!(
            error_line("SERVER_ERROR object too large for cache"),
            ProtocolError::TooLarge(_)
        ));
        for overload in [
            "SERVER_ERROR out of memory storing object",
            "SERVER_ERROR Out of memory allocating space",
            "SERVER_ERROR out of memory",
            "SERVER_ERROR too many open connections",
            "SERVER_ERROR temporary failure",
            "ERROR Too many open connections",
        ] {
            let error = error_line(overload);
            assert!(error.is_overload(), "{overload}: {error:?}");
        }
        assert!(matches!(
            error_line("SERVER_ERROR bad command line format"),
            ProtocolError::Server(_)
        ));
        assert!(matches!(
            error_line("CLIENT_ERROR bad data chunk"),
            ProtocolError::Server(_)
        ));
        assert!(matches!(error_line("ERROR"), ProtocolError::Server(_)));
        assert!(matches!(error_line("WAT"), ProtocolError::Unexpected(_)));
    }

    #[test]
    fn only_cas_is_not_retried() {
        let cas = Request::Store {
            command: StoreCommand::Cas(1),
            key: "k",
            exptime: 0,
            data: b"",
        };
        assert!(!cas.retryable());
        assert!(Request::Gets(&["k"]).retryable());
        assert!(Request::Incr("k", 1).retryable());
    }
}
