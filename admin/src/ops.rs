//! The operations behind the endpoints, callable without HTTP (the
//! command-line tool uses them): list, revoke one, revoke all, health.

use std::time::Instant;

use offstate_core::{IdError, SessionError, SessionKey, Sessions, StoreError};

use crate::schema::{Health, RevokedAll, RevokedOne, SessionList, SessionSummary, Status};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The key is not a stored session key (43 characters of URL-safe
    /// base64).
    #[error("not a session key")]
    BadKey(#[source] IdError),
    /// The cursor of a listing is not one a page gave (a stored key).
    #[error("not a listing cursor")]
    BadCursor(#[source] IdError),
    /// The page size of a listing is 0 or over [`MAX_LIMIT`].
    #[error("a page holds 1 to {MAX_LIMIT} sessions, not {0}")]
    BadLimit(usize),
    /// The store cannot do this (memcached cannot list a principal's
    /// sessions).
    #[error("the {store} store cannot {what}")]
    Unsupported {
        /// The store's name.
        store: &'static str,
        /// What it cannot do.
        what: &'static str,
    },
    /// The store failed or did not answer.
    #[error("the {store} store failed")]
    Store {
        /// The store's name.
        store: &'static str,
        /// What it said.
        #[source]
        source: SessionError,
    },
}

impl AdminError {
    fn store(sessions: &Sessions, source: SessionError) -> Self {
        match source {
            SessionError::Store(StoreError::Unsupported(what)) => Self::Unsupported {
                store: sessions.store_name(),
                what,
            },
            source => Self::Store {
                store: sessions.store_name(),
                source,
            },
        }
    }

    /// The stable code of this error in [`ErrorBody`](crate::ErrorBody).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadKey(_) => "bad_key",
            Self::BadCursor(_) => "bad_cursor",
            Self::BadLimit(_) => "bad_limit",
            Self::Unsupported { .. } => "unsupported",
            Self::Store {
                source: SessionError::Store(StoreError::Timeout(_)),
                ..
            } => "store_timeout",
            Self::Store {
                source: SessionError::Store(StoreError::Unavailable(_)),
                ..
            } => "store_unavailable",
            Self::Store { .. } => "store_failed",
        }
    }
}

/// Parses a stored key given by an operator.
///
/// # Errors
///
/// [`AdminError::BadKey`] when it is not one.
pub fn parse_key(text: &str) -> Result<SessionKey, AdminError> {
    SessionKey::from_stored(text).map_err(AdminError::BadKey)
}

/// How many sessions a page of a listing holds unless asked otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most sessions a page of a listing holds: each is one store read.
pub const MAX_LIMIT: usize = 1000;

/// Which part of a principal's sessions to list: at most `limit`, those
/// whose key comes after `after` (the cursor a previous page gave).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    limit: usize,
    after: Option<SessionKey>,
}

impl Page {
    /// The first `limit` sessions.
    ///
    /// # Errors
    ///
    /// [`AdminError::BadLimit`] when `limit` is 0 or over [`MAX_LIMIT`].
    pub fn first(limit: usize) -> Result<Self, AdminError> {
        if (1..=MAX_LIMIT).contains(&limit) {
            Ok(Self { limit, after: None })
        } else {
            Err(AdminError::BadLimit(limit))
        }
    }

    /// This page size, after the cursor `cursor` (a page's
    /// [`next_cursor`](crate::SessionList::next_cursor)).
    ///
    /// # Errors
    ///
    /// [`AdminError::BadCursor`] when `cursor` is not a stored key.
    pub fn after(self, cursor: &str) -> Result<Self, AdminError> {
        let after = SessionKey::from_stored(cursor).map_err(AdminError::BadCursor)?;
        Ok(Self {
            after: Some(after),
            ..self
        })
    }

    /// The page size.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Default for Page {
    /// The first [`DEFAULT_LIMIT`] sessions.
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// The live sessions of `principal`, oldest first (every one: see
/// [`list_page`] for a bounded part). `progress` is called with (done,
/// total) after each record is read, for a progress bar.
///
/// # Errors
///
/// [`AdminError::Unsupported`] where the store cannot list;
/// [`AdminError::Store`] when it fails.
pub async fn list_sessions(
    sessions: &Sessions,
    principal: &str,
    progress: impl FnMut(usize, usize) + Send,
) -> Result<SessionList, AdminError> {
    list(sessions, principal, None, progress).await
}

/// One page of the live sessions of `principal`: the keys are listed and
/// ordered, and only the page's records are read (one store read each).
/// Pages follow the order of the stored keys; within a page sessions are
/// oldest first. [`SessionList::next_cursor`] is the cursor of the next
/// page (`None` on the last). A session created while paging may land on
/// a page already read and be missed; none is listed twice.
///
/// # Errors
///
/// As [`list_sessions`].
pub async fn list_page(
    sessions: &Sessions,
    principal: &str,
    page: &Page,
    progress: impl FnMut(usize, usize) + Send,
) -> Result<SessionList, AdminError> {
    list(sessions, principal, Some(page), progress).await
}

async fn list(
    sessions: &Sessions,
    principal: &str,
    page: Option<&Page>,
    mut progress: impl FnMut(usize, usize) + Send,
) -> Result<SessionList, AdminError> {
    let mut keys = sessions
        .list_principal(principal)
        .await
        .map_err(|e| AdminError::store(sessions, e))?;
    let mut next_cursor = None;
    if let Some(page) = page {
        keys.sort_unstable();
        keys.dedup();
        if let Some(after) = &page.after {
            keys.retain(|k| k > after);
        }
        if keys.len() > page.limit {
            keys.truncate(page.limit);
            next_cursor = keys.last().map(|k| k.as_str().to_owned());
        }
    }
    let idle = sessions.expiry().idle();
    let total = keys.len();
    let mut found = Vec::with_capacity(total);
    for (done, key) in keys.iter().enumerate() {
        let record = sessions
            .inspect(key)
            .await
            .map_err(|e| AdminError::store(sessions, e))?;
        // Ended between the listing and the read, or moved to another
        // principal since: not one of theirs now.
        if let Some(record) = record.filter(|r| r.principal.as_deref() == Some(principal)) {
            found.push(SessionSummary::of(key, &record, idle));
        }
        progress(done + 1, total);
    }
    found.sort_by(|a, b| (a.created_at_ms, &a.key).cmp(&(b.created_at_ms, &b.key)));
    Ok(SessionList {
        principal: principal.to_owned(),
        store: sessions.store_name().to_owned(),
        sessions: found,
        consistent: sessions.capabilities().consistent_principal_index,
        next_cursor,
    })
}

/// Ends the session stored under `key`.
///
/// # Errors
///
/// [`AdminError::Store`] when the store fails.
pub async fn revoke_one(sessions: &Sessions, key: &SessionKey) -> Result<RevokedOne, AdminError> {
    let revoked = sessions
        .revoke_key(key)
        .await
        .map_err(|e| AdminError::store(sessions, e))?;
    Ok(RevokedOne {
        key: key.as_str().to_owned(),
        revoked,
    })
}

/// Ends every session of `principal`.
///
/// # Errors
///
/// [`AdminError::Store`] when the store fails; sessions reached before
/// the failure stay ended, and calling again finishes the job.
pub async fn revoke_all(sessions: &Sessions, principal: &str) -> Result<RevokedAll, AdminError> {
    let count = sessions
        .revoke_principal(principal)
        .await
        .map_err(|e| AdminError::store(sessions, e))?;
    // A store that cannot list cannot count either (memcached revokes by
    // epoch and reports 0).
    let counted = sessions.capabilities().list_principal;
    Ok(RevokedAll {
        principal: principal.to_owned(),
        revoked: counted.then_some(count),
    })
}

/// Probes the store once ([`Sessions::ping`]).
pub async fn health(sessions: &Sessions) -> Health {
    let started = Instant::now();
    let outcome = sessions.ping().await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, error) = match outcome {
        Ok(()) => (Status::Up, None),
        Err(error) => (Status::Down, Some(error_line(&error))),
    };
    Health {
        store: sessions.store_name().to_owned(),
        status,
        latency_ms,
        error,
        capabilities: sessions.capabilities().into(),
    }
}

/// An error and its sources on one line.
#[must_use]
pub fn error_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
