//! Policy directories: `*.rules.toml` incident rules ([`rules`]) and `*.rego` modules with
//! `data.json` documents ([`rego`]), read and checked whole before anything is imported, with
//! every error naming its file.

pub mod rego;
pub mod rules;

use std::path::{Path, PathBuf};

use crate::PolicyError;
use crate::opa::OpaError;

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
        source: OpaError,
    },
    #[error("{path}: policy `{name}` is also defined in {first}")]
    Duplicate {
        path: String,
        name: String,
        first: String,
    },
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
