//! `mesh-agent certs`: a mesh CA and node certificates that chain to it (checked with openssl, an
//! independent verifier), and nothing that chains to another CA.

use test_support as common;

use std::path::Path;
use std::process::{Command, Output};

use common::bin;

fn certs(args: &[&str], dir: &Path) -> Output {
    Command::new(bin())
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed by this test (apt-get install openssl)")
}

#[test]
fn node_certificates_chain_to_their_mesh_ca_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (mesh, other) = (tmp.path().join("mesh"), tmp.path().join("other"));
    for dir in [&mesh, &other] {
        assert!(certs(&["init"], dir).status.success());
    }
    let out = certs(&["issue", "--node-id", "edge-1"], &mesh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        certs(&["issue", "--node-id", "edge-1"], &other)
            .status
            .success()
    );

    let ca = mesh.join("ca.pem");
    let node = mesh.join("edge-1.pem");
    let verify = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        node.to_str().unwrap(),
    ]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // The same node id from another CA does not chain to this mesh.
    let foreign = other.join("edge-1.pem");
    let verify = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        foreign.to_str().unwrap(),
    ]);
    assert!(!verify.status.success());

    // The node id is the subject and a DNS name; the certificate serves both ends of mutual TLS.
    let text = openssl(&[
        "x509",
        "-in",
        node.to_str().unwrap(),
        "-noout",
        "-subject",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("CN = edge-1") || text.contains("CN=edge-1"),
        "{text}"
    );
    assert!(text.contains("DNS:edge-1"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication")
            && text.contains("TLS Web Client Authentication"),
        "{text}"
    );

    // Keys are private to their owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "edge-1.key"] {
            let mode = std::fs::metadata(mesh.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
        }
    }
}

#[test]
fn certs_refuse_what_would_do_harm_and_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(certs(&["init"], tmp.path()).status.success());
    let before = std::fs::read(tmp.path().join("ca.pem")).unwrap();
    let again = certs(&["init"], tmp.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(tmp.path().join("ca.pem")).unwrap(),
        before,
        "the CA was not replaced"
    );
    assert!(certs(&["init", "--force"], tmp.path()).status.success());
    assert_ne!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), before);

    let bad = certs(&["issue", "--node-id", "edge 1"], tmp.path());
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("node id `edge 1`"));
    let no_ca = certs(
        &["issue", "--node-id", "edge-1"],
        &tmp.path().join("missing"),
    );
    assert!(!no_ca.status.success());
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("ca.pem"));
}
