//! Bundles built for tests the way `opa build` and `opa sign` make them: a `.tar.gz` with names
//! as OPA writes them (`/data.json`), a `.signatures.json` holding one JWT whose payload lists
//! every file with its SHA-256 (JSON files over their canonical form).

use flate2::Compression;
use flate2::write::GzEncoder;
use jsonwebtoken::{EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;

use super::*;

pub const RSA_PRIVATE: &str = include_str!("testdata/rsa-private.pem");
pub const RSA_PUBLIC: &str = include_str!("testdata/rsa-public.pem");

pub const LIMITS: Limits = Limits {
    max_bytes: 1024 * 1024,
    max_uncompressed_bytes: 4 * 1024 * 1024,
    max_files: 50,
};

/// A `.tar.gz` of `files` (names as given, written into the header as they are).
pub fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        let field = &mut header.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// An ES256 key pair: (PKCS#8 private key, PEM public key).
pub fn es256() -> (Vec<u8>, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SubjectPublicKeyInfo for P-256: the fixed algorithm header, then the point.
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let public = pem::encode(&pem::Pem::new("PUBLIC KEY", spki));
    (pkcs8.as_ref().to_vec(), public.into_bytes())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hash::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// `.signatures.json` over `files` as `opa sign` writes it: the hash of each file (JSON files
/// hashed over their canonical form, computed here by reformatting with sorted keys).
pub fn signatures(
    files: &[(&str, &[u8])],
    alg: jsonwebtoken::Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    scope: Option<&str>,
) -> Vec<u8> {
    let listed: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, bytes)| {
            let hashed = if hash::is_structured(name) {
                // serde_json's Value sorts keys (no preserve_order) and writes compactly: the
                // canonical form for the simple documents used here.
                let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                sha256_hex(value.to_string().as_bytes())
            } else {
                sha256_hex(bytes)
            };
            json!({"name": name.trim_start_matches('/'), "hash": hashed, "algorithm": "SHA-256"})
        })
        .collect();
    let mut claims = json!({"files": listed});
    if let Some(scope) = scope {
        claims["scope"] = json!(scope);
    }
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let token = jsonwebtoken::encode(&header, &claims, key).unwrap();
    serde_json::to_vec_pretty(&json!({"signatures": [token]})).unwrap()
}

pub const MANIFEST: &[u8] = br#"{"revision": "r1", "roots": ["acme/authz"]}"#;
pub const MODULE: &[u8] = b"package acme.authz\nimport rego.v1\ndefault allow := false\nallow if input.user in data.acme.authz.admins\n";
pub const DATA: &[u8] = b"{\n  \"admins\": [\"alice\"],\n  \"limits\": {\"b\": 2, \"a\": 1.0}\n}\n";

pub fn content() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("/.manifest", MANIFEST),
        ("/acme/authz/policy.rego", MODULE),
        ("/acme/authz/data.json", DATA),
    ]
}

pub fn signed_with(
    files: &[(&str, &[u8])],
    alg: jsonwebtoken::Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
) -> Vec<u8> {
    let sigs = signatures(files, alg, key, kid, None);
    let mut all: Vec<(&str, &[u8])> = files.to_vec();
    all.push(("/.signatures.json", &sigs));
    archive(&all)
}
