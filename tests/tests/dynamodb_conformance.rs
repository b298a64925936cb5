//! The conformance suite on `DynamoStore`, against moto.

use offstate_testing::dynamodb::DynamoHarness;

offstate_core::conformance_tests!(async { DynamoHarness::start().await });
