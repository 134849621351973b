//! OPA bundles as `opa build` and `opa sign` make them, made here independently of the agent's
//! code: an ES256 key (its public half as the agents' key file holds it), `.tar.gz` archives with
//! OPA's file names, and `.signatures.json` in OPA's format (`{"signatures": [JWT]}`, payload
//! `{"files": [{"name", "hash", "algorithm"}]}`; JSON files hashed as written, so write them in
//! their canonical form: compact, sorted keys, as serde_json does).

use base64::Engine as _;
use flate2::Compression;
use flate2::write::GzEncoder;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// An ES256 key: the pair to sign with, and its public key in PEM.
pub struct Key {
    pair: EcdsaKeyPair,
    pub public_pem: String,
}

/// A new ES256 key.
pub fn key() -> Key {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SubjectPublicKeyInfo of a P-256 key: the fixed algorithm identifier, then the point.
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let body = base64::engine::general_purpose::STANDARD.encode(&spki);
    let public_pem = format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n");
    Key { pair, public_pem }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A compact JWS (ES256, `kid` "test"), as `opa sign` makes it.
pub fn jwt(key: &Key, payload: &Value) -> String {
    let header = json!({"alg": "ES256", "kid": "test", "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes())
    );
    let signature = key
        .pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", b64url(signature.as_ref()))
}

/// `.signatures.json` for `files` (name, bytes), signed with `key`.
pub fn signatures(key: &Key, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let listed: Vec<Value> = files
        .iter()
        .map(|(name, bytes)| json!({"name": name, "hash": sha256_hex(bytes), "algorithm": "SHA-256"}))
        .collect();
    let token = jwt(key, &json!({"files": listed}));
    serde_json::to_vec_pretty(&json!({"signatures": [token]})).unwrap()
}

/// A `.tar.gz` with the names as `opa build` writes them (a leading `/`).
pub fn targz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (name, bytes) in files {
        // The tar crate refuses to write absolute names: the header field is set directly.
        let mut header = tar::Header::new_gnu();
        let path = format!("/{name}");
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A signed bundle owning `data.<root>` whose `data.json` holds `data`, with one module in
/// package `<root>` (dots for slashes) that reads it: `allow if input.user in data.<root>.users`.
pub fn signed(key: &Key, root: &str, revision: &str, data: &Value) -> Vec<u8> {
    let package = root.replace('/', ".");
    let manifest = json!({"revision": revision, "roots": [root]});
    let module = format!(
        "package {package}\nimport rego.v1\ndefault allow := false\nallow if input.user in data.{package}.users\n"
    );
    let mut files = vec![
        (".manifest".to_string(), manifest.to_string().into_bytes()),
        (format!("{root}/policy.rego"), module.into_bytes()),
        (format!("{root}/data.json"), data.to_string().into_bytes()),
    ];
    let signatures = signatures(key, &files);
    files.push((".signatures.json".to_string(), signatures));
    targz(&files)
}
