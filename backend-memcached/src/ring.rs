//! Consistent hashing: which node holds a key.
//!
//! A ketama-style ring: every node gets [`POINTS_PER_NODE`] points, hashed
//! from its address with SHA-256, and a key belongs to the first point at or
//! after the key's own hash. Adding or losing a node moves only the keys on
//! the arcs it owned (about 1/n of them); every other key stays where it was,
//! so an ElastiCache cluster that gains or loses a node logs out only that
//! share of users. The hash is stable across processes and versions, so
//! every app instance maps a key to the same node.
//!
//! The point layout is ketama's (160 points per node, four-byte slices of a
//! digest), but with SHA-256 instead of MD5, so it is not byte-compatible with
//! libmemcached's ketama; offstate keys are only read by offstate.

use sha2::{Digest, Sha256};

/// Points each node gets on the ring.
pub(crate) const POINTS_PER_NODE: usize = 160;

/// The ring over a fixed list of nodes.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    /// (point, node index), sorted.
    points: Vec<(u32, usize)>,
}

impl Ring {
    /// A ring over `nodes`, identified by their addresses.
    pub(crate) fn new<S: AsRef<str>>(nodes: &[S]) -> Self {
        let mut points = Vec::with_capacity(nodes.len() * POINTS_PER_NODE);
        for (index, node) in nodes.iter().enumerate() {
            let node = node.as_ref();
            // A SHA-256 digest holds eight 4-byte points.
            for block in 0..POINTS_PER_NODE.div_ceil(8) {
                let digest = Sha256::digest(format!("{node}-{block}").as_bytes());
                for chunk in digest.chunks_exact(4).take(POINTS_PER_NODE - block * 8) {
                    let mut raw = [0u8; 4];
                    raw.copy_from_slice(chunk);
                    points.push((u32::from_be_bytes(raw), index));
                }
            }
        }
        // Ties (vanishingly rare) are broken by address, not by list order,
        // so every instance builds the same ring whatever order its
        // configuration lists the nodes in.
        points.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| nodes[a.1].as_ref().cmp(nodes[b.1].as_ref()))
        });
        Self { points }
    }

    /// The index of the node that holds `key`. A ring with no nodes answers 0.
    pub(crate) fn node_for(&self, key: &str) -> usize {
        let hash = key_hash(key);
        let at = self.points.partition_point(|(point, _)| *point < hash);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map_or(0, |(_, node)| *node)
    }
}

fn key_hash(key: &str) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&digest[..4]);
    u32::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> impl Iterator<Item = String> {
        (0..20_000).map(|i| format!("offstate:key-{i}"))
    }

    #[test]
    fn every_node_gets_a_fair_share() {
        let nodes = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"];
        let ring = Ring::new(&nodes);
        let mut counts = [0usize; 3];
        for key in keys() {
            counts[ring.node_for(&key)] += 1;
        }
        for count in counts {
            // An even share is 6,667; 160 points keep it within ±25 %.
            assert!((5_000..8_400).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn losing_a_node_moves_only_its_keys() {
        let three = ["a:1", "b:1", "c:1"];
        let two = ["a:1", "c:1"];
        let (before, after) = (Ring::new(&three), Ring::new(&two));
        for key in keys() {
            let was = three[before.node_for(&key)];
            let now = two[after.node_for(&key)];
            if was != "b:1" {
                assert_eq!(was, now, "{key} moved although its node stayed");
            }
        }
    }

    #[test]
    fn node_order_does_not_matter() {
        let a = Ring::new(&["x:1", "y:1"]);
        let b = Ring::new(&["y:1", "x:1"]);
        for key in keys().take(1000) {
            let na = ["x:1", "y:1"][a.node_for(&key)];
            let nb = ["y:1", "x:1"][b.node_for(&key)];
            assert_eq!(na, nb);
        }
    }

    #[test]
    fn one_node_takes_everything_and_none_is_safe() {
        let ring = Ring::new(&["only:1"]);
        assert!(keys().take(100).all(|k| ring.node_for(&k) == 0));
        let empty = Ring::new::<&str>(&[]);
        assert_eq!(empty.node_for("k"), 0);
        assert_eq!(ring.points.len(), POINTS_PER_NODE);
    }
}
