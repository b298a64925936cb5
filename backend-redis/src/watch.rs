//! Watching the subscriber's socket, so a cache hit can tell whether an
//! invalidation about the session it would serve has reached this process
//! without reaching the cache yet.
//!
//! Why: a peer's logout script publishes before Redis answers the peer, so
//! by the time a client hears "logged out" and asks this instance, the
//! message has usually been written to this instance's subscriber socket.
//! It then still has to be read (by redis-rs's driver task), handed to the
//! subscription task and queued for the cache; a hit that runs meanwhile
//! would serve the session. Each stage marks what it holds before the
//! previous one lets go of it, and [`Watch::in_transit`] checks them
//! upstream first: the socket's unread bytes together with the start of a
//! frame redis-rs has read only partly (read under the same lock that
//! redis-rs's reads take, so a read is either wholly before the check or
//! wholly after it), then the messages read but not yet queued. The cache
//! checks its own queue after.
//!
//! Per session: the bytes are parsed as RESP pub/sub frames and each
//! payload decoded as an [`Invalidation`], so a message about another
//! session does not count. What cannot be read that way (bytes that are
//! not RESP, a payload that does not decode, a frame not complete yet,
//! more unread bytes than [`PEEK_MAX`]) counts for every session.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};

use offstate_core::{CachedCopy, Invalidation};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most unread bytes a check inspects; more than that on the socket
/// counts as a message about every session.
pub(crate) const PEEK_MAX: usize = 16 * 1024;

/// The most messages read and not yet queued that are kept decoded; past
/// it, they count as messages about every session until they are queued.
const HELD_MAX: usize = 1024;

/// What one pub/sub message read off the socket says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A message on another channel (the heartbeat's): about no session.
    Elsewhere,
    /// An invalidation.
    About(Invalidation),
    /// A payload that does not decode: about every session.
    Unreadable,
}

impl Seen {
    fn concerns(&self, copy: &CachedCopy<'_>) -> bool {
        match self {
            Self::Elsewhere => false,
            Self::About(message) => message.concerns(copy),
            Self::Unreadable => true,
        }
    }
}

/// The socket and what redis-rs has read of it, behind one lock.
#[derive(Debug, Default)]
struct Io {
    /// A duplicate of the subscriber socket, only ever peeked at; `None`
    /// while no watched connection is up.
    socket: Option<TcpStream>,
    /// Bytes of a frame redis-rs has read only partly: the socket's unread
    /// bytes continue it.
    partial: Vec<u8>,
    /// The stream stopped parsing as RESP: nothing is trusted until the
    /// next connection.
    broken: bool,
}

/// Messages read off the socket and not yet queued for the cache, oldest
/// first.
#[derive(Debug, Default)]
struct Held {
    messages: VecDeque<Seen>,
    /// Messages past [`HELD_MAX`], not kept (they follow `messages`).
    uncounted: usize,
}

/// One subscription's view of its socket and of the messages in its tasks.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The invalidation channel's name; messages on others concern no
    /// session.
    channel: Box<[u8]>,
    /// Taken for writing by every read of the socket, for reading by checks.
    io: RwLock<Io>,
    /// True while the subscription runs on a connection that cannot be
    /// watched (TLS, a Unix socket): nothing can be told, as before.
    blind: AtomicBool,
    held: Mutex<Held>,
}

impl Watch {
    /// A watch for the subscription to `channel`.
    pub(crate) fn new(channel: &str) -> Self {
        Self {
            channel: channel.as_bytes().into(),
            io: RwLock::default(),
            blind: AtomicBool::new(false),
            held: Mutex::default(),
        }
    }

    /// Whether a message that concerns `copy`, or one that cannot be read,
    /// may be between the socket and the subscriber's queue. One `peek`
    /// system call and a parse of what it returned.
    pub(crate) fn in_transit(&self, copy: &CachedCopy<'_>) -> bool {
        if self.blind.load(Ordering::SeqCst) {
            return false;
        }
        {
            let io = self.io.read().unwrap_or_else(PoisonError::into_inner);
            // No connection: nothing can be on its way (and the cache, told
            // the channel is down, trusts its entries for the staleness bound).
            let Some(socket) = io.socket.as_ref() else {
                return false;
            };
            if io.broken || self.unread_concerns(socket, &io.partial, copy) {
                return true;
            }
        }
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.uncounted > 0 || held.messages.iter().any(|seen| seen.concerns(copy))
    }

    /// Whether the socket's unread bytes, after `partial`, hold a message
    /// that concerns `copy` or cannot be read.
    fn unread_concerns(&self, socket: &TcpStream, partial: &[u8], copy: &CachedCopy<'_>) -> bool {
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUFFER.with_borrow_mut(|buffer| {
            // Grown once, never cleared: only the bytes peeked are read.
            let start = partial.len();
            if buffer.len() < start + PEEK_MAX {
                buffer.resize(start + PEEK_MAX, 0);
            }
            buffer[..start].copy_from_slice(partial);
            // The duplicate shares the non-blocking flag: this never waits.
            let peeked = match socket.peek(&mut buffer[start..start + PEEK_MAX]) {
                // End of stream: the subscription is ending; trust nothing.
                Ok(0) => return true,
                Ok(n) if n == PEEK_MAX => return true,
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => 0,
                Err(_) => return true,
            };
            let unread = &buffer[..start + peeked];
            let mut at = 0;
            while at < unread.len() {
                match frame(&unread[at..], &self.channel) {
                    Frame::Complete { len, seen } => {
                        if seen.is_some_and(|seen| seen.concerns(copy)) {
                            return true;
                        }
                        at += len;
                    }
                    // Its key is not readable yet, or the bytes are not RESP.
                    Frame::Incomplete | Frame::Invalid => return true,
                }
            }
            false
        })
    }

    /// Whether anything at all may be between the socket and the queue.
    #[cfg(test)]
    fn anything_in_transit(&self) -> bool {
        let io = self.io.read().unwrap_or_else(PoisonError::into_inner);
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        io.broken || !io.partial.is_empty() || !held.messages.is_empty() || held.uncounted > 0
    }

    /// A new watched connection: what was held for the last one is gone.
    pub(crate) fn watch(&self, socket: TcpStream) {
        let mut io = self.io.write().unwrap_or_else(PoisonError::into_inner);
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Held::default();
        *io = Io {
            socket: Some(socket),
            ..Io::default()
        };
        self.blind.store(false, Ordering::SeqCst);
    }

    /// A connection that cannot be watched.
    pub(crate) fn unwatched(&self) {
        let mut io = self.io.write().unwrap_or_else(PoisonError::into_inner);
        *io = Io::default();
        self.blind.store(true, Ordering::SeqCst);
    }

    /// No connection.
    pub(crate) fn closed(&self) {
        let mut io = self.io.write().unwrap_or_else(PoisonError::into_inner);
        *io = Io::default();
        self.blind.store(false, Ordering::SeqCst);
    }

    /// The oldest message read off the socket has been queued for the
    /// cache, or dropped.
    pub(crate) fn forwarded(&self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.messages.pop_front().is_none() {
            held.uncounted = held.uncounted.saturating_sub(1);
        }
    }

    /// Accounts for `bytes` just read off the socket: complete messages are
    /// held (before the lock on `io` is let go), the rest of a frame kept.
    fn account(&self, io: &mut Io, bytes: &[u8]) {
        if io.broken {
            return;
        }
        io.partial.extend_from_slice(bytes);
        let mut at = 0;
        let mut read = Vec::new();
        loop {
            match frame(&io.partial[at..], &self.channel) {
                Frame::Complete { len, seen } => {
                    at += len;
                    read.extend(seen);
                }
                Frame::Incomplete => break,
                Frame::Invalid => {
                    // Not RESP as we know it: trust nothing from now on
                    // (every hit asks the backend until the next connection).
                    tracing::warn!(
                        "the invalidation subscriber read bytes it cannot parse; \
                         the cache asks the backend on every read until it reconnects"
                    );
                    io.broken = true;
                    io.partial = Vec::new();
                    return;
                }
            }
        }
        io.partial.drain(..at);
        if !read.is_empty() {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            for seen in read {
                if held.uncounted > 0 || held.messages.len() >= HELD_MAX {
                    held.uncounted += 1;
                } else {
                    held.messages.push_back(seen);
                }
            }
        }
    }
}

/// The subscriber's stream, holding the pub/sub messages redis-rs reads
/// before redis-rs sees them.
pub(crate) struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, watch: Arc<Watch>) -> Self {
        Self { inner, watch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        // Held across the read: a check sees the bytes either still on the
        // socket or already accounted for.
        let mut io = this
            .watch
            .io
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            this.watch.account(&mut io, &buf.filled()[before..]);
        }
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
    /// A whole top-level value of `len` bytes; `seen` when it is a pub/sub
    /// message (`message`, `pmessage`, `smessage`), which the subscriber
    /// hands to the cache.
    Complete {
        len: usize,
        seen: Option<Seen>,
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

/// The frame at the start of `b`, a subscription to `channel` reading it.
fn frame(b: &[u8], channel: &[u8]) -> Frame {
    match parse(b) {
        Parsed::Complete { len, push } => Frame::Complete {
            len,
            seen: push.map(|push| message(push, channel)),
        },
        Parsed::Incomplete => Frame::Incomplete,
        Parsed::Invalid => Frame::Invalid,
    }
}

/// A top-level frame parsed once (every byte of it read once): its length
/// and, if it is a pub/sub message, what it holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    Complete { len: usize, push: Option<Push<'a>> },
    Incomplete,
    Invalid,
}

/// A pub/sub message: an aggregate whose first element names the kind of
/// push, and whose last two are the channel and the payload.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Push<'a> {
    /// A `message`, `smessage` or `pmessage` with its channel and payload.
    Message(Option<&'a [u8]>, Option<&'a [u8]>),
    /// A message whose parts cannot be read.
    Garbled,
}

impl<'a> Push<'a> {
    /// The channel and payload the subscriber hands on (a garbled message
    /// with empty parts): exactly the frames [`Watch`] holds as read and
    /// not yet forwarded.
    pub(crate) fn parts(self) -> (&'a [u8], &'a [u8]) {
        match self {
            Self::Message(named, payload) => {
                (named.unwrap_or_default(), payload.unwrap_or_default())
            }
            Self::Garbled => (&[], &[]),
        }
    }
}

/// The frame at the start of `b`.
pub(crate) fn parse(b: &[u8]) -> Parsed<'_> {
    // Only an array or a push can be a pub/sub message.
    let mut firsts = Firsts::default();
    let collect = matches!(b.first(), Some(b'*' | b'>'));
    match value(b, collect.then_some(&mut firsts)) {
        Value::Done(len, _) => Parsed::Complete {
            len,
            push: firsts.push(),
        },
        Value::Incomplete => Parsed::Incomplete,
        Value::Invalid => Parsed::Invalid,
    }
}

/// An aggregate's element count and the texts of its first elements: a
/// message has 3 or 4, and the first 4 tell which it is.
#[derive(Default)]
struct Firsts<'a> {
    texts: [Option<&'a [u8]>; 4],
    count: usize,
}

impl<'a> Firsts<'a> {
    fn push(&self) -> Option<Push<'a>> {
        let [kind, a, b, c] = self.texts;
        match (kind?, self.count) {
            (b"message" | b"smessage", 3) => Some(Push::Message(a, b)),
            (b"pmessage", 4) => Some(Push::Message(b, c)),
            (b"message" | b"smessage" | b"pmessage", _) => Some(Push::Garbled),
            _ => None,
        }
    }
}

/// What a pub/sub message on a subscription to `channel` says.
fn message(push: Push<'_>, channel: &[u8]) -> Seen {
    let (named, payload) = match push {
        Push::Message(named, payload) => (named, payload),
        Push::Garbled => return Seen::Unreadable,
    };
    if named.is_some_and(|named| named != channel) {
        return Seen::Elsewhere;
    }
    let decoded = payload
        .and_then(|payload| std::str::from_utf8(payload).ok())
        .map(Invalidation::decode);
    match decoded {
        Some(Ok(invalidation)) => Seen::About(invalidation),
        _ => Seen::Unreadable,
    }
}

/// The first line's text (after the type byte) and where the next starts.
/// A plain loop: the lines read here are a few bytes long.
fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    let mut at = 1;
    loop {
        let cr = at + b.get(at..)?.iter().position(|&c| c == b'\r')?;
        if b.get(cr + 1) == Some(&b'\n') {
            return Some((&b[1..cr], cr + 2));
        }
        at = cr + 1;
    }
}

/// A decimal integer, as `str::parse::<i64>` reads it, without the UTF-8
/// pass.
fn number(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if negative {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

/// What follows a type byte on its line.
enum Shape {
    /// The line is the value (`+`, `-`, `:` and RESP3's simple types).
    Simple,
    /// The line is a length, the string follows (`$`, `!`, `=`).
    Bulk,
    /// The line is a count of elements, each `per` values (`*`, `>`, `~`:
    /// 1; maps and attributes, `%` and `|`: 2).
    Aggregate { per: usize },
}

/// The value at the start of `b`; for an aggregate, its element count and
/// first texts go to `firsts` when given.
fn value<'a>(b: &'a [u8], firsts: Option<&mut Firsts<'a>>) -> Value<'a> {
    let Some(&kind) = b.first() else {
        return Value::Incomplete;
    };
    let shape = match kind {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Shape::Simple,
        b'$' | b'!' | b'=' => Shape::Bulk,
        b'*' | b'>' | b'~' => Shape::Aggregate { per: 1 },
        b'%' | b'|' => Shape::Aggregate { per: 2 },
        // Not a RESP type: no bytes still to come can make it one.
        _ => return Value::Invalid,
    };
    let Some((text, next)) = line(b) else {
        return Value::Incomplete;
    };
    match shape {
        Shape::Simple => Value::Done(next, Some(text)),
        Shape::Bulk => match number(text) {
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
        Shape::Aggregate { per } => {
            let Some(n) = number(text) else {
                return Value::Invalid;
            };
            let Ok(n) = usize::try_from(n) else {
                // A null array.
                return Value::Done(next, None);
            };
            let mut firsts = firsts;
            let mut at = next;
            for i in 0..per * n {
                match value(&b[at..], None) {
                    Value::Done(len, text) => {
                        if let Some(firsts) = firsts.as_deref_mut() {
                            if let Some(slot) = firsts.texts.get_mut(i) {
                                *slot = text;
                            }
                            firsts.count = i + 1;
                        }
                        at += len;
                    }
                    other => return other,
                }
            }
            Value::Done(at, None)
        }
    }
}

/// Reads `bytes` frame by frame as the subscriber and a hit's check do
/// (messages decoded), asserting what must hold of any input: a frame lies
/// within the bytes, and a frame cut short is incomplete (never taken for
/// a shorter one). For the fuzz target.
#[cfg(feature = "fuzzing")]
pub fn read_frames(bytes: &[u8], channel: &[u8]) {
    let mut at = 0;
    while let Frame::Complete { len, .. } = frame(&bytes[at..], channel) {
        let rest = &bytes[at..];
        assert!(
            len > 0 && len <= rest.len(),
            "a frame of {len} bytes in {}",
            rest.len()
        );
        assert_eq!(frame(&rest[..len - 1], channel), Frame::Incomplete);
        at += len;
    }
}

#[cfg(test)]
mod tests;
