//! DynamoDB store for offstate.
