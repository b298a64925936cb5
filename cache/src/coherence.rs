//! Listening to the invalidation channel: evict what peers changed, and
//! fall back to bounded staleness while the channel is down.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use offstate_core::{ChannelEvent, Invalidation};

use crate::inbox::Inbox;
use crate::shared::Shared;
use crate::stats::Counter;

/// Runs until the cache is dropped or the channel closes for good.
///
/// An event taken stays visible in the inbox, as being handled, until its
/// eviction is done, so a hit about its session never misses it.
pub(crate) async fn listen(shared: Weak<Shared>, inbox: Arc<Inbox>) {
    loop {
        let event = std::future::poll_fn(|cx| inbox.poll_take(cx)).await;
        let Some(event) = event else {
            break;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        handle(&shared, event).await;
        inbox.handled();
    }
    if let Some(shared) = shared.upgrade() {
        disconnected(&shared);
        tracing::warn!("session invalidation channel closed; the cache stays on bounded staleness");
    }
}

async fn handle(shared: &Arc<Shared>, event: ChannelEvent) {
    match event {
        ChannelEvent::Connected => {
            if !shared.subscribed.swap(true, Ordering::SeqCst) {
                // A load that read the backend before this point may have
                // missed invalidations sent while the channel was down: it
                // must not be cached under the coherent TTL now. Entries
                // cached meanwhile carry the staleness bound and may stay,
                // but the fence covers every load that started before.
                shared.clear();
                shared.counters.bump(Counter::Recovered);
                tracing::info!("session invalidation channel connected; cache is coherent");
                // What this instance could not announce while cut off.
                shared.flush_unsent().await;
            }
        }
        ChannelEvent::Disconnected => disconnected(shared),
        ChannelEvent::Message(message) => {
            shared.echoes.came_back(&message);
            match message {
                // Our own writes come back too: an entry already at (or
                // past) the announced version stays.
                Invalidation::Key { key, version } => shared.forget_before(&key, version),
                Invalidation::Principal(principal) => shared.forget_principal(&principal),
                _ => shared.clear(),
            }
            // Counted once handled: a reader that sees the count knows the
            // eviction is done.
            shared.counters.bump(Counter::Invalidation);
        }
        // An event this version does not know: distrust the cache.
        _ => shared.clear(),
    }
}

/// Entries cached under the coherent TTL may now miss invalidations, so
/// they go; new ones get the staleness bound until the channel is back.
fn disconnected(shared: &Shared) {
    if shared.subscribed.swap(false, Ordering::SeqCst) {
        shared.fall_back("the invalidation channel is lost");
    } else {
        shared.clear();
    }
}
