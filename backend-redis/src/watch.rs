//! Watching the subscriber's socket, so a cache hit can tell whether an
//! invalidation has reached this process without reaching the cache yet.
//!
//! Why: a peer's logout script publishes before Redis answers the peer, so
//! by the time a client hears "logged out" and asks this instance, the
//! message has usually been written to this instance's subscriber socket.
//! It then still has to be read (by redis-rs's driver task), handed to the
//! subscription task and queued for the cache; a hit that runs meanwhile
//! would serve the session. Each stage marks what it holds before the
//! previous one lets go of it, and [`Watch::in_transit`] checks them
//! upstream first: unread bytes on the socket, a read in progress, a
//! message read but not yet queued. The cache checks its own queue after.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One subscription's view of its socket and of the messages in its tasks.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// A duplicate of the subscriber socket, only ever peeked at; `None`
    /// while no watched connection is up.
    socket: Mutex<Option<TcpStream>>,
    /// True while the subscription runs on a connection that cannot be
    /// watched (TLS, a Unix socket): nothing can be told, as before.
    blind: AtomicBool,
    /// True while redis-rs reads the socket, until what it read is counted.
    reading: AtomicBool,
    /// True when the socket's bytes ended inside a frame, or were not RESP.
    partial: AtomicBool,
    /// Pub/sub messages read off the socket.
    read: AtomicU64,
    /// Of those, how many the subscription task has queued for the cache
    /// (or dropped: heartbeats, malformed ones).
    forwarded: AtomicU64,
}

impl Watch {
    /// Whether a message may be between the socket and the subscriber's
    /// queue. Cheap: one `peek` system call and a few atomic loads.
    pub(crate) fn in_transit(&self) -> bool {
        if self.blind.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(socket) = self.socket.try_lock() else {
            return true;
        };
        // No connection: nothing can be on its way (and the cache, told
        // the channel is down, trusts its entries for the staleness bound).
        let Some(socket) = socket.as_ref() else {
            return false;
        };
        // The duplicate shares the non-blocking flag: this never waits.
        let unread = match socket.peek(&mut [0u8; 1]) {
            Ok(_) => true,
            Err(error) => error.kind() != ErrorKind::WouldBlock,
        };
        if unread || self.reading.load(Ordering::SeqCst) || self.partial.load(Ordering::SeqCst) {
            return true;
        }
        let forwarded = self.forwarded.load(Ordering::SeqCst);
        self.read.load(Ordering::SeqCst) > forwarded
    }

    /// A new watched connection: counts start over.
    pub(crate) fn watch(&self, socket: TcpStream) {
        let mut slot = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        self.read.store(0, Ordering::SeqCst);
        self.forwarded.store(0, Ordering::SeqCst);
        self.partial.store(false, Ordering::SeqCst);
        self.blind.store(false, Ordering::SeqCst);
        *slot = Some(socket);
    }

    /// A connection that cannot be watched.
    pub(crate) fn unwatched(&self) {
        let mut slot = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = None;
        self.blind.store(true, Ordering::SeqCst);
    }

    /// No connection.
    pub(crate) fn closed(&self) {
        let mut slot = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = None;
        self.blind.store(false, Ordering::SeqCst);
    }

    /// One message read off the socket has been queued for the cache, or
    /// dropped.
    pub(crate) fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::SeqCst);
    }
}

/// The subscriber's stream, counting the pub/sub messages redis-rs reads
/// before redis-rs sees them.
pub(crate) struct Watched<S> {
    inner: S,
    watch: std::sync::Arc<Watch>,
    /// Bytes of a frame not complete yet.
    pending: Vec<u8>,
    /// The stream stopped parsing as RESP.
    broken: bool,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, watch: std::sync::Arc<Watch>) -> Self {
        Self {
            inner,
            watch,
            pending: Vec::new(),
            broken: false,
        }
    }

    fn count(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        let mut messages = 0;
        loop {
            match frame(&self.pending[at..]) {
                Frame::Complete { len, message } => {
                    at += len;
                    messages += u64::from(message);
                }
                Frame::Incomplete => break,
                Frame::Invalid => {
                    // Not RESP as we know it: trust nothing from now on
                    // (every hit asks the backend until the next connection).
                    tracing::warn!(
                        "the invalidation subscriber read bytes it cannot parse; \
                         the cache asks the backend on every read until it reconnects"
                    );
                    self.broken = true;
                    self.pending = Vec::new();
                    self.watch.partial.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        self.pending.drain(..at);
        self.watch.read.fetch_add(messages, Ordering::SeqCst);
        self.watch
            .partial
            .store(!self.pending.is_empty(), Ordering::SeqCst);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.watch.reading.store(true, Ordering::SeqCst);
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            this.count(&buf.filled()[before..]);
        }
        this.watch.reading.store(false, Ordering::SeqCst);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A whole top-level value of `len` bytes; `message` when it is a
    /// pub/sub message (`message`, `pmessage`, `smessage`), which redis-rs
    /// hands to the subscription's stream.
    Complete {
        len: usize,
        message: bool,
    },
    Incomplete,
    Invalid,
}

/// One RESP2/RESP3 value at the start of `b`: its length and, for a
/// string, its text.
enum Value<'a> {
    Done(usize, Option<&'a [u8]>),
    Incomplete,
    Invalid,
}

fn frame(b: &[u8]) -> Frame {
    if b.is_empty() {
        return Frame::Incomplete;
    }
    let message = matches!(b[0], b'*' | b'>') && {
        // The first element of an aggregate says what kind of push it is.
        match line(b) {
            Some((_, head)) => match value(&b[head..]) {
                Value::Done(_, Some(kind)) => {
                    matches!(kind, b"message" | b"pmessage" | b"smessage")
                }
                _ => false,
            },
            None => false,
        }
    };
    match value(b) {
        Value::Done(len, _) => Frame::Complete { len, message },
        Value::Incomplete => Frame::Incomplete,
        Value::Invalid => Frame::Invalid,
    }
}

/// The first line's text (after the type byte) and where the next starts.
fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    Some((&b[1..end], end + 2))
}

fn number(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn value(b: &[u8]) -> Value<'_> {
    let Some(&kind) = b.first() else {
        return Value::Incomplete;
    };
    let Some((text, next)) = line(b) else {
        return Value::Incomplete;
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Value::Done(next, Some(text)),
        b'$' | b'!' | b'=' => match number(text) {
            Some(n) if n < 0 => Value::Done(next, None),
            Some(n) => {
                let Ok(n) = usize::try_from(n) else {
                    return Value::Invalid;
                };
                let end = next + n + 2;
                if b.len() < end {
                    Value::Incomplete
                } else if &b[end - 2..end] != b"\r\n" {
                    Value::Invalid
                } else {
                    Value::Done(end, Some(&b[next..end - 2]))
                }
            }
            None => Value::Invalid,
        },
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let Some(n) = number(text) else {
                return Value::Invalid;
            };
            let Ok(n) = usize::try_from(n) else {
                // A null array.
                return Value::Done(next, None);
            };
            let elements = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut at = next;
            for _ in 0..elements {
                match value(&b[at..]) {
                    Value::Done(len, _) => at += len,
                    other => return other,
                }
            }
            Value::Done(at, None)
        }
        _ => Value::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_measured_and_messages_told_apart() {
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nk a 1\r\n";
        assert_eq!(
            frame(message),
            Frame::Complete {
                len: message.len(),
                message: true
            }
        );
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n";
        assert_eq!(
            frame(push),
            Frame::Complete {
                len: push.len(),
                message: true
            }
        );
        let confirmation = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert_eq!(
            frame(confirmation),
            Frame::Complete {
                len: confirmation.len(),
                message: false
            }
        );
        for cut in 0..message.len() {
            assert_eq!(frame(&message[..cut]), Frame::Incomplete, "cut at {cut}");
        }
        assert_eq!(frame(b"?oops\r\n"), Frame::Invalid);
    }

    #[test]
    fn counting_across_reads() {
        let watch = std::sync::Arc::new(Watch::default());
        let mut watched = Watched::new((), std::sync::Arc::clone(&watch));
        let two = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\ny\r\n";
        watched.count(&two[..10]);
        assert_eq!(watch.read.load(Ordering::SeqCst), 0);
        assert!(watch.partial.load(Ordering::SeqCst));
        watched.count(&two[10..]);
        assert_eq!(watch.read.load(Ordering::SeqCst), 2);
        assert!(!watch.partial.load(Ordering::SeqCst));
        // Bytes that are not RESP: nothing is trusted from then on.
        watched.count(b"?what\r\n");
        watched.count(&two[..]);
        assert!(watch.partial.load(Ordering::SeqCst));
        assert_eq!(watch.read.load(Ordering::SeqCst), 2);
        assert!(watched.pending.is_empty());
    }
}
