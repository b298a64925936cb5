//! Listening to the invalidation channel: evict what peers changed, and
//! fall back to bounded staleness while the channel is down.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use offstate_core::{ChannelEvent, Invalidation};
use tokio::sync::mpsc;

use crate::stats::Counter;
use crate::store::Shared;

/// Evicts every cached session of `principal`, and fences off loads of
/// them that are still in flight.
pub(crate) async fn forget_principal(shared: &Shared, principal: &str) {
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
    shared.recent_principals.insert(principal.to_owned(), seq);
    let owned = principal.to_owned();
    let predicate = shared
        .cache
        .invalidate_entries_if(move |_, entry| entry.record.principal.as_deref() == Some(&owned));
    if let Err(error) = predicate {
        // Only possible if closures were not enabled at build time; they are.
        // Dropping everything is the safe answer.
        tracing::error!(%error, "could not evict a principal's sessions; emptying the cache");
        shared.clear();
    }
    shared.cache.run_pending_tasks().await;
}

/// Runs until the cache is dropped or the channel closes for good.
pub(crate) async fn listen(shared: Weak<Shared>, mut events: mpsc::Receiver<ChannelEvent>) {
    while let Some(event) = events.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        handle(&shared, event).await;
    }
    if let Some(shared) = shared.upgrade() {
        fall_back(&shared);
        tracing::warn!("session invalidation channel closed; the cache stays on bounded staleness");
    }
}

async fn handle(shared: &Arc<Shared>, event: ChannelEvent) {
    match event {
        ChannelEvent::Connected => {
            if !shared.coherent.swap(true, Ordering::SeqCst) {
                shared.counters.bump(Counter::Recovered);
                tracing::info!("session invalidation channel connected; cache is coherent");
            }
        }
        ChannelEvent::Disconnected => fall_back(shared),
        ChannelEvent::Message(message) => {
            shared.counters.bump(Counter::Invalidation);
            match message {
                Invalidation::Key {
                    key,
                    version: Some(version),
                } => {
                    // Our own writes come back too: keep an entry that is
                    // already at (or past) the announced version.
                    let current = shared.cache.get(&key).await;
                    if current.is_none_or(|e| e.record.version < version) {
                        shared.forget(&key).await;
                    }
                }
                Invalidation::Key { key, version: None } => shared.forget(&key).await,
                Invalidation::Principal(principal) => forget_principal(shared, &principal).await,
                _ => shared.clear(),
            }
        }
        // An event this version does not know: distrust the cache.
        _ => shared.clear(),
    }
}

/// Entries cached under the coherent TTL may now miss invalidations, so
/// they go; new ones get the staleness bound until the channel is back.
fn fall_back(shared: &Shared) {
    if shared.coherent.swap(false, Ordering::SeqCst) {
        shared.counters.bump(Counter::Fallback);
        tracing::warn!("session invalidation channel lost; cache falls back to bounded staleness");
    }
    shared.clear();
}
