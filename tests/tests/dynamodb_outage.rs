//! A store that cannot answer gives a typed outage error within the
//! configured bound: a paused moto (accepts connections, answers nothing)
//! is a `Timeout`, a port with nothing listening is `Unavailable`.

use std::time::Duration;

use offstate_core::{SessionId, SessionStore, StoreError};
use offstate_dynamodb::aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use offstate_dynamodb::{DynamoDbConfig, DynamoDbStore};
use offstate_testing::dynamodb::unique;
use offstate_testing::free_port;

fn bounded(table: &str) -> DynamoDbConfig {
    DynamoDbConfig::new(table)
        .with_max_attempts(2)
        .with_timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500))
                .operation_attempt_timeout(Duration::from_millis(500))
                .operation_timeout(Duration::from_millis(1500))
                .build(),
        )
}

#[tokio::test]
async fn a_paused_server_is_a_timeout_and_the_store_recovers() {
    // A server of its own: the test pauses it.
    let moto = match offstate_testing::dynamodb().await {
        Ok(moto) => moto,
        Err(error) => panic!("cannot start moto: {error}"),
    };
    let config = bounded(&unique("paused"));
    let store = moto.store_with(config).await.expect("table");
    let key = SessionId::generate().key();

    moto.node().pause().await.expect("pause");
    let outcome = store.load(&key, offstate_core::Timestamp::now()).await;
    moto.node().resume().await.expect("resume");
    match outcome {
        Err(error @ StoreError::Timeout(bound)) => {
            assert!(error.is_outage());
            assert_eq!(
                bound,
                Duration::from_millis(1500),
                "reports the operation bound"
            );
        }
        other => panic!("a paused server must time out, got {other:?}"),
    }
    assert!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load after resume")
            .is_none()
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    let port = free_port().expect("port");
    let moto = match offstate_testing::dynamodb().shared().await {
        Ok(moto) => moto,
        Err(error) => panic!("cannot start moto: {error}"),
    };
    let store = DynamoDbStore::from_client(
        moto.client(),
        bounded("nowhere").with_endpoint_url(format!("http://127.0.0.1:{port}")),
    );
    match store
        .load(
            &SessionId::generate().key(),
            offstate_core::Timestamp::now(),
        )
        .await
    {
        Err(error @ StoreError::Unavailable(_)) => {
            assert!(error.is_outage());
            assert!(
                std::error::Error::source(&error).is_some(),
                "keeps the SDK error"
            );
        }
        other => panic!("a dead endpoint must be Unavailable, got {other:?}"),
    }
}
