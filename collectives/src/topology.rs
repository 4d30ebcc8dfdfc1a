//! Which ranks of a communicator share a node: what the hierarchical algorithms need.

/// Node of each communicator rank (nodes numbered by their lowest rank's order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    node_of: Vec<u32>,
    nodes: u32,
    max_ppn: u32,
}

impl Topology {
    /// Every rank on one node.
    pub fn flat(size: u32) -> Self {
        Self::new(vec![0; size as usize])
    }

    fn new(node_of: Vec<u32>) -> Self {
        let nodes = node_of.iter().max().map_or(0, |m| m + 1);
        let max_ppn = (0..nodes)
            .map(|n| node_of.iter().filter(|&&x| x == n).count() as u32)
            .max()
            .unwrap_or(0);
        Self {
            node_of,
            nodes,
            max_ppn,
        }
    }

    /// From any per-rank node key (host names, ids): ranks with equal keys share a node.
    pub fn from_keys<K: PartialEq>(keys: &[K]) -> Self {
        let mut firsts: Vec<&K> = Vec::new();
        let node_of = keys
            .iter()
            .map(|k| match firsts.iter().position(|f| *f == k) {
                Some(i) => i as u32,
                None => {
                    firsts.push(k);
                    (firsts.len() - 1) as u32
                }
            })
            .collect();
        Self::new(node_of)
    }

    /// Blocks of `ppn` consecutive ranks per node (to exercise hierarchical algorithms on
    /// one host: `OXMPI_COLL_NODE_SIZE`).
    pub fn blocks(size: u32, ppn: u32) -> Self {
        let ppn = ppn.max(1);
        Self::new((0..size).map(|r| r / ppn).collect())
    }

    /// Ranks of this topology.
    pub fn size(&self) -> u32 {
        self.node_of.len() as u32
    }

    /// Number of nodes.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Most ranks on one node.
    pub fn max_ppn(&self) -> u32 {
        self.max_ppn
    }

    /// Node of rank `r`.
    pub fn node(&self, r: u32) -> u32 {
        self.node_of[r as usize]
    }

    /// The ranks on `r`'s node, in rank order.
    pub fn local_members(&self, r: u32) -> Vec<u32> {
        let n = self.node(r);
        (0..self.size()).filter(|&x| self.node(x) == n).collect()
    }

    /// One leader per node, in node order: the lowest rank, or `root` on the root's node.
    pub fn leaders(&self, root: Option<u32>) -> Vec<u32> {
        (0..self.nodes())
            .map(|n| match root {
                Some(rt) if self.node(rt) == n => rt,
                _ => (0..self.size())
                    .find(|&x| self.node(x) == n)
                    .expect("nodes are numbered densely"),
            })
            .collect()
    }

    /// This topology restricted to the communicator ranks `members` (in their order).
    pub fn restrict(&self, members: &[u32]) -> Self {
        let keys: Vec<u32> = members.iter().map(|&m| self.node(m)).collect();
        Self::from_keys(&keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_number_nodes_by_first_rank() {
        let t = Topology::from_keys(&["b", "a", "b", "c", "a"]);
        assert_eq!(t.node_of, vec![0, 1, 0, 2, 1]);
        assert_eq!(t.nodes(), 3);
        assert_eq!(t.max_ppn(), 2);
        assert_eq!(t.local_members(4), vec![1, 4]);
        assert_eq!(t.leaders(None), vec![0, 1, 3]);
        assert_eq!(t.leaders(Some(4)), vec![0, 4, 3]);
        assert_eq!(Topology::blocks(5, 2).leaders(None), vec![0, 2, 4]);
    }
}
