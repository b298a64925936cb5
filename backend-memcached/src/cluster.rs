//! The nodes of a cluster behind one key-addressed interface: each key goes
//! to its node on the [ring](crate::ring), and failures become
//! [`StoreError`]s.

use offstate_core::StoreError;

use crate::pool::{Node, NodeError, PoolLimits};
use crate::protocol::{ProtocolError, Request, Response, StoreCommand, StoreReply, Value};
use crate::ring::Ring;

/// Every node of the cluster and the ring that maps keys to them.
#[derive(Debug)]
pub(crate) struct Cluster {
    nodes: Vec<Node>,
    ring: Ring,
}

/// A failed write: the node said the item is too large, or anything else.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The server refused the item for its size.
    TooLarge(NodeError),
    /// Any other failure.
    Store(StoreError),
}

impl Cluster {
    /// A cluster over `addrs`.
    pub(crate) fn new(addrs: &[String], limits: PoolLimits) -> Self {
        Self {
            nodes: addrs
                .iter()
                .map(|addr| Node::new(addr.clone(), limits))
                .collect(),
            ring: Ring::new(addrs),
        }
    }

    fn node(&self, key: &str) -> Result<&Node, StoreError> {
        self.nodes
            .get(self.ring.node_for(key))
            .ok_or(StoreError::Unsupported("a memcached store without nodes"))
    }

    /// The address of the node that holds `key` (empty without nodes).
    pub(crate) fn node_addr(&self, key: &str) -> &str {
        self.node(key).map_or("", Node::addr)
    }

    /// `gets` one key.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let node = self.node(key)?;
        let values = values(node, node.execute(&Request::Gets(&[key])).await)?;
        Ok(values.into_iter().find(|v| v.key == key))
    }

    /// `gets` two keys in one round: one multi-get when they share a node,
    /// two concurrent requests otherwise.
    pub(crate) async fn get_two(
        &self,
        a: &str,
        b: &str,
    ) -> Result<(Option<Value>, Option<Value>), StoreError> {
        let (node_a, node_b) = (self.node(a)?, self.node(b)?);
        let mut found = if std::ptr::eq(node_a, node_b) {
            values(node_a, node_a.execute(&Request::Gets(&[a, b])).await)?
        } else {
            let (keys_a, keys_b) = ([a], [b]);
            let (req_a, req_b) = (Request::Gets(&keys_a), Request::Gets(&keys_b));
            let (ra, rb) = tokio::join!(node_a.execute(&req_a), node_b.execute(&req_b));
            let mut found = values(node_a, ra)?;
            found.extend(values(node_b, rb)?);
            found
        };
        let take = |found: &mut Vec<Value>, key: &str| {
            found
                .iter()
                .position(|v| v.key == key)
                .map(|at| found.swap_remove(at))
        };
        let va = take(&mut found, a);
        let vb = take(&mut found, b);
        Ok((va, vb))
    }

    /// `add` or `cas`.
    pub(crate) async fn store(
        &self,
        command: StoreCommand,
        key: &str,
        exptime: u64,
        data: &[u8],
    ) -> Result<StoreReply, WriteError> {
        let node = self.node(key).map_err(WriteError::Store)?;
        let request = Request::Store {
            command,
            key,
            exptime,
            data,
        };
        match node.execute(&request).await {
            Ok(Response::Store(reply)) => Ok(reply),
            Ok(other) => Err(WriteError::Store(unexpected(node, &other))),
            Err(
                error @ NodeError::Protocol {
                    source: ProtocolError::TooLarge(_),
                    ..
                },
            ) => Err(WriteError::TooLarge(error)),
            Err(error) => Err(WriteError::Store(store_error(error))),
        }
    }

    /// `delete`: whether the key was there.
    pub(crate) async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let node = self.node(key)?;
        match node
            .execute(&Request::Delete(key))
            .await
            .map_err(store_error)?
        {
            Response::Deleted(was) => Ok(was),
            other => Err(unexpected(node, &other)),
        }
    }

    /// `incr`: the new value, or `None` when the key is absent.
    pub(crate) async fn incr(&self, key: &str, by: u64) -> Result<Option<u64>, StoreError> {
        let node = self.node(key)?;
        match node
            .execute(&Request::Incr(key, by))
            .await
            .map_err(store_error)?
        {
            Response::Incremented(value) => Ok(value),
            other => Err(unexpected(node, &other)),
        }
    }
}

fn values(node: &Node, result: Result<Response, NodeError>) -> Result<Vec<Value>, StoreError> {
    match result.map_err(store_error)? {
        Response::Values(values) => Ok(values),
        other => Err(unexpected(node, &other)),
    }
}

fn unexpected(node: &Node, response: &Response) -> StoreError {
    StoreError::backend(NodeError::Protocol {
        addr: node.addr().to_owned(),
        source: ProtocolError::Unexpected(format!("{response:?}")),
    })
}

/// Maps a node failure to the store's error: timeouts, broken connections
/// and "try again later" answers (out of memory, too many connections) are
/// outages; anything else the server said is a backend error.
pub(crate) fn store_error(error: NodeError) -> StoreError {
    match error {
        NodeError::Timeout { after, .. } => StoreError::Timeout(after),
        NodeError::Connect { .. } => StoreError::unavailable(error),
        NodeError::Protocol { ref source, .. }
            if source.is_connection() || source.is_overload() =>
        {
            StoreError::unavailable(error)
        }
        NodeError::Protocol { .. } => StoreError::backend(error),
    }
}
