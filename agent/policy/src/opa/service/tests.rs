//! Bundles through the service: activated and evaluated, owning their roots, refused when they
//! overlap or do not verify, and verified again when the store brings a new version (a merge).

use std::sync::Arc;

use jsonwebtoken::EncodingKey;
use mesh_proto::DocKind;
use serde_json::json;
use tempfile::TempDir;

use agent_engine::rego::{RegoEngine, RegoSettings};
use agent_store::{DocWrite, Store};

use super::super::bundle::testing::*;
use super::super::bundle::{Algorithm, StoredBundle, Verification};
use super::*;

struct Node {
    _dir: TempDir,
    store: Arc<Store>,
    service: RegoService,
}

fn node(verification: Verification) -> Node {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("a.redb"), "node-a").unwrap());
    let settings = RegoSettings {
        time_limit: std::time::Duration::from_secs(1),
    };
    let engine = Arc::new(RegoEngine::new(settings));
    let metrics = OpaMetrics::register(&mut prometheus_client::registry::Registry::default());
    let service = RegoService::with_bundles(
        Arc::clone(&store),
        engine,
        settings,
        metrics,
        verification,
        LIMITS,
    )
    .unwrap();
    Node {
        _dir: dir,
        store,
        service,
    }
}

fn allow(service: &RegoService, user: &str) -> Option<serde_json::Value> {
    service
        .current_set()
        .evaluate(
            "data.acme.authz.allow",
            Some(regorus::Value::from(json!({"user": user}))),
        )
        .unwrap()
        .map(|v| serde_json::to_value(&v).unwrap())
}

fn push<'a>(name: &'a str, archive: &'a [u8]) -> PutBundle<'a> {
    PutBundle {
        name,
        archive,
        source: "push",
        etag: "",
    }
}

#[test]
fn a_pushed_bundle_is_stored_activated_and_owns_its_roots() {
    let (private, public) = es256();
    let node = node(Verification::with_keys(&[("k", Algorithm::ES256, &public, "")], "k").unwrap());
    let bytes = signed_with(
        &content(),
        jsonwebtoken::Algorithm::ES256,
        &EncodingKey::from_ec_der(&private),
        None,
    );
    let (revision, changed) = node.service.put_bundle(push("authz", &bytes)).unwrap();
    assert_eq!((revision.as_str(), changed), ("r1", true));
    assert_eq!(allow(&node.service, "alice"), Some(json!(true)));
    assert_eq!(allow(&node.service, "bob"), Some(json!(false)));
    assert_eq!(
        node.service
            .current_set()
            .bundle_revisions()
            .get("authz")
            .map(String::as_str),
        Some("r1")
    );
    // The same archive again changes nothing.
    assert!(!node.service.put_bundle(push("authz", &bytes)).unwrap().1);
    // Its module is listed under OPA's id and cannot be changed through the policy API.
    let ids: Vec<String> = node
        .service
        .list_modules()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(ids, ["authz/acme/authz/policy.rego"]);
    let err = node
        .service
        .put_module("authz/acme/authz/policy.rego", "package x".into())
        .unwrap_err();
    assert!(
        err.to_string().contains("is owned by bundle \"authz\""),
        "{err}"
    );
    let err = node
        .service
        .put_module("mine", "package acme.authz.more\nx := 1\n".into())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("path acme/authz/more is owned by bundle \"authz\""),
        "{err}"
    );
    node.service
        .put_module("mine", "package elsewhere\nx := 1\n".into())
        .unwrap();
    // Data under (or above) its roots is refused; beside them it is fine.
    for path in ["acme/authz/admins", "acme", ""] {
        assert!(node.service.put_data(path, json!({})).is_err(), "{path}");
    }
    assert!(node.service.delete_data("acme/authz").is_err());
    node.service.put_data("other", json!({"x": 1})).unwrap();
    assert_eq!(allow(&node.service, "alice"), Some(json!(true)));
    // The status is OPA's.
    let status = node.service.bundle_status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].active_revision, "r1");
    assert_eq!(status[0].kind, "snapshot");
    assert!(status[0].code.is_empty());
    assert!(node.service.bundles_activated(&["authz".into()]));
    assert!(
        !node
            .service
            .bundles_activated(&["authz".into(), "other".into()])
    );
    // Removed: its rules and data go, and its roots are free again.
    node.service.delete_bundle("authz").unwrap();
    assert_eq!(allow(&node.service, "alice"), None);
    node.service
        .put_data("acme/authz/admins", json!([]))
        .unwrap();
    assert!(node.service.bundle_status().is_empty());
}

#[test]
fn overlapping_or_uncompilable_bundles_change_nothing() {
    let node = node(Verification::default());
    node.service
        .put_bundle(push("authz", &archive(&content())))
        .unwrap();
    let overlapping = archive(&[("/.manifest", br#"{"revision": "x", "roots": ["acme"]}"#)]);
    let err = node
        .service
        .put_bundle(push("wide", &overlapping))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("detected overlapping roots in bundle manifest with: [authz]"),
        "{err}"
    );
    let broken = archive(&[
        ("/.manifest", br#"{"revision": "y", "roots": ["other"]}"#),
        // Parses, but does not compile: rules that depend on themselves.
        (
            "/other/p.rego",
            b"package other\nimport rego.v1\na if b\nb if a\n",
        ),
    ]);
    let err = node
        .service
        .put_bundle(push("broken", &broken))
        .unwrap_err();
    assert!(matches!(err, OpaError::Compile(_)), "{err}");
    assert!(node.store.list_documents(DocKind::Bundle).unwrap().len() == 1);
    assert_eq!(node.service.bundle_revisions().len(), 1);
    assert_eq!(allow(&node.service, "alice"), Some(json!(true)));
}

#[test]
fn a_stored_bundle_that_does_not_verify_here_is_not_activated() {
    let (private, public) = es256();
    let key = EncodingKey::from_ec_der(&private);
    let node = node(Verification::with_keys(&[("k", Algorithm::ES256, &public, "")], "k").unwrap());
    let good = signed_with(&content(), jsonwebtoken::Algorithm::ES256, &key, None);
    node.service.put_bundle(push("authz", &good)).unwrap();

    // A version arrives in the store the way a merge brings it, tampered after signing (a peer
    // with other keys, or none, let it through).
    let sigs = signatures(&content(), jsonwebtoken::Algorithm::ES256, &key, None, None);
    let mut files = content();
    files[1] = (
        "/acme/authz/policy.rego",
        b"package acme.authz\nimport rego.v1\ndefault allow := true\n",
    );
    files.push(("/.signatures.json", &sigs));
    let tampered = archive(&files);
    let body = StoredBundle::new(&tampered, "r2", "push", "", "2026-01-01T00:00:00Z").to_json();
    node.store
        .write_documents(vec![DocWrite::Put {
            kind: DocKind::Bundle,
            name: "authz".into(),
            body,
        }])
        .unwrap();
    node.service.reload().unwrap();
    // Not activated: the verified version stays in force, and the status says why.
    assert_eq!(allow(&node.service, "bob"), Some(json!(false)));
    let status = &node.service.bundle_status()[0];
    assert_eq!(status.active_revision, "r1");
    assert_eq!(status.code, "bundle_error");
    assert!(
        status.message.contains("digest mismatch"),
        "{}",
        status.message
    );

    // A node that starts with only the tampered version in its store activates nothing.
    let fresh = RegoService::with_bundles(
        Arc::clone(&node.store),
        Arc::new(RegoEngine::new(RegoSettings {
            time_limit: std::time::Duration::from_secs(1),
        })),
        RegoSettings {
            time_limit: std::time::Duration::from_secs(1),
        },
        OpaMetrics::register(&mut prometheus_client::registry::Registry::default()),
        Verification::with_keys(&[("k", Algorithm::ES256, &public, "")], "k").unwrap(),
        LIMITS,
    )
    .unwrap();
    assert!(fresh.bundle_revisions().is_empty());
    assert_eq!(fresh.bundle_status()[0].code, "bundle_error");
    assert_eq!(allow(&fresh, "bob"), None);
}
