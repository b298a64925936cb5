//! Instances whose clocks disagree. Each instance decides expiry with its
//! own clock; deadlines never move backwards, so an instance whose clock
//! runs behind cannot shorten a session another instance extended. See the
//! "Clocks" section of the `SessionStore` docs for the tolerance.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use offstate_core::{ExpiryPolicy, ManualClock, MemoryStore, Sessions};

const IDLE: Duration = Duration::from_secs(600);

fn instance(store: &MemoryStore, clock: &ManualClock) -> Sessions {
    Sessions::new(store.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_expiry(
            ExpiryPolicy::never()
                .with_idle(Some(IDLE))
                .with_touch_threshold(0.0),
        )
}

/// Two clocks, the first `skew` ahead of the second.
fn skewed(skew: Duration) -> (ManualClock, ManualClock) {
    let behind = ManualClock::new();
    let ahead = ManualClock::new();
    ahead.advance(skew);
    (ahead, behind)
}

#[tokio::test]
async fn an_instance_behind_cannot_shorten_a_session_by_touching_it() {
    // Why: a late touch from a slow instance would log the user out early.
    let store = MemoryStore::new();
    let (fast, slow) = skewed(Duration::from_secs(300));
    let a = instance(&store, &fast);
    let b = instance(&store, &slow);
    let session = a.new_session();
    session.insert("cart", &["apple"]).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();
    let set_by_a = session.expires_at().await.unwrap().unwrap();
    // B's clock is 5 minutes behind; with a touch threshold of 0 its read
    // touches, asking for a deadline 5 minutes earlier than A's.
    slow.advance(Duration::from_secs(1));
    let read = b.load(&id).await.unwrap().unwrap();
    read.save().await.unwrap();
    let after = a.load(&id).await.unwrap().unwrap();
    assert_eq!(after.expires_at().await.unwrap(), Some(set_by_a));
}

#[tokio::test]
async fn an_instance_ahead_sees_a_session_end_early_by_its_skew() {
    // Why: documents the tolerance: an instance whose clock is ahead ends
    // sessions early by its skew; the one that wrote still serves them.
    let store = MemoryStore::new();
    let (fast, slow) = skewed(Duration::from_secs(120));
    let writer = instance(&store, &slow);
    let reader = instance(&store, &fast);
    let session = writer.new_session();
    session.insert("k", &1).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();
    // Nine minutes later by the writer's clock the session is live for it;
    // the reader, two minutes ahead, is past the ten-minute idle deadline.
    slow.advance(Duration::from_secs(540));
    fast.advance(Duration::from_secs(540));
    assert!(writer.load(&id).await.unwrap().is_some());
    assert!(reader.load(&id).await.unwrap().is_none());
}
