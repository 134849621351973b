//! A bundle's `.manifest` (OPA's `Manifest`): its revision, the roots of `data` it owns, and
//! metadata; and OPA's root arithmetic (`RootPathsOverlap`, `RootPathsContain`). A root is a
//! `/`-separated path under `data` (`acme/authz`); `""` owns everything; a bundle without a
//! manifest or without `roots` owns everything.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::BundleError;

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub revision: String,
    /// Normalized (no leading or trailing `/`), none overlapping another.
    pub roots: Vec<String>,
    pub metadata: Map<String, Value>,
}

impl Default for Manifest {
    fn default() -> Manifest {
        Manifest {
            revision: String::new(),
            roots: vec![String::new()],
            metadata: Map::new(),
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    revision: String,
    #[serde(default)]
    roots: Option<Vec<String>>,
    #[serde(default)]
    wasm: Option<Vec<Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

impl Manifest {
    /// Reads `.manifest`; a missing one is the default (revision "", root "").
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let raw: Raw = serde_json::from_slice(bytes).map_err(|err| {
            BundleError::invalid(format!(
                ".manifest: bundle load failed on manifest decode: {err}"
            ))
        })?;
        if raw.wasm.is_some_and(|w| !w.is_empty()) {
            return Err(BundleError::invalid(
                ".manifest: names wasm modules; this agent evaluates Rego only",
            ));
        }
        if raw.revision.len() > 1024 || raw.revision.chars().any(char::is_control) {
            return Err(BundleError::invalid(
                ".manifest: the revision must be at most 1024 bytes without control characters",
            ));
        }
        let roots: Vec<String> = raw
            .roots
            .unwrap_or_else(|| vec![String::new()])
            .into_iter()
            .map(|root| root.trim_matches('/').to_owned())
            .collect();
        for (i, a) in roots.iter().enumerate() {
            for b in &roots[i + 1..] {
                if overlap(a, b) {
                    return Err(BundleError::invalid(format!(
                        ".manifest: manifest has overlapped roots: '{a}' and '{b}'"
                    )));
                }
            }
        }
        Ok(Manifest {
            revision: raw.revision,
            roots,
            metadata: raw.metadata.unwrap_or_default(),
        })
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').collect()
}

/// Whether `root` holds `path` (OPA's `rootContains`): `""` holds everything; otherwise every
/// segment of `root` starts `path`.
pub fn contains(root: &str, path: &str) -> bool {
    if root.is_empty() {
        return true;
    }
    let root = segments(root);
    let path = segments(path);
    root.len() <= path.len() && root.iter().zip(&path).all(|(a, b)| a == b)
}

/// Whether two roots overlap: one holds the other (OPA's `RootPathsOverlap`).
pub fn overlap(a: &str, b: &str) -> bool {
    contains(a, b) || contains(b, a)
}

/// Whether any of `roots` holds `path` (OPA's `RootPathsContain`).
pub fn any_contains(roots: &[String], path: &str) -> bool {
    roots.iter().any(|root| contains(root, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_hold_and_overlap_as_opas() {
        assert!(contains("", "anything/at/all"));
        assert!(contains("a/b", "a/b"));
        assert!(contains("a/b", "a/b/c"));
        assert!(!contains("a/b", "a"));
        assert!(!contains("a/b", "a/bc"));
        assert!(overlap("a", "a/b") && overlap("a/b", "a"));
        assert!(!overlap("a/b", "a/c"));
        assert!(overlap("", "x"));
    }

    #[test]
    fn manifests_are_read_with_their_defaults() {
        let m =
            Manifest::parse(br#"{"revision": "r1", "roots": ["/acme/authz/", "other"]}"#).unwrap();
        assert_eq!(m.revision, "r1");
        assert_eq!(m.roots, ["acme/authz", "other"]);
        let m = Manifest::parse(br#"{"revision": "r2"}"#).unwrap();
        assert_eq!(m.roots, [""]);
        let err = Manifest::parse(br#"{"roots": ["a", "a/b"]}"#).unwrap_err();
        assert!(
            err.message.contains("overlapped roots: 'a' and 'a/b'"),
            "{err}"
        );
        assert!(Manifest::parse(br#"{"revision": 3}"#).is_err());
        assert!(Manifest::parse(b"not json").is_err());
    }
}
