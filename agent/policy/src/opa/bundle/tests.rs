//! Reading bundles: signatures, roots, limits, and what is refused (bundles from `testing`).

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use jsonwebtoken::EncodingKey;
use serde_json::json;

use super::testing::*;
use super::*;

#[test]
fn a_signed_bundle_is_read_with_opas_ids_and_data_paths() {
    let (private, public) = es256();
    let verification =
        Verification::with_keys(&[("k1", Algorithm::ES256, &public, "")], "").unwrap();
    let bytes = signed_with(
        &content(),
        jsonwebtoken::Algorithm::ES256,
        &EncodingKey::from_ec_der(&private),
        Some("k1"),
    );
    let bundle = Bundle::read("authz", &bytes, &verification, &LIMITS).unwrap();
    assert_eq!(bundle.manifest.revision, "r1");
    assert_eq!(bundle.manifest.roots, ["acme/authz"]);
    let ids: Vec<&str> = bundle.modules.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["authz/acme/authz/policy.rego"]);
    assert_eq!(
        bundle.data,
        json!({"acme": {"authz": {"admins": ["alice"], "limits": {"a": 1.0, "b": 2}}}})
    );
    assert_eq!(
        bundle.data_at("acme/authz").unwrap()["admins"],
        json!(["alice"])
    );
    assert_eq!(bundle.size, bytes.len());
}

#[test]
fn rs256_and_hs256_keys_verify_as_configured() {
    let public = RSA_PUBLIC.as_bytes();
    let private = pem::parse(RSA_PRIVATE).unwrap();
    let verification =
        Verification::with_keys(&[("rsa", Algorithm::RS256, public, "")], "rsa").unwrap();
    let bytes = signed_with(
        &content(),
        jsonwebtoken::Algorithm::RS256,
        &EncodingKey::from_rsa_der(private.contents()),
        None,
    );
    Bundle::read("authz", &bytes, &verification, &LIMITS).unwrap();

    let secret = b"a shared secret";
    let verification =
        Verification::with_keys(&[("hmac", Algorithm::HS256, secret, "")], "").unwrap();
    let bytes = signed_with(
        &content(),
        jsonwebtoken::Algorithm::HS256,
        &EncodingKey::from_secret(secret),
        Some("hmac"),
    );
    Bundle::read("authz", &bytes, &verification, &LIMITS).unwrap();
    // A JWT claiming another algorithm than the key's is refused.
    let verification =
        Verification::with_keys(&[("hmac", Algorithm::HS512, secret, "")], "").unwrap();
    let err = Bundle::read("authz", &bytes, &verification, &LIMITS).unwrap_err();
    assert_eq!(err.kind, BundleErrorKind::Unverified, "{err}");
}

#[test]
fn unsigned_bundles_are_refused_when_a_key_is_configured_and_taken_otherwise() {
    let (_, public) = es256();
    let verification =
        Verification::with_keys(&[("k1", Algorithm::ES256, &public, "")], "").unwrap();
    let bytes = archive(&content());
    let err = Bundle::read("authz", &bytes, &verification, &LIMITS).unwrap_err();
    assert_eq!(err.kind, BundleErrorKind::Unverified);
    assert!(err.message.contains("missing .signatures.json"), "{err}");
    // Without keys, an unsigned bundle is taken, and a signed one refused (OPA: no key).
    Bundle::read("authz", &bytes, &Verification::default(), &LIMITS).unwrap();
    let (private, _) = es256();
    let signed = signed_with(
        &content(),
        jsonwebtoken::Algorithm::ES256,
        &EncodingKey::from_ec_der(&private),
        Some("k1"),
    );
    let err = Bundle::read("authz", &signed, &Verification::default(), &LIMITS).unwrap_err();
    assert!(
        err.message.contains("verification key not provided"),
        "{err}"
    );
}

#[test]
fn tampered_files_wrong_keys_and_incomplete_signatures_are_refused() {
    let (private, public) = es256();
    let key = EncodingKey::from_ec_der(&private);
    let verification =
        Verification::with_keys(&[("k1", Algorithm::ES256, &public, "write")], "").unwrap();
    let files = content();
    let sigs = signatures(
        &files,
        jsonwebtoken::Algorithm::ES256,
        &key,
        Some("k1"),
        Some("write"),
    );
    let good = {
        let mut all = files.clone();
        all.push(("/.signatures.json", &sigs));
        archive(&all)
    };
    Bundle::read("authz", &good, &verification, &LIMITS).unwrap();

    // One byte of the module changed after signing.
    let tampered_module = b"package acme.authz\nimport rego.v1\ndefault allow := true\n";
    let mut all = files.clone();
    all[1] = ("/acme/authz/policy.rego", tampered_module);
    all.push(("/.signatures.json", &sigs));
    let err = Bundle::read("authz", &archive(&all), &verification, &LIMITS).unwrap_err();
    assert_eq!(err.kind, BundleErrorKind::Unverified);
    assert!(
        err.message
            .starts_with("acme/authz/policy.rego: digest mismatch"),
        "{err}"
    );
    // Data reformatted (same JSON) still verifies; data changed does not.
    let mut all = files.clone();
    all[2] = (
        "/acme/authz/data.json",
        br#"{"limits":{"a":1.0,"b":2},"admins":["alice"]}"#,
    );
    all.push(("/.signatures.json", &sigs));
    Bundle::read("authz", &archive(&all), &verification, &LIMITS).unwrap();
    let mut all = files.clone();
    all[2] = (
        "/acme/authz/data.json",
        br#"{"admins":["mallory"],"limits":{"a":1.0,"b":2}}"#,
    );
    all.push(("/.signatures.json", &sigs));
    let err = Bundle::read("authz", &archive(&all), &verification, &LIMITS).unwrap_err();
    assert!(
        err.message
            .starts_with("acme/authz/data.json: digest mismatch"),
        "{err}"
    );

    // A file added, a file removed.
    let mut all = files.clone();
    all.push(("/acme/authz/extra.rego", b"package acme.authz.extra\n"));
    all.push(("/.signatures.json", &sigs));
    let err = Bundle::read("authz", &archive(&all), &verification, &LIMITS).unwrap_err();
    assert!(
        err.message
            .contains("extra.rego: file not included in bundle signature"),
        "{err}"
    );
    let mut all = files[..2].to_vec();
    all.push(("/.signatures.json", &sigs));
    let err = Bundle::read("authz", &archive(&all), &verification, &LIMITS).unwrap_err();
    assert!(
        err.message
            .contains("[acme/authz/data.json] specified in bundle signatures but not found"),
        "{err}"
    );

    // Signed with another key; with the right key but another scope; an unknown key id.
    let (other, _) = es256();
    let wrong = signed_with(
        &files,
        jsonwebtoken::Algorithm::ES256,
        &EncodingKey::from_ec_der(&other),
        Some("k1"),
    );
    let err = Bundle::read("authz", &wrong, &verification, &LIMITS).unwrap_err();
    assert!(err.message.contains("does not verify with key k1"), "{err}");
    let unscoped = signed_with(&files, jsonwebtoken::Algorithm::ES256, &key, Some("k1"));
    let err = Bundle::read("authz", &unscoped, &verification, &LIMITS).unwrap_err();
    assert!(err.message.contains("scope mismatch"), "{err}");
    let unknown = signed_with(&files, jsonwebtoken::Algorithm::ES256, &key, Some("k9"));
    let err = Bundle::read("authz", &unknown, &verification, &LIMITS).unwrap_err();
    assert!(err.message.contains("ID k9 not found"), "{err}");
    // Not a JWT at all.
    let mut all = files.clone();
    all.push(("/.signatures.json", br#"{"signatures": ["not.a.jwt"]}"#));
    let err = Bundle::read("authz", &archive(&all), &verification, &LIMITS).unwrap_err();
    assert_eq!(err.kind, BundleErrorKind::Unverified, "{err}");
}

#[test]
fn modules_and_data_must_lie_inside_the_roots() {
    let none = Verification::default();
    let outside = archive(&[
        ("/.manifest", MANIFEST),
        ("/other/policy.rego", b"package other\nallow := true\n"),
    ]);
    let err = Bundle::read("authz", &outside, &none, &LIMITS).unwrap_err();
    assert!(
        err.message
            .contains("do not permit 'package other' in module 'other/policy.rego'"),
        "{err}"
    );
    let stray_data = archive(&[
        ("/.manifest", MANIFEST),
        ("/other/data.json", b"{\"x\": 1}"),
    ]);
    let err = Bundle::read("authz", &stray_data, &none, &LIMITS).unwrap_err();
    assert!(
        err.message.contains("do not permit data at path '/other'"),
        "{err}"
    );
    // Data at the root is fine where it only leads to the roots.
    let leading = archive(&[
        ("/.manifest", MANIFEST),
        ("/data.json", br#"{"acme": {"authz": {"x": 1}}}"#),
    ]);
    Bundle::read("authz", &leading, &none, &LIMITS).unwrap();
    let root_not_object = archive(&[("/data.json", b"[1]")]);
    assert!(Bundle::read("authz", &root_not_object, &none, &LIMITS).is_err());
}

#[test]
fn bundles_whose_roots_overlap_are_told_apart() {
    let none = Verification::default();
    let a = Bundle::read(
        "a",
        &archive(&[("/.manifest", br#"{"roots": ["acme"]}"#)]),
        &none,
        &LIMITS,
    )
    .unwrap();
    let b = Bundle::read(
        "b",
        &archive(&[("/.manifest", br#"{"roots": ["acme/authz"]}"#)]),
        &none,
        &LIMITS,
    )
    .unwrap();
    let c = Bundle::read(
        "c",
        &archive(&[("/.manifest", br#"{"roots": ["other"]}"#)]),
        &none,
        &LIMITS,
    )
    .unwrap();
    let rootless = Bundle::read("d", &archive(&[]), &none, &LIMITS).unwrap();
    assert!(a.overlaps(&b) && b.overlaps(&a));
    assert!(!a.overlaps(&c) && !b.overlaps(&c));
    assert!(
        rootless.overlaps(&c),
        "a bundle without roots owns all of data"
    );
}

#[test]
fn gzip_bombs_traversal_and_junk_are_refused_with_reasons() {
    let none = Verification::default();
    // 8 MiB of zeros compresses to a few KiB: refused by what it unpacks to, never read whole.
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let bomb = archive(&[("/data.json", &zeros)]);
    assert!(bomb.len() < 64 * 1024);
    let err = Bundle::read("b", &bomb, &none, &LIMITS).unwrap_err();
    assert_eq!(err.kind, BundleErrorKind::TooLarge, "{err}");
    assert!(err.message.contains("max_uncompressed_bytes"), "{err}");
    // The stream budget itself (tar headers count): a budget under one tar block.
    let small = Limits {
        max_uncompressed_bytes: 600,
        ..LIMITS
    };
    let err = archive::read(&archive(&[("/a.rego", b"package a")]), &small).unwrap_err();
    assert_eq!(err.kind, BundleErrorKind::TooLarge, "{err}");
    // Over the compressed budget, over the file count.
    let tight = Limits {
        max_bytes: 100,
        ..LIMITS
    };
    let err = Bundle::read("b", &archive(&content()), &none, &tight).unwrap_err();
    assert!(err.message.contains("bundle.max_bytes"), "{err}");
    let names: Vec<String> = (0..60).map(|i| format!("/f{i}.txt")).collect();
    let many: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let err = Bundle::read("b", &archive(&many), &none, &LIMITS).unwrap_err();
    assert!(err.message.contains("bundle.max_files"), "{err}");
    // Names that climb out, absolute or not.
    for name in ["../evil.rego", "/acme/../../etc/passwd"] {
        let err = Bundle::read("b", &archive(&[(name, b"package x")]), &none, &LIMITS).unwrap_err();
        assert!(err.message.contains("must not hold `..`"), "{err}");
    }
    // Not gzip; gzip of junk; a module that does not parse; bad names.
    assert!(Bundle::read("b", b"PK\x03\x04", &none, &LIMITS).is_err());
    let mut junk = GzEncoder::new(Vec::new(), Compression::default());
    junk.write_all(&[7u8; 2000]).unwrap();
    let err = Bundle::read("b", &junk.finish().unwrap(), &none, &LIMITS).unwrap_err();
    assert_eq!(err.kind, BundleErrorKind::Invalid, "{err}");
    let err = Bundle::read("b", &archive(&[("/p.rego", b"package")]), &none, &LIMITS).unwrap_err();
    assert!(err.message.starts_with("p.rego: "), "{err}");
    assert!(Bundle::read("a/b", &archive(&[]), &none, &LIMITS).is_err());
    assert!(Bundle::read("..", &archive(&[]), &none, &LIMITS).is_err());
    let delta = archive(&[("/patch.json", b"{\"data\": []}")]);
    let err = Bundle::read("b", &delta, &none, &LIMITS).unwrap_err();
    assert!(
        err.message.contains("delta bundles are not supported"),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupted_archives_never_panic() {
    let none = Verification::default();
    let good = archive(&content());
    for cut in (0..good.len()).step_by(7) {
        let _ = Bundle::read("b", &good[..cut], &none, &LIMITS);
    }
    for at in (0..good.len()).step_by(11) {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        let _ = Bundle::read("b", &bad, &none, &LIMITS);
    }
}
