//! One memcached node: a tiny connection pool and the timeout that bounds
//! every request to it.
//!
//! A request checks out a connection (opening one within the connect
//! timeout if none is idle), runs, and gives the connection back only if
//! the whole exchange succeeded. Any failure or timeout drops the
//! connection, since its stream may be mid-reply; a cancelled request drops
//! it too, because the connection lives inside the request's future. A
//! semaphore caps the connections per node, so a burst waits (within the
//! request's timeout) instead of opening thousands of sockets.
//!
//! When a pooled connection turns out to be dead (the node restarted, or
//! closed idle connections), the idle connections are discarded and a
//! repeatable request is sent once more on a fresh connection.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::protocol::{Connection, ProtocolError, Request, Response};

/// Why a request to a node failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    /// The node did not answer (or accept the connection) in time.
    #[error("memcached node {addr} did not answer within {after:?}")]
    Timeout {
        /// The node.
        addr: String,
        /// The bound that expired.
        after: Duration,
    },
    /// The connection could not be opened.
    #[error("cannot connect to memcached node {addr}")]
    Connect {
        /// The node.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("memcached node {addr} failed")]
    Protocol {
        /// The node.
        addr: String,
        /// What happened.
        #[source]
        source: ProtocolError,
    },
}

impl NodeError {
    /// Whether the connection failed or timed out (as opposed to the server
    /// answering with an error).
    pub(crate) fn is_connection(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Connect { .. } => true,
            Self::Protocol { source, .. } => source.is_connection(),
        }
    }
}

/// Limits of one node's pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolLimits {
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_value: usize,
}

/// One node and its idle connections.
#[derive(Debug)]
pub(crate) struct Node {
    addr: String,
    limits: PoolLimits,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Node {
    /// A node at `addr` (`host:port`); nothing is connected yet.
    pub(crate) fn new(addr: String, limits: PoolLimits) -> Self {
        Self {
            addr,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The node's address.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs one request, bounded by the command timeout (which includes
    /// waiting for a connection and opening it).
    pub(crate) async fn execute(&self, request: &Request<'_>) -> Result<Response, NodeError> {
        let after = self.limits.command_timeout;
        match tokio::time::timeout(after, self.execute_unbounded(request)).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Timeout {
                addr: self.addr.clone(),
                after,
            }),
        }
    }

    async fn execute_unbounded(&self, request: &Request<'_>) -> Result<Response, NodeError> {
        let (mut lease, reused) = self.checkout().await?;
        match lease.conn.execute(request).await {
            Ok(response) => {
                self.checkin(lease);
                Ok(response)
            }
            Err(error) if reused && error.is_connection() => {
                // Probably a stale pooled connection: so are its siblings.
                self.lock_idle().clear();
                if !request.retryable() {
                    return Err(self.protocol(error));
                }
                tracing::debug!(node = %self.addr, %error, "pooled memcached connection was dead; retrying on a fresh one");
                lease.conn = self.connect().await?;
                match lease.conn.execute(request).await {
                    Ok(response) => {
                        self.checkin(lease);
                        Ok(response)
                    }
                    Err(error) => Err(self.protocol(error)),
                }
            }
            Err(error) => {
                if error.is_connection() {
                    self.lock_idle().clear();
                }
                Err(self.protocol(error))
            }
        }
    }

    fn protocol(&self, source: ProtocolError) -> NodeError {
        NodeError::Protocol {
            addr: self.addr.clone(),
            source,
        }
    }

    async fn checkout(&self) -> Result<(Lease, bool), NodeError> {
        // The semaphore is never closed; if it were, running without a
        // permit is still correct, only unbounded.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        let pooled = self.lock_idle().pop();
        match pooled {
            Some(conn) => Ok((
                Lease {
                    conn,
                    _permit: permit,
                },
                true,
            )),
            None => Ok((
                Lease {
                    conn: self.connect().await?,
                    _permit: permit,
                },
                false,
            )),
        }
    }

    fn checkin(&self, lease: Lease) {
        let mut idle = self.lock_idle();
        if idle.len() < self.limits.max_connections {
            idle.push(lease.conn);
        }
    }

    async fn connect(&self) -> Result<Connection, NodeError> {
        let after = self.limits.connect_timeout;
        match tokio::time::timeout(after, TcpStream::connect(self.addr.as_str())).await {
            Ok(Ok(stream)) => Ok(Connection::new(stream, self.limits.max_value)),
            Ok(Err(source)) => Err(NodeError::Connect {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(NodeError::Timeout {
                addr: self.addr.clone(),
                after,
            }),
        }
    }

    // Never held across an await; a poisoned lock only means a panic
    // elsewhere, and a list of idle connections is still a list.
    fn lock_idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A checked-out connection and the permit that counts it.
struct Lease {
    conn: Connection,
    _permit: Option<OwnedSemaphorePermit>,
}
