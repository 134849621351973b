//! Policy files: `*.rules.toml` files holding `[[policy]]` tables in the shape of `POST /policies`.
//!
//! `mesh-agent run --policies DIR` reads every rules file under DIR (recursively, in path order),
//! checks all of them before importing any, then imports by name: a policy that is absent is created,
//! one that differs is updated to the file's version, one that is equal is left alone. Running the
//! import again therefore changes nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{FilesError, find_files};
use crate::{ImportOutcome, NewPolicy, PolicyService, validate_name};

/// The file suffix of incident rule files.
pub const RULES_SUFFIX: &str = ".rules.toml";

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
            policy
                .definition
                .validate()
                .map_err(|err| invalid(err.into()))?;
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
