//! 1,000 `update` closures from 50 tasks on two separate store instances
//! (two app instances) against one redis-server lose nothing.

use std::collections::BTreeSet;

use offstate_core::Sessions;
use offstate_testing::redis::RedisServer;

const TASKS: usize = 50;
const UPDATES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_updates_from_two_instances_lose_nothing() {
    let server = RedisServer::start().expect("redis-server");
    let a = Sessions::new(server.store().await.expect("store")).with_max_attempts(100_000);
    let b = Sessions::new(server.store().await.expect("store")).with_max_attempts(100_000);
    let session = a.new_session();
    session
        .insert("cart", &Vec::<String>::new())
        .await
        .expect("insert");
    session.save().await.expect("create");
    let id = session.id().await.expect("created");

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let sessions = if t % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for u in 0..UPDATES {
                let session = sessions.open(Some(id.clone()));
                let item = format!("{t}-{u}");
                session
                    .update("cart", move |cart: Option<Vec<String>>| {
                        let mut cart = cart.unwrap_or_default();
                        cart.push(item.clone());
                        Some(cart)
                    })
                    .await
                    .expect("update");
                session.save().await.expect("save");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    let cart: Vec<String> = b
        .load(&id)
        .await
        .expect("load")
        .expect("live")
        .get("cart")
        .await
        .expect("get")
        .expect("cart");
    let unique: BTreeSet<&String> = cart.iter().collect();
    assert_eq!(cart.len(), TASKS * UPDATES, "lost updates");
    assert_eq!(unique.len(), TASKS * UPDATES, "duplicated updates");
}
