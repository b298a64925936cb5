//! Memcached and ElastiCache Memcached store for offstate.
