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

use crate::watch::{self, FrameLen, Watched};

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
            let frame = self.frame().await?;
            if let Some((channel, payload)) = watch::pushed(&frame) {
                return Ok(Pushed {
                    channel: channel.to_vec(),
                    payload: payload.to_vec(),
                });
            }
            // Anything else (a late confirmation, say) is no message.
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
        self.frame()
            .await
            .map_err(|why| StoreError::Unavailable(why.into()))
    }

    /// The next whole frame, reading as much as it takes. Cancel-safe: what
    /// was read stays in the buffer.
    async fn frame(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match watch::frame_len(&self.buffer[self.start..]) {
                FrameLen::Complete(len) => {
                    let frame = self.buffer[self.start..self.start + len].to_vec();
                    self.start += len;
                    if self.start == self.buffer.len() {
                        self.buffer.clear();
                        self.start = 0;
                    }
                    return Ok(frame);
                }
                FrameLen::Invalid => return Err("the server sent bytes that are not RESP".into()),
                FrameLen::Incomplete => {}
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
