//! A store built from a client that has no timeouts still bounds every
//! call: an endpoint that accepts connections and never answers is a
//! timeout with its real bound, not a hang and not `Timeout(0s)`.

use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::{Client, Config};
use offstate_core::{SessionId, SessionStore, StoreError, Timestamp};
use offstate_dynamodb::{DynamoDbConfig, DynamoDbStore};

#[tokio::test]
async fn a_client_without_timeouts_gets_the_default_bound() {
    // Accepts connections and reads nothing: a dead endpoint that hangs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let client = Client::from_conf(
        Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(endpoint)
            .build(),
    );
    assert!(
        client
            .config()
            .timeout_config()
            .is_none_or(|t| t.operation_timeout().is_none()),
        "the client under test must have no operation timeout"
    );
    let store = DynamoDbStore::from_client(client, DynamoDbConfig::new("sessions"));
    let key = SessionId::generate().key();
    let outcome = tokio::time::timeout(Duration::from_secs(60), store.load(&key, Timestamp::now()))
        .await
        .expect("the store call hung past 60 s");
    match outcome {
        Err(StoreError::Timeout(bound)) => assert!(bound > Duration::ZERO, "bound {bound:?}"),
        other => panic!("a silent endpoint must be a timeout, got {other:?}"),
    }
    held.abort();
}
