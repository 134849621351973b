//! A mesh split in two halves: each half keeps taking edits; after the split heals, every node
//! holds the same policy set. Nodes run in-process (real QUIC on loopback, real redb files) so the
//! test can cut the links between the halves.

use std::time::Duration;

use agent_mesh::members::MemberState;
use mesh_sim::{Cluster, ClusterSettings};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_take_edits_apart_and_converge_after_healing() {
    let settings = ClusterSettings {
        gossip_interval: Duration::from_millis(100),
        ..ClusterSettings::default()
    };
    let cluster = Cluster::start(6, settings).await.unwrap();
    let (left, right) = ([0, 1, 2], [3, 4, 5]);

    let shared = cluster.create_policy(0, "shared", 1).unwrap();
    assert!(
        cluster
            .wait_for(WAIT, |c| c.all_have(shared))
            .await
            .unwrap()
            .is_some(),
        "the first policy never reached every node"
    );

    cluster.partition(&left, &right);
    // Each half sees the other die: the split is real.
    for &i in &right {
        let mut dead = false;
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            let mut all = true;
            for &j in &left {
                let members = cluster.nodes[j].mesh.as_ref().unwrap().members().await;
                all &= members
                    .iter()
                    .any(|m| m.node_id == cluster.nodes[i].id && m.state == MemberState::Dead);
            }
            if all {
                dead = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            dead,
            "{} was never seen dead by the left half",
            cluster.nodes[i].id
        );
    }

    // Different policies on each side, and the same policy on both (the right edit is later).
    let left_only = cluster.create_policy(1, "left-only", 2).unwrap();
    let right_only = cluster.create_policy(4, "right-only", 3).unwrap();
    let base = cluster.nodes[2].store.get(shared).unwrap().unwrap();
    let edit = |priority| agent_store::PolicyFields {
        name: base.name.clone(),
        description: base.description.clone(),
        definition_json: base.definition_json.clone(),
        active: true,
        priority,
    };
    cluster.nodes[2]
        .store
        .update(shared, base.version, edit(10))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let winner = cluster.nodes[5]
        .store
        .update(shared, base.version, edit(20))
        .unwrap();

    let half_has = |c: &Cluster, half: &[usize], id| -> anyhow::Result<bool> {
        for &i in half {
            if c.nodes[i].store.get(id)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let spread = cluster
        .wait_for(WAIT, |c| {
            Ok(half_has(c, &left, left_only)? && half_has(c, &right, right_only)?)
        })
        .await
        .unwrap();
    assert!(
        spread.is_some(),
        "edits did not spread within their halves:\n{}",
        cluster.describe().await
    );
    for &i in &left {
        assert!(
            cluster.nodes[i].store.get(right_only).unwrap().is_none(),
            "node {i} got a change across the partition"
        );
    }

    cluster.heal();
    let converged = cluster
        .wait_for(WAIT, |c| {
            let digests = c.digests()?;
            Ok(c.all_have(left_only)?
                && c.all_have(right_only)?
                && digests.windows(2).all(|w| w[0] == w[1]))
        })
        .await
        .unwrap();
    assert!(
        converged.is_some(),
        "no convergence after healing:\n{}",
        cluster.describe().await
    );
    for node in &cluster.nodes {
        let record = node.store.get(shared).unwrap().unwrap();
        assert_eq!(
            record, winner,
            "{} kept another version of the shared policy",
            node.id
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_gets_the_whole_set_back() {
    let mut cluster = Cluster::start(
        3,
        ClusterSettings {
            gossip_interval: Duration::from_millis(100),
            ..ClusterSettings::default()
        },
    )
    .await
    .unwrap();
    let ids: Vec<u64> = (0..5)
        .map(|k| {
            cluster
                .create_policy(k % 3, &format!("p{k}"), k as i64)
                .unwrap()
        })
        .collect();
    // Every policy must have left its author before node 2's data goes.
    let everywhere = cluster
        .wait_for(WAIT, |c| {
            for &id in &ids {
                if !c.all_have(id)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .unwrap();
    assert!(everywhere.is_some(), "{}", cluster.describe().await);
    cluster.stop_node(2).await;
    cluster.wipe_node(2).await.unwrap();
    assert!(cluster.nodes[2].store.list().unwrap().is_empty());
    cluster.start_node(2).await.unwrap();
    let converged = cluster
        .wait_for(WAIT, |c| {
            let digests = c.digests()?;
            Ok(digests.windows(2).all(|w| w[0] == w[1]))
        })
        .await
        .unwrap();
    assert!(
        converged.is_some(),
        "no convergence:\n{}",
        cluster.describe().await
    );
    for &id in &ids {
        assert!(
            cluster.nodes[2].store.get(id).unwrap().is_some(),
            "policy {id} missing on the wiped node; ids {ids:?}; it has {:?}\n{}",
            cluster.nodes[2]
                .store
                .list()
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            cluster.describe().await
        );
    }
    cluster.shutdown().await;
}
