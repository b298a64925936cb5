//! Tower layer and axum extractor for offstate sessions.
