//! The subscriber on a watched TCP socket: AUTH, SUBSCRIBE, then pub/sub
//! messages read with the watch's own RESP parser.
//!
//! Why not redis-rs's `PubSub` here: every instance reads every write's
//! announcement, so a message's cost is paid by the whole fleet on every
//! write. redis-rs's parser took about 20k instructions per message
//! (`scripts/icount.sh cached-add`), and the watch parses each frame
//! anyway. Connections that cannot be watched (TLS, Unix sockets) still
//! subscribe through redis-rs.

use offstate_core::StoreError;
use redis::RedisConnectionInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::watch::{self, Parsed, Push, Watched};

/// A message read off the subscription.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The channel it came on.
    pub(crate) channel: Vec<u8>,
    pub(crate) payload: Vec<u8>,
}

/// A subscribed connection (see the module docs).
pub(crate) struct Subscriber {
    io: Watched<TcpStream>,
    /// Bytes read and not parsed yet, from `start`.
    buffer: Vec<u8>,
    start: usize,
}

impl Subscriber {
    /// Authenticates as `settings` say and subscribes to `channels`,
    /// waiting for every confirmation. Bound by the caller's timeout.
    pub(crate) async fn subscribe(
        io: Watched<TcpStream>,
        settings: &RedisConnectionInfo,
        channels: &[&str],
    ) -> Result<Self, StoreError> {
        let mut subscriber = Self {
            io,
            buffer: Vec::with_capacity(4096),
            start: 0,
        };
        if let Some(password) = settings.password() {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            auth.extend(settings.username().map(str::as_bytes));
            auth.push(password.as_bytes());
            subscriber.send(&auth).await?;
            let reply = subscriber.reply().await?;
            if reply.first() != Some(&b'+') {
                return Err(refused("AUTH", &reply));
            }
        }
        let mut subscribe: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        subscribe.extend(channels.iter().map(|c| c.as_bytes()));
        subscriber.send(&subscribe).await?;
        for _ in channels {
            let reply = subscriber.reply().await?;
            if !reply.starts_with(b"*3\r\n$9\r\nsubscribe\r\n") {
                return Err(refused("SUBSCRIBE", &reply));
            }
        }
        Ok(subscriber)
    }

    /// The next pub/sub message; `Err` with the reason once the connection
    /// is lost or says something that is not RESP.
    pub(crate) async fn next(&mut self) -> Result<Pushed, String> {
        loop {
            // Anything else (a late confirmation, say) is no message.
            let pushed = self
                .frame(|_, push| {
                    push.map(|push| {
                        let (channel, payload) = push.parts();
                        Pushed {
                            channel: channel.to_vec(),
                            payload: payload.to_vec(),
                        }
                    })
                })
                .await?;
            if let Some(pushed) = pushed {
                return Ok(pushed);
            }
        }
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), StoreError> {
        self.io
            .write_all(&command(args))
            .await
            .map_err(StoreError::unavailable)
    }

    /// The next frame, for the handshake.
    async fn reply(&mut self) -> Result<Vec<u8>, StoreError> {
        self.frame(|frame, _| frame.to_vec())
            .await
            .map_err(|why| StoreError::Unavailable(why.into()))
    }

    /// What `take` makes of the next whole frame (its bytes, and what it
    /// holds if it is a pub/sub message), reading as much as it takes.
    /// Each frame is parsed once. Cancel-safe: what was read stays in the
    /// buffer.
    async fn frame<T>(&mut self, take: impl Fn(&[u8], Option<Push<'_>>) -> T) -> Result<T, String> {
        loop {
            let unparsed = &self.buffer[self.start..];
            match watch::parse(unparsed) {
                Parsed::Complete { len, push } => {
                    let taken = take(&unparsed[..len], push);
                    self.start += len;
                    if self.start == self.buffer.len() {
                        self.buffer.clear();
                        self.start = 0;
                    }
                    return Ok(taken);
                }
                Parsed::Invalid => return Err("the server sent bytes that are not RESP".into()),
                Parsed::Incomplete => {}
            }
            if self.start > 0 {
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            match self.io.read_buf(&mut self.buffer).await {
                Ok(0) => return Err("the subscription connection closed".into()),
                Ok(_) => {}
                Err(error) => return Err(format!("the subscription connection failed: {error}")),
            }
        }
    }
}

/// A RESP array of bulk strings.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The server refused a handshake command; its answer (an error line,
/// never a password) says why.
fn refused(command: &str, reply: &[u8]) -> StoreError {
    let text = String::from_utf8_lossy(reply);
    StoreError::Unavailable(format!("{command} refused: {}", text.trim_end()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"SUBSCRIBE", b"a:b", b""]),
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\na:b\r\n$0\r\n\r\n"
        );
    }
}
