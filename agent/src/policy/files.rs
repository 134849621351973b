//! Policy files: `*.rules.toml` files holding `[[policy]]` tables in the shape of `POST /policies`.
//!
//! `mesh-agent run --policies DIR` reads every rules file under DIR (recursively, in path order),
//! checks all of them before importing any, then imports by name: a policy that is absent is created,
//! one that differs is updated to the file's version, one that is equal is left alone. Running the
//! import again therefore changes nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ImportOutcome, NewPolicy, PolicyError, PolicyService, validate_name};

/// The file suffix of incident rule files.
pub const RULES_SUFFIX: &str = ".rules.toml";

/// A problem in a policy directory, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: policy `{name}`: {source}")]
    Invalid {
        path: String,
        name: String,
        #[source]
        source: PolicyError,
    },
    #[error("{path}: {source}")]
    Rego {
        path: String,
        #[source]
        source: crate::opa::OpaError,
    },
    #[error("{path}: policy `{name}` is also defined in {first}")]
    Duplicate {
        path: String,
        name: String,
        first: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    policy: Vec<NewPolicy>,
}

/// One policy read from a file.
#[derive(Debug, Clone)]
pub struct FilePolicy {
    pub path: PathBuf,
    pub policy: NewPolicy,
}

/// What an import did, by outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// Reads and checks every rules file under `dir`.
pub fn read_dir(dir: &Path) -> Result<Vec<FilePolicy>, FilesError> {
    let paths = find_files(dir, &|name| name.ends_with(RULES_SUFFIX))?;
    let mut out: Vec<FilePolicy> = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| FilesError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: RulesFile = toml::from_str(&text).map_err(|err| FilesError::Parse {
            path: shown.clone(),
            message: err.to_string(),
        })?;
        for policy in file.policy {
            let invalid = |source| FilesError::Invalid {
                path: shown.clone(),
                name: policy.name.clone(),
                source,
            };
            validate_name(&policy.name).map_err(invalid)?;
            policy.definition.validate().map_err(invalid)?;
            if let Some(first) = out.iter().find(|p| p.policy.name == policy.name) {
                return Err(FilesError::Duplicate {
                    path: shown,
                    name: policy.name,
                    first: first.path.display().to_string(),
                });
            }
            out.push(FilePolicy {
                path: path.clone(),
                policy,
            });
        }
    }
    Ok(out)
}

/// Imports checked policies through the service.
pub fn import(
    service: &PolicyService,
    policies: Vec<FilePolicy>,
) -> Result<ImportSummary, FilesError> {
    let mut summary = ImportSummary::default();
    for FilePolicy { path, policy } in policies {
        let name = policy.name.clone();
        let (outcome, _) = service
            .import(policy)
            .map_err(|source| FilesError::Invalid {
                path: path.display().to_string(),
                name,
                source,
            })?;
        match outcome {
            ImportOutcome::Created => summary.created += 1,
            ImportOutcome::Updated => summary.updated += 1,
            ImportOutcome::Unchanged => summary.unchanged += 1,
        }
    }
    Ok(summary)
}

/// Every file under `dir` (recursively) whose name satisfies `wanted`, in path order.
pub fn find_files(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>, FilesError> {
    let mut out = Vec::new();
    collect(dir, wanted, &mut out)?;
    out.sort();
    Ok(out)
}

fn collect(
    dir: &Path,
    wanted: &dyn Fn(&str) -> bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), FilesError> {
    let read_err = |source| FilesError::Read {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_dir() {
            collect(&path, wanted, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(wanted)
        {
            out.push(path);
        }
    }
    Ok(())
}
