//! Redis and ElastiCache Redis store for offstate.
