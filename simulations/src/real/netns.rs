//! The real engine's network: one bridge in the root namespace, and each node in a network
//! namespace of its own, on a veth pair into the bridge, all on one /16. Partitions are blackhole
//! routes inside the namespaces (the root namespace, where `mesh-sim` reaches every node's API,
//! is never cut off). Everything is named after this run, and removed when [`Network`] drops.
//!
//! Needs root and `ip` (iproute2); the error says so when either is missing.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The kernel's neighbour (ARP) table thresholds, shared by every namespace: with the defaults
/// (at most 1,024 entries in all) a mesh of 64 nodes, each knowing every other, overflows it and
/// new neighbours are refused (`arp_cache: neighbor table overflow!`).
const NEIGH_THRESH: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

pub struct Network {
    /// Names this run's links and namespaces (four hex digits).
    run: String,
    /// The neighbour thresholds before the run, put back when it ends.
    neigh_before: Vec<(&'static str, String)>,
    /// Second octet of the /16.
    subnet: u8,
    bridge: String,
    namespaces: Vec<String>,
}

impl Network {
    /// The bridge, up, with the root namespace's address on it, for up to `nodes` nodes.
    pub fn new(nodes: usize) -> anyhow::Result<Network> {
        // Safety: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "the real engine puts every node in a network namespace of its own, which needs root (run mesh-sim as root, or use the fast engine)"
            );
        }
        if Command::new("ip").arg("-V").output().is_err() {
            bail!("the real engine needs `ip` (Debian: apt-get install iproute2)");
        }
        let pid = std::process::id();
        let run = format!("{:04x}", pid & 0xffff);
        let subnet = free_subnet(pid)?;
        let bridge = format!("msb{run}");
        let network = Network {
            run,
            neigh_before: raise_neigh_thresholds(nodes)?,
            subnet,
            bridge,
            namespaces: Vec::new(),
        };
        let root = Ipv4Addr::new(10, subnet, 0, 1);
        if let Err(err) = ip(&[], &format!("link add {} type bridge\n", network.bridge)) {
            // Not ours (another run's, or one left behind): dropping must not delete it.
            let mut network = network;
            let bridge = std::mem::take(&mut network.bridge);
            return Err(err.context(format!(
                "creating bridge {bridge} (left by an earlier run? `ip link del {bridge}`)"
            )));
        }
        ip(
            &[],
            &format!(
                "addr add {root}/16 dev {b}\nlink set {b} up\n",
                b = network.bridge
            ),
        )
        .context("configuring the bridge")?;
        Ok(network)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let n = i as u32 + 2;
        Ipv4Addr::new(10, self.subnet, (n >> 8) as u8, n as u8)
    }

    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Adds node `i` (the next one): its namespace, its veth pair, its address.
    pub fn add(&mut self, i: usize) -> anyhow::Result<()> {
        assert_eq!(i, self.namespaces.len(), "nodes are added in order");
        let ns = format!("msim-{}-{i}", self.run);
        let host = format!("ms{}h{i}", self.run);
        let peer = format!("ms{}p{i}", self.run);
        // Recorded first, so that dropping removes it whatever part of the batch failed (removing
        // a namespace removes its end of the veth pair, and with it the other).
        self.namespaces.push(ns.clone());
        ip(&[], &format!(
            "netns add {ns}\nlink add {host} type veth peer name {peer}\nlink set {host} master {b}\nlink set {host} up\nlink set {peer} netns {ns}\n",
            b = self.bridge
        ))
        .with_context(|| format!("creating node {i}'s namespace"))?;
        ip(&["-n", &ns], &format!(
            "link set lo up\nlink set {peer} name eth0\naddr add {}/16 dev eth0\nlink set eth0 up\n",
            self.addr(i)
        ))
        .with_context(|| format!("configuring node {i}'s namespace"))
    }

    /// Cuts every link between nodes of different `groups` (indices); nodes in no group form one
    /// more. Replaces any partition before it.
    pub fn partition(&self, groups: &[Vec<usize>]) -> anyhow::Result<()> {
        self.heal()?;
        let n = self.namespaces.len();
        let mut group_of = vec![groups.len(); n];
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                group_of[i] = g;
            }
        }
        for i in 0..n {
            let routes: String = (0..n)
                .filter(|&j| group_of[j] != group_of[i])
                .map(|j| format!("route add blackhole {}/32\n", self.addr(j)))
                .collect();
            if !routes.is_empty() {
                ip(&["-n", &self.namespaces[i]], &routes)
                    .with_context(|| format!("cutting node {i} off"))?;
            }
        }
        Ok(())
    }

    /// Removes every blackhole route.
    pub fn heal(&self) -> anyhow::Result<()> {
        for ns in &self.namespaces {
            ip(&["-n", ns], "route flush type blackhole\n")
                .with_context(|| format!("healing {ns}"))?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        let mut batch: String = self
            .namespaces
            .iter()
            .map(|ns| format!("netns del {ns}\n"))
            .collect();
        if !self.bridge.is_empty() {
            batch.push_str(&format!("link del {}\n", self.bridge));
        }
        if let Err(err) = ip(&["-force"], &batch) {
            eprintln!("mesh-sim: removing the simulated network: {err:#}");
        }
        // Highest first going up, lowest first going down: the kernel wants 1 <= 2 <= 3.
        for (path, value) in &self.neigh_before {
            let _ = std::fs::write(path, value);
        }
    }
}

/// Raises the neighbour table's thresholds to hold every pair of `nodes` (and the root), if they
/// are lower; returns what they were.
fn raise_neigh_thresholds(nodes: usize) -> anyhow::Result<Vec<(&'static str, String)>> {
    let pairs = (nodes + 1) * (nodes + 1);
    let wanted = [pairs / 4, pairs, 2 * pairs];
    let mut before = Vec::new();
    for (path, want) in NEIGH_THRESH.iter().zip(wanted).rev() {
        // Only the host's own namespace has these (in a container's they are missing): then the
        // host's settings hold, and a large run may find its neighbours refused.
        let Ok(now) = std::fs::read_to_string(path) else {
            eprintln!(
                "mesh-sim: {path} is not there (a container?); the neighbour table keeps its size"
            );
            break;
        };
        if now.trim().parse::<usize>().is_ok_and(|n| n < want) {
            if let Err(err) = std::fs::write(path, want.to_string()) {
                // Put back what was raised already, then say why.
                for (path, value) in before.iter().rev() {
                    let _ = std::fs::write(path, value);
                }
                bail!("raising {path}: {err}");
            }
            before.push((*path, now.trim().to_owned()));
        }
    }
    // Restored lowest first: the kernel wants gc_thresh1 <= gc_thresh2 <= gc_thresh3.
    before.reverse();
    Ok(before)
}

/// A /16 under 10.100.0.0 to 10.199.0.0 that no route of this host uses yet (another run's, say),
/// trying first the one this process's id points at.
fn free_subnet(pid: u32) -> anyhow::Result<u8> {
    let output = Command::new("ip").args(["-4", "-o", "route"]).output()?;
    let routes = String::from_utf8_lossy(&output.stdout);
    (0..100u32)
        .map(|k| 100 + ((pid + k) % 100) as u8)
        .find(|s| !routes.contains(&format!("10.{s}.")))
        .context("every subnet from 10.100.0.0/16 to 10.199.0.0/16 is in use")
}

/// Runs `ip [args] -batch -` with `commands`, one per line.
fn ip(args: &[&str], commands: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(args)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip")?;
    child
        .stdin
        .take()
        .context("ip's stdin")?
        .write_all(commands.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
