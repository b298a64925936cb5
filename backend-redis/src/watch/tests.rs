//! The watch's parsing and per-session answers, on real loopback sockets.

use std::io::Write;

use offstate_core::{SessionId, SessionKey, Version};

use super::*;

const CHANNEL: &str = "offstate:invalidations";

/// A pub/sub frame carrying `payload` on `channel`.
fn published(channel: &str, payload: &str) -> Vec<u8> {
    format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
        channel.len(),
        payload.len()
    )
    .into_bytes()
}

fn about(key: &SessionKey, version: Option<u64>) -> Vec<u8> {
    let message = Invalidation::Key {
        key: key.clone(),
        version: version.map(Version::new),
    };
    published(CHANNEL, &message.encode())
}

#[test]
fn frames_are_measured_and_messages_read() {
    let key = SessionId::generate().key();
    let message = about(&key, Some(1));
    let expected = Some(Seen::About(Invalidation::Key {
        key: key.clone(),
        version: Some(Version::new(1)),
    }));
    assert_eq!(
        frame(&message, CHANNEL.as_bytes()),
        Frame::Complete {
            len: message.len(),
            seen: expected.clone()
        }
    );
    let push = String::from_utf8(message.clone())
        .unwrap()
        .replacen('*', ">", 1);
    assert_eq!(
        frame(push.as_bytes(), CHANNEL.as_bytes()),
        Frame::Complete {
            len: push.len(),
            seen: expected
        }
    );
    let heartbeat = published("offstate:invalidations:hb:x", "7");
    assert_eq!(
        frame(&heartbeat, CHANNEL.as_bytes()),
        Frame::Complete {
            len: heartbeat.len(),
            seen: Some(Seen::Elsewhere)
        }
    );
    let garbage = published(CHANNEL, "not an invalidation");
    assert_eq!(
        frame(&garbage, CHANNEL.as_bytes()),
        Frame::Complete {
            len: garbage.len(),
            seen: Some(Seen::Unreadable)
        }
    );
    let confirmation = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    assert_eq!(
        frame(confirmation, CHANNEL.as_bytes()),
        Frame::Complete {
            len: confirmation.len(),
            seen: None
        }
    );
    for cut in 0..message.len() {
        assert_eq!(
            frame(&message[..cut], CHANNEL.as_bytes()),
            Frame::Incomplete,
            "cut at {cut}"
        );
    }
    assert_eq!(frame(b"?oops\r\n", CHANNEL.as_bytes()), Frame::Invalid);
}

#[test]
fn a_line_ending_where_a_value_starts_is_refused_not_a_panic() {
    // A line ending at the start of a value (top level or nested) once
    // sliced the line's text as b[1..0] and panicked, in the subscriber
    // task or in a cache hit's check.
    for bytes in [&b"\r\n"[..], b"*1\r\n\r\n", b">3\r\n$7\r\nmessage\r\n\r\n"] {
        assert_eq!(
            frame(bytes, CHANNEL.as_bytes()),
            Frame::Invalid,
            "{bytes:?}"
        );
        assert_eq!(parse(bytes), Parsed::Invalid, "{bytes:?}");
    }
}

#[test]
fn lengths_read_as_str_parse_reads_them() {
    for text in [
        "0",
        "7",
        "-1",
        "+5",
        "9223372036854775807",
        "-9223372036854775808",
    ] {
        assert_eq!(number(text.as_bytes()), text.parse().ok(), "{text}");
    }
    for text in ["", "-", "+", "1a", " 1", "9223372036854775808", "--1", "1-"] {
        assert_eq!(number(text.as_bytes()), None, "{text}");
    }
}

#[test]
fn a_frame_is_parsed_in_one_pass_with_its_message() {
    let message = published(CHANNEL, "p alice");
    assert_eq!(
        parse(&message),
        Parsed::Complete {
            len: message.len(),
            push: Some(Push::Message(Some(CHANNEL.as_bytes()), Some(b"p alice")))
        }
    );
    let pattern = b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$2\r\nch\r\n$1\r\nx\r\n";
    assert_eq!(
        parse(pattern),
        Parsed::Complete {
            len: pattern.len(),
            push: Some(Push::Message(Some(b"ch"), Some(b"x")))
        }
    );
    // A message with the wrong number of parts is garbled: it still
    // counts (as about every session), with empty parts.
    let short = b"*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n";
    assert_eq!(
        parse(short),
        Parsed::Complete {
            len: short.len(),
            push: Some(Push::Garbled)
        }
    );
    assert_eq!(Push::Garbled.parts(), (&b""[..], &b""[..]));
    // Not a message: a reply, a null array, a confirmation.
    for other in [
        &b"+OK\r\n"[..],
        b"*-1\r\n",
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    ] {
        assert_eq!(
            parse(other),
            Parsed::Complete {
                len: other.len(),
                push: None
            }
        );
    }
}

/// A watch on one end of a loopback connection, and the other end.
fn connected() -> (Watch, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (socket, _) = listener.accept().unwrap();
    socket.set_nonblocking(true).unwrap();
    let watch = Watch::new(CHANNEL);
    watch.watch(socket);
    (watch, sender)
}

/// Sends `bytes` and returns once all of them are readable on the
/// watched end.
fn send(watch: &Watch, sender: &mut TcpStream, bytes: &[u8]) {
    sender.write_all(bytes).unwrap();
    let mut buffer = vec![0; 2 * PEEK_MAX];
    for _ in 0..10_000 {
        let io = watch.io.read().unwrap();
        let readable = io.socket.as_ref().unwrap().peek(&mut buffer).unwrap_or(0);
        if readable >= bytes.len() {
            return;
        }
        drop(io);
        std::thread::yield_now();
    }
    panic!("the bytes never arrived");
}

/// Reads everything on the watched end, as redis-rs would.
fn read_all(watch: &Watch) {
    let mut io = watch.io.write().unwrap();
    let mut buffer = vec![0; PEEK_MAX];
    let n = std::io::Read::read(&mut io.socket.as_ref().unwrap(), &mut buffer).unwrap();
    watch.account(&mut io, &buffer[..n]);
}

#[test]
fn only_messages_about_the_copy_count() {
    let (watch, mut sender) = connected();
    let key = SessionId::generate().key();
    let other = SessionId::generate().key();
    let copy = CachedCopy::new(&key, Some("alice"), Version::new(3));
    assert!(!watch.in_transit(&copy));
    // Another session's message on the socket: the copy may be served.
    send(&watch, &mut sender, &about(&other, None));
    assert!(watch.in_transit(&CachedCopy::new(&other, None, Version::new(1))));
    assert!(!watch.in_transit(&copy));
    // This instance's own write of version 3 coming back: neither.
    send(&watch, &mut sender, &about(&key, Some(3)));
    assert!(!watch.in_transit(&copy));
    // Read off the socket and held: still told apart.
    read_all(&watch);
    assert!(watch.anything_in_transit());
    assert!(!watch.in_transit(&copy));
    assert!(watch.in_transit(&CachedCopy::new(&other, None, Version::new(1))));
    // A newer version of the copy's own key, on the socket.
    send(&watch, &mut sender, &about(&key, Some(4)));
    assert!(watch.in_transit(&copy));
    // Read and held; then forwarded, oldest first.
    read_all(&watch);
    assert!(watch.in_transit(&copy));
    watch.forwarded();
    watch.forwarded();
    assert!(watch.in_transit(&copy));
    watch.forwarded();
    assert!(!watch.in_transit(&copy));
    assert!(!watch.anything_in_transit());
    // The copy's principal revoked.
    send(&watch, &mut sender, &published(CHANNEL, "p alice"));
    assert!(watch.in_transit(&copy));
    assert!(!watch.in_transit(&CachedCopy::new(&other, Some("bob"), Version::new(1))));
}

#[test]
fn what_cannot_be_read_counts_for_every_copy() {
    let key = SessionId::generate().key();
    let copy = CachedCopy::new(&key, None, Version::new(1));
    let other = SessionId::generate().key();
    let message = about(&other, None);
    // A frame cut short on the socket: its key is not readable yet.
    let (watch, mut sender) = connected();
    send(&watch, &mut sender, &message[..20]);
    assert!(watch.in_transit(&copy));
    // Partly read by redis-rs, the rest on the socket: read as one.
    read_all(&watch);
    assert!(watch.in_transit(&copy));
    send(&watch, &mut sender, &message[20..]);
    assert!(!watch.in_transit(&copy));
    // A payload that does not decode.
    let (watch, mut sender) = connected();
    send(&watch, &mut sender, &published(CHANNEL, "k ???"));
    assert!(watch.in_transit(&copy));
    read_all(&watch);
    assert!(watch.in_transit(&copy));
    // Bytes that are not RESP: nothing is trusted until reconnected.
    let (watch, mut sender) = connected();
    send(&watch, &mut sender, b"?what\r\n");
    assert!(watch.in_transit(&copy));
    read_all(&watch);
    assert!(watch.in_transit(&copy));
    // More unread bytes than a check inspects.
    let (watch, mut sender) = connected();
    let mut many = Vec::new();
    while many.len() <= PEEK_MAX {
        many.extend_from_slice(&message);
    }
    send(&watch, &mut sender, &many);
    assert!(watch.in_transit(&copy));
}

#[test]
fn messages_past_the_cap_count_for_every_copy_until_forwarded() {
    let watch = Watch::new(CHANNEL);
    let key = SessionId::generate().key();
    let copy = CachedCopy::new(&key, None, Version::new(1));
    let message = about(&SessionId::generate().key(), None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (socket, _) = listener.accept().unwrap();
    socket.set_nonblocking(true).unwrap();
    watch.watch(socket);
    {
        let mut io = watch.io.write().unwrap();
        for _ in 0..=HELD_MAX {
            watch.account(&mut io, &message);
        }
    }
    // The ones kept are forwarded; the one past the cap is still unknown.
    for _ in 0..HELD_MAX {
        watch.forwarded();
    }
    assert!(watch.in_transit(&copy));
    watch.forwarded();
    assert!(!watch.in_transit(&copy));
    assert!(!watch.anything_in_transit());
}
