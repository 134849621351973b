//! A mesh CA for end-to-end tests, made with `mesh-agent certs` (a module of the test-support crate).

use std::path::Path;
use std::process::Command;

use crate::bin;

pub struct Ca {
    dir: tempfile::TempDir,
}

impl Ca {
    pub fn new() -> Ca {
        let dir = tempfile::tempdir().expect("temp dir");
        certs(&["init"], dir.path());
        Ca { dir }
    }

    pub fn issue(&self, node_id: &str) {
        certs(&["issue", "--node-id", node_id], self.path());
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn certs(args: &[&str], dir: &Path) {
    let out = Command::new(bin())
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run mesh-agent certs");
    assert!(
        out.status.success(),
        "mesh-agent certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
