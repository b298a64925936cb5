//! The conformance suite on `DynamoDbStore`, against moto (one server shared
//! by the cases, a table per case).

#![allow(clippy::expect_used)]

offstate_core::conformance_tests!(async {
    offstate_testing::dynamodb()
        .shared()
        .await
        .expect("moto for the conformance suite (scripts/setup.sh installs it)")
});
