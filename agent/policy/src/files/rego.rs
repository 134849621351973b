//! Rego in a policy directory: every `*.rego` file is a module (its id is its path relative to the
//! directory, as OPA names modules loaded from files), and every `data.json` is the data document
//! at its directory's path (OPA's bundle layout). All are checked together before any is imported;
//! importing again what is already stored changes nothing.

use std::path::{Path, PathBuf};

use serde_json::Value;

use agent_engine::rego::{ModuleSource, RegoSet, RegoSettings};

use super::{FilesError, find_files};

use crate::opa::{OpaError, RegoService, data_tree};

/// The Rego content of a policy directory.
#[derive(Debug, Default)]
pub struct RegoDir {
    pub modules: Vec<ModuleSource>,
    /// (data path, document)
    pub data: Vec<(String, Value)>,
}

/// Reads every module and data document under `dir` ([`RegoDir::compile`] checks them).
pub fn read_dir(dir: &Path) -> Result<RegoDir, FilesError> {
    let mut out = RegoDir::default();
    for path in find_files(dir, &|name| name.ends_with(".rego"))? {
        out.modules.push(ModuleSource {
            id: relative(dir, &path),
            text: read(&path)?,
        });
    }
    for path in find_files(dir, &|name| name == "data.json")? {
        let text = read(&path)?;
        let value: Value = serde_json::from_str(&text).map_err(|err| FilesError::Parse {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        let data_path = path.parent().map(|p| relative(dir, p)).unwrap_or_default();
        out.data.push((data_path, value));
    }
    Ok(out)
}

impl RegoDir {
    /// The compiled set of every module and data document read from `dir`; an error names the
    /// file.
    pub fn compile(&self, dir: &Path, settings: RegoSettings) -> Result<RegoSet, FilesError> {
        let mut docs = Vec::new();
        for (path, value) in &self.data {
            let writes = data_tree::put(&docs, path, value.clone())
                .map_err(|err| rego_error(dir, err.into()))?;
            writes.iter().for_each(|w| w.apply_to(&mut docs));
        }
        let tree = data_tree::tree(&docs).map_err(|err| rego_error(dir, err.into()))?;
        RegoSet::build(&self.modules, tree, 0, settings).map_err(|err| FilesError::Rego {
            path: dir.join(&err.location.file).display().to_string(),
            source: err.into(),
        })
    }
}

/// Imports what [`read_dir`] read; returns how many modules and documents changed. A module or
/// document with an open rollout is left to it (logged): the files do not overrule a canary, and a
/// node restarted during one still starts.
pub fn import(service: &RegoService, dir: RegoDir) -> Result<usize, OpaError> {
    let mut changed = 0;
    for module in dir.modules {
        match service.put_module(&module.id, module.text) {
            Ok(written) => changed += usize::from(written),
            Err(OpaError::InRollout(why)) => {
                tracing::warn!(module = %module.id, reason = %why, "policy file not imported while its rollout is open")
            }
            Err(err) => return Err(err),
        }
    }
    for (path, value) in dir.data {
        match service.put_data(&path, value) {
            Ok(written) => changed += usize::from(written),
            Err(OpaError::InRollout(why)) => {
                tracing::warn!(path = %path, reason = %why, "data file not imported while its rollout is open")
            }
            Err(err) => return Err(err),
        }
    }
    Ok(changed)
}

fn read(path: &Path) -> Result<String, FilesError> {
    std::fs::read_to_string(path).map_err(|source| FilesError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn relative(dir: &Path, path: &Path) -> String {
    let rel: PathBuf = path.strip_prefix(dir).unwrap_or(path).to_path_buf();
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn rego_error(dir: &Path, source: OpaError) -> FilesError {
    FilesError::Rego {
        path: dir.display().to_string(),
        source,
    }
}
