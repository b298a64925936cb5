//! "Try again later" answers of DynamoDB are an outage (503 through the
//! middleware), never a backend bug (500): throttling and server errors on
//! every operation, from a protocol peer that answers as DynamoDB does when
//! it is overloaded (moto never throttles).

// Integration tests: a panic is a failing test.
#![allow(clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::{Client, Config};
use offstate_core::{
    Change, Deadlines, Record, SessionId, SessionStore, StoreError, Timestamp, Version,
};
use offstate_dynamodb::{DynamoDbConfig, DynamoDbStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Serves every request with DynamoDB's answer for `code` at `status`.
async fn overloaded(status: u16, code: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 64 * 1024];
                let mut read = 0;
                loop {
                    let Ok(n) = socket.read(&mut buffer[read..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    read += n;
                    let text = String::from_utf8_lossy(&buffer[..read]);
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if read < end + 4 + length {
                        continue;
                    }
                    let body = format!(
                        r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"try again later"}}"#
                    );
                    let reply = format!(
                        "HTTP/1.1 {status} Error\r\nx-amzn-ErrorType: {code}\r\nx-amzn-RequestId: test\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    read = 0;
                }
            });
        }
    });
    format!("http://{address}")
}

fn store(endpoint: String) -> DynamoDbStore {
    let client = Client::from_conf(
        Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(endpoint)
            .build(),
    );
    // One attempt: the SDK's own retries would only make the test slower.
    DynamoDbStore::from_client(
        client,
        DynamoDbConfig::new("sessions")
            .with_max_attempts(1)
            .with_command_timeout(Duration::from_secs(5)),
    )
}

async fn every_operation_is_an_outage(status: u16, code: &'static str) {
    let store = store(overloaded(status, code).await);
    let key = SessionId::generate().key();
    let now = Timestamp::now();
    let record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(60))),
    );
    let mut change = Change::new(Version::INITIAL, record.deadlines);
    change.set.insert("cart".into(), b"[]".to_vec());
    let results: Vec<(&str, Result<(), StoreError>)> = vec![
        ("load", store.load(&key, now).await.map(drop)),
        ("create", store.create(&key, &record, now).await.map(drop)),
        ("save", store.save(&key, &change, now).await.map(drop)),
        ("touch", store.touch(&key, now, now).await.map(drop)),
        ("delete", store.delete(&key, now).await.map(drop)),
        (
            "delete_if_version",
            store
                .delete_if_version(&key, Version::INITIAL, now)
                .await
                .map(drop),
        ),
        (
            "revoke",
            store.revoke_principal("alice", now).await.map(drop),
        ),
    ];
    for (operation, result) in results {
        match result {
            Err(error) if error.is_outage() => {}
            other => panic!("{operation} under {code} must be an outage, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn throttling_is_an_outage_on_every_operation() {
    every_operation_is_an_outage(400, "ThrottlingException").await;
}

#[tokio::test]
async fn exceeded_throughput_is_an_outage_on_every_operation() {
    every_operation_is_an_outage(400, "ProvisionedThroughputExceededException").await;
}

#[tokio::test]
async fn a_server_error_is_an_outage_on_every_operation() {
    every_operation_is_an_outage(500, "InternalServerError").await;
}
