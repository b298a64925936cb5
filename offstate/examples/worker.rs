//! Sessions without HTTP: a background worker (a queue consumer, a gRPC
//! service) loads a session by its ID, changes it, and saves it with the
//! same guarantees as a request: a conditional write that replays on
//! conflict, and nothing written to a session that ended.
//!
//! ```sh
//! cargo run -p offstate --example worker
//! ```

use offstate::{MemoryStore, SessionError, SessionId, Sessions};
use tokio::sync::mpsc;

/// A job a web request queued for later: mark the order of this session paid.
struct PaymentConfirmed {
    session: SessionId,
    order: u32,
}

/// The worker: for each job, load the session and record the payment.
async fn worker(sessions: Sessions, mut jobs: mpsc::Receiver<PaymentConfirmed>) -> Vec<String> {
    let mut log = Vec::new();
    while let Some(job) = jobs.recv().await {
        let outcome = match sessions.load(&job.session).await {
            Ok(Some(session)) => {
                let paid = session
                    .update("paid", move |orders: Option<Vec<u32>>| {
                        let mut orders = orders.unwrap_or_default();
                        orders.push(job.order);
                        Some(orders)
                    })
                    .await;
                match (paid, session.save().await) {
                    (Ok(_), Ok(())) => format!("order {} marked paid", job.order),
                    (Err(e), _) | (_, Err(e)) => format!("order {}: {e}", job.order),
                }
            }
            // Logged out meanwhile: nothing is written, nothing comes back.
            Ok(None) => format!("order {}: the session has ended", job.order),
            Err(e) => format!("order {}: {e}", job.order),
        };
        log.push(outcome);
    }
    log
}

async fn run() -> Result<Vec<String>, SessionError> {
    let sessions = Sessions::new(MemoryStore::new());
    // What a web request would have done: a session with an order in it.
    let shopper = sessions.new_session();
    shopper.insert("orders", &[17u32]).await?;
    shopper.save().await?;
    let id = shopper.id().ok_or(SessionError::Gone)?;
    let gone = sessions.new_session();
    gone.insert("orders", &[18u32]).await?;
    gone.save().await?;
    let gone_id = gone.id().ok_or(SessionError::Gone)?;
    gone.delete().await?;

    let (queue, jobs) = mpsc::channel(16);
    let running = tokio::spawn(worker(sessions.clone(), jobs));
    for (session, order) in [(id, 17), (gone_id, 18)] {
        let _ = queue.send(PaymentConfirmed { session, order }).await;
    }
    drop(queue);
    Ok(running.await.unwrap_or_default())
}

#[tokio::main]
async fn main() -> Result<(), SessionError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[tokio::test]
    async fn a_live_session_is_updated_and_an_ended_one_left_alone() {
        assert_eq!(
            super::run().await.unwrap(),
            ["order 17 marked paid", "order 18: the session has ended"]
        );
    }
}
