//! ARCHITECTURE.md's table of crates is the dependency graph Cargo builds: every workspace crate,
//! with exactly the workspace crates it depends on (normal dependencies). A new edge, or a crate the
//! table does not know, fails here until the document says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The workspace's crates and their edges to each other, from `cargo metadata`.
fn cargo_graph(root: &Path) -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("dependency name").to_owned())
                .filter(|d| names.contains(d))
                .collect();
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

/// The table under "## Crates": `| `crate` (`path`) | `dep`, `dep` |` or `none`.
fn documented_graph(text: &str) -> Graph {
    let section = text
        .split("\n## Crates")
        .nth(1)
        .expect("a `## Crates` section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let name = ticked(cells[1]).into_iter().next().expect("crate name");
            (name, ticked(cells[2]).into_iter().collect())
        })
        .collect()
}

#[test]
fn architecture_md_draws_the_graph_cargo_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = cargo_graph(&root);
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let documented = documented_graph(&text);
    assert_eq!(
        built.keys().collect::<Vec<_>>(),
        documented.keys().collect::<Vec<_>>(),
        "the crates ARCHITECTURE.md lists"
    );
    for (name, deps) in &built {
        let said = &documented[name];
        assert_eq!(deps, said, "what {name} depends on");
    }
}
