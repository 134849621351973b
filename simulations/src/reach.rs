//! Who can reach whom, and since when: each node's partition group and the moment it last became
//! up and reachable (start, restart, join, partition, heal). Both engines keep one, and count a
//! node not seen live as a false alarm only once it and its observer have both been settled, in
//! one group, for [`SETTLE`].

use std::time::Duration;

use tokio::time::Instant;

use crate::scenario::NodeSet;

/// How long a node must have been up and reachable before not seeing it live is a false alarm.
pub const SETTLE: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Reach {
    group: Vec<usize>,
    since: Vec<Instant>,
    /// The partition in force (node indices per group).
    partition: Option<Vec<Vec<usize>>>,
}

impl Reach {
    /// Node `i` (the next one) is added at `now`; during a partition it is in the one more group
    /// of the nodes no group lists.
    pub fn add(&mut self, i: usize, now: Instant) {
        assert_eq!(i, self.group.len(), "nodes are added in order");
        self.group.push(self.no_group());
        self.since.push(now);
    }

    /// Node `i` came up (again) at `now`.
    pub fn up(&mut self, i: usize, now: Instant) {
        self.since[i] = now;
    }

    /// Splits the nodes into `groups` at `now`; returns each group's nodes.
    pub fn partition(&mut self, groups: &[NodeSet], now: Instant) -> anyhow::Result<&[Vec<usize>]> {
        let n = self.group.len();
        let mut members = Vec::with_capacity(groups.len());
        self.group.fill(groups.len());
        for (g, set) in groups.iter().enumerate() {
            let set = set.resolve(n)?;
            for &i in &set {
                self.group[i] = g;
            }
            members.push(set);
        }
        self.since.fill(now);
        Ok(self.partition.insert(members))
    }

    pub fn heal(&mut self, now: Instant) {
        self.partition = None;
        self.group.fill(0);
        self.since.fill(now);
    }

    /// The partition in force, if any.
    pub fn partition_in_force(&self) -> Option<&[Vec<usize>]> {
        self.partition.as_deref()
    }

    pub fn group(&self, i: usize) -> usize {
        self.group[i]
    }

    /// Whether node `i` has been up and reachable for [`SETTLE`] at `now`.
    pub fn settled(&self, i: usize, now: Instant) -> bool {
        now.saturating_duration_since(self.since[i]) >= SETTLE
    }

    fn no_group(&self) -> usize {
        self.partition.as_ref().map_or(0, Vec::len)
    }
}
