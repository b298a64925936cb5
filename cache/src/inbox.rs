//! The inbox: the channel's events between the channel and the listener,
//! where a hit can see which sessions they are about.
//!
//! A tokio receiver cannot be looked into, so whoever looks (a hit, or the
//! listener taking the next event) first moves what the receiver holds
//! into a queue of its own, under one lock. The event the listener is
//! handling stays visible until its eviction is done.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use offstate_core::{CachedCopy, ChannelEvent};
use tokio::sync::mpsc;

/// The most events moved out of the receiver to be looked at; past it, the
/// rest count as events about every session.
const LOOKED_AT_MAX: usize = 4096;

#[derive(Debug)]
struct State {
    events: mpsc::Receiver<ChannelEvent>,
    /// Events out of the receiver, oldest first, not yet taken.
    queued: VecDeque<ChannelEvent>,
    /// The event the listener took and has not finished handling.
    handling: Option<ChannelEvent>,
}

impl State {
    /// Moves what the receiver holds into `queued`, up to the cap; false
    /// if the receiver still holds events past it.
    fn pull(&mut self) -> bool {
        while self.queued.len() < LOOKED_AT_MAX {
            match self.events.try_recv() {
                Ok(event) => self.queued.push_back(event),
                Err(_) => return true,
            }
        }
        self.events.is_empty()
    }
}

/// The channel's events not yet handled.
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
}

impl Inbox {
    pub(crate) fn new(events: mpsc::Receiver<ChannelEvent>) -> Self {
        Self {
            state: Mutex::new(State {
                events,
                queued: VecDeque::new(),
                handling: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an event not yet handled (queued, or being handled)
    /// satisfies `about`.
    pub(crate) fn holds(&self, about: impl Fn(&ChannelEvent) -> bool) -> bool {
        let mut state = self.state();
        if !state.pull() {
            return true;
        }
        state.handling.iter().chain(&state.queued).any(about)
    }

    /// Takes the next event for the listener, which then counts as being
    /// handled until [`Inbox::handled`]; `None` once the channel closed.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        let mut state = self.state();
        let next = match state.queued.pop_front() {
            Some(event) => Poll::Ready(Some(event)),
            None => state.events.poll_recv(cx),
        };
        if let Poll::Ready(Some(event)) = &next {
            state.handling = Some(event.clone());
        }
        next
    }

    /// The event taken last is handled: its eviction is done.
    pub(crate) fn handled(&self) {
        self.state().handling = None;
    }
}

/// Whether `event` may make the cached `copy` stale: a message that
/// concerns it, or a change of the channel's state (the listener empties
/// the cache on those).
pub(crate) fn concerns(event: &ChannelEvent, copy: &CachedCopy<'_>) -> bool {
    match event {
        ChannelEvent::Message(message) => message.concerns(copy),
        _ => true,
    }
}
