//! OPA bundles, taken in OPA's own format: a `.tar.gz` with a `.manifest` (revision, roots),
//! `*.rego` modules, `data.json` files, and `.signatures.json` when signed.
//!
//! [`Bundle::read`] is the whole check of one archive, before anything is stored: read under
//! limits (`archive`), the signature verified against this node's keys (`signature`, hashing as
//! OPA does in `hash`), the manifest read and its roots checked (`manifest`), every module's
//! package and every data file inside the roots. What it returns is what joins the Rego set:
//! modules under OPA's ids for bundle modules (`<bundle name>/<path in the archive>`), and the
//! bundle's data tree (each `data.json` at its directory's path). `document` is how a bundle is
//! stored (the archive itself, so that every node verifies the signed bytes), and `config` the
//! `[bundle]` section.

pub mod archive;
pub mod config;
pub mod document;
mod hash;
pub mod manifest;
pub mod signature;

use serde_json::{Map, Value};

use agent_engine::rego::{ModuleSource, outline};

pub use archive::Limits;
pub use config::{BundlesConfig, KeyConfig, SourceConfig, configured_names, validate_sources};
pub use document::StoredBundle;
pub use manifest::Manifest;
pub use signature::{Algorithm, Verification};

/// Longest bundle name.
const MAX_NAME_CHARS: usize = 128;

/// Why a bundle was refused, in words that name the file when one is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BundleError {
    pub kind: BundleErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleErrorKind {
    /// Malformed: not a bundle, a bad file, outside its roots.
    Invalid,
    /// Over a limit (`bundle.max_*`).
    TooLarge,
    /// Unsigned when a key is configured, or its signature or a digest does not verify.
    Unverified,
}

impl BundleError {
    pub fn invalid(message: impl Into<String>) -> BundleError {
        BundleError {
            kind: BundleErrorKind::Invalid,
            message: message.into(),
        }
    }

    pub fn too_large(message: impl Into<String>) -> BundleError {
        BundleError {
            kind: BundleErrorKind::TooLarge,
            message: message.into(),
        }
    }

    pub fn unverified(message: impl Into<String>) -> BundleError {
        BundleError {
            kind: BundleErrorKind::Unverified,
            message: message.into(),
        }
    }
}

/// Checks a bundle name: it prefixes module ids and appears in URLs.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err(format!(
            "a bundle name has 1 to {MAX_NAME_CHARS} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a bundle name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "bundle name {name:?}: {c:?} is not allowed (letters, digits, `.`, `_`, `-`)"
        ));
    }
    Ok(())
}

/// A bundle that was read and verified.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub name: String,
    pub manifest: Manifest,
    /// Modules under their OPA ids (`<name>/<path>`), in archive order.
    pub modules: Vec<ModuleSource>,
    /// The bundle's data tree (an object): each `data.json` at its directory's path.
    pub data: Value,
    /// Bytes of the archive as sent.
    pub size: usize,
}

impl Bundle {
    /// Reads and checks `archive` as the bundle `name`.
    pub fn read(
        name: &str,
        archive: &[u8],
        verification: &Verification,
        limits: &Limits,
    ) -> Result<Bundle, BundleError> {
        validate_name(name).map_err(BundleError::invalid)?;
        let mut files = archive::read(archive, limits)?;
        let signatures = files
            .iter()
            .position(|f| f.path == ".signatures.json")
            .map(|i| files.remove(i));
        verification.check(signatures.as_ref().map(|f| f.bytes.as_slice()), &files)?;

        let mut manifests = files.iter().filter(|f| base(&f.path) == ".manifest");
        let manifest = match (manifests.next(), manifests.next()) {
            (None, _) => Manifest::default(),
            (Some(file), None) => Manifest::parse(&file.bytes)?,
            (Some(a), Some(b)) => {
                return Err(BundleError::invalid(format!(
                    "{} and {}: a bundle has one manifest",
                    a.path, b.path
                )));
            }
        };

        let mut modules = Vec::new();
        let mut data = Value::Object(Map::new());
        for file in &files {
            let path = file.path.as_str();
            match base(path) {
                ".manifest" => {}
                "data.json" => {
                    let text = file
                        .bytes
                        .strip_prefix(b"\xef\xbb\xbf")
                        .unwrap_or(&file.bytes);
                    let value: Value = serde_json::from_slice(text).map_err(|err| {
                        BundleError::invalid(format!("{path}: bundle load failed: {err}"))
                    })?;
                    let at = directory(path);
                    if at.is_empty() && !value.is_object() {
                        return Err(BundleError::invalid(format!(
                            "{path}: bundle load failed: root value must be object"
                        )));
                    }
                    insert(&mut data, &at, value).map_err(|message| {
                        BundleError::invalid(format!("{path}: bundle load failed: {message}"))
                    })?;
                }
                "data.yaml" | "data.yml" => {
                    return Err(BundleError::invalid(format!(
                        "{path}: YAML data files are not supported here; use data.json"
                    )));
                }
                "policy.wasm" | "plan.json" => {
                    return Err(BundleError::invalid(format!(
                        "{path}: wasm and plan modules are not supported; this agent evaluates Rego"
                    )));
                }
                "patch.json" => {
                    return Err(BundleError::invalid(format!(
                        "{path}: delta bundles are not supported; send a snapshot bundle"
                    )));
                }
                _ if path.ends_with(".rego") => {
                    let text = std::str::from_utf8(&file.bytes).map_err(|_| {
                        BundleError::invalid(format!("{path}: a Rego module is not UTF-8 text"))
                    })?;
                    let id = format!("{name}/{path}");
                    let parsed = outline(&id, text)
                        .map_err(|err| BundleError::invalid(format!("{path}: {}", err.message)))?;
                    let package = parsed.package[1..].join("/");
                    if !manifest::any_contains(&manifest.roots, &package) {
                        return Err(BundleError::invalid(format!(
                            "{path}: manifest roots {:?} do not permit 'package {}' in module '{path}'",
                            manifest.roots,
                            parsed.package[1..].join(".")
                        )));
                    }
                    modules.push(ModuleSource {
                        id,
                        text: text.to_owned(),
                    });
                }
                // OPA reads other files (they are covered by the signature) and ignores them.
                _ => {}
            }
        }
        check_data_roots(&data, &mut Vec::new(), &manifest.roots)?;
        Ok(Bundle {
            name: name.to_owned(),
            manifest,
            modules,
            data,
            size: archive.len(),
        })
    }

    /// Whether any of this bundle's roots overlaps any of `other`'s.
    pub fn overlaps(&self, other: &Bundle) -> bool {
        self.manifest
            .roots
            .iter()
            .any(|a| other.manifest.roots.iter().any(|b| manifest::overlap(a, b)))
    }

    /// The bundle's data at `root` (`None` when it has none there).
    pub fn data_at(&self, root: &str) -> Option<&Value> {
        root.split('/')
            .filter(|s| !s.is_empty())
            .try_fold(&self.data, |at, key| at.get(key))
    }
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The directory segments of `path` (`a/b/data.json` -> `["a", "b"]`).
fn directory(path: &str) -> Vec<String> {
    let mut segments: Vec<String> = path.split('/').map(str::to_owned).collect();
    segments.pop();
    segments
}

/// Merges `value` into `tree` at `path` as OPA's `insertData` does (objects merge; anything else
/// meeting an existing value is a conflict).
fn insert(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut wrapped = value;
    for key in path.iter().rev() {
        let mut map = Map::new();
        map.insert(key.clone(), wrapped);
        wrapped = Value::Object(map);
    }
    merge(tree, wrapped)
}

fn merge(into: &mut Value, from: Value) -> Result<(), String> {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                match a.get_mut(&key) {
                    Some(existing) => merge(existing, value).map_err(|_| {
                        format!("failed to insert data file at {key:?}: it meets other data")
                    })?,
                    None => {
                        a.insert(key, value);
                    }
                }
            }
            Ok(())
        }
        _ => Err("failed to insert data file: it meets other data".into()),
    }
}

/// Every value of the data tree must lie inside a root (OPA's check in `validateAndInjectDefaults`).
fn check_data_roots(
    node: &Value,
    at: &mut Vec<String>,
    roots: &[String],
) -> Result<(), BundleError> {
    let path = at.join("/");
    if manifest::any_contains(roots, &path) {
        return Ok(());
    }
    let Value::Object(map) = node else {
        return Err(BundleError::invalid(format!(
            "manifest roots {roots:?} do not permit data at path '/{path}' (hint: check bundle directory structure)"
        )));
    };
    // Above every root: go down where a root lies below.
    for (key, child) in map {
        at.push(key.clone());
        let below = at.join("/");
        let leads = roots.iter().any(|root| manifest::contains(&below, root));
        let result = if leads || manifest::any_contains(roots, &below) {
            check_data_roots(child, at, roots)
        } else {
            Err(BundleError::invalid(format!(
                "manifest roots {roots:?} do not permit data at path '/{below}' (hint: check bundle directory structure)"
            )))
        };
        at.pop();
        result?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
