//! Reading a bundle's `.tar.gz` under limits: the archive's size, the bytes it unpacks to (tar
//! headers included, so a gzip bomb stops at the budget instead of filling memory), the number of
//! files, and the names of its entries (no `..`, nothing that is not UTF-8). Regular files are
//! kept; directories and other entries (links, devices) are skipped, as OPA's tarball loader
//! skips them. Nothing touches the file system.

use std::io::Read;

use flate2::read::GzDecoder;

use super::BundleError;

/// What a bundle may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The archive as sent (compressed).
    pub max_bytes: u64,
    /// Everything the archive unpacks to.
    pub max_uncompressed_bytes: u64,
    pub max_files: usize,
}

/// Longest entry name accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// One regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// `/`-separated, without a leading `/` or `./` (`roles/data.json`, `.manifest`).
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Counts what the gzip stream yields and fails past the budget.
struct Budget<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded = true;
            self.left = 0;
            return Err(std::io::Error::other("uncompressed size budget exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The regular files of `archive`, in archive order.
pub fn read(archive: &[u8], limits: &Limits) -> Result<Vec<ArchiveFile>, BundleError> {
    if archive.len() as u64 > limits.max_bytes {
        return Err(BundleError::too_large(format!(
            "the bundle is {} bytes, over bundle.max_bytes ({})",
            archive.len(),
            limits.max_bytes
        )));
    }
    if archive.len() < 2 || archive[..2] != [0x1f, 0x8b] {
        return Err(BundleError::invalid(
            "the bundle is not a gzip-compressed tar archive (.tar.gz)",
        ));
    }
    let mut budget = Budget {
        inner: GzDecoder::new(archive),
        left: limits.max_uncompressed_bytes,
        exceeded: false,
    };
    let too_large = |limits: &Limits| {
        BundleError::too_large(format!(
            "the bundle unpacks to more than bundle.max_uncompressed_bytes ({} bytes); refused",
            limits.max_uncompressed_bytes
        ))
    };
    let mut files: Vec<ArchiveFile> = Vec::new();
    let mut tar = tar::Archive::new(&mut budget);
    let entries = tar
        .entries()
        .map_err(|err| BundleError::invalid(format!("archive read failed: {err}")))?;
    let mut total: u64 = 0;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(err) => return Err(archive_error(err, files.last())),
        };
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) {
            // Directories, links, devices: OPA's loader reads regular files only.
            continue;
        }
        let path = clean_path(&raw)?;
        if files.len() == limits.max_files {
            return Err(BundleError::too_large(format!(
                "the bundle holds more than bundle.max_files ({}) files",
                limits.max_files
            )));
        }
        if files.iter().any(|f| f.path == path) {
            return Err(BundleError::invalid(format!(
                "{path}: the archive holds this file twice"
            )));
        }
        let size = entry.size();
        total = total.saturating_add(size);
        if total > limits.max_uncompressed_bytes {
            return Err(BundleError::too_large(format!(
                "{path}: the bundle's files take more than bundle.max_uncompressed_bytes ({} bytes)",
                limits.max_uncompressed_bytes
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        if let Err(err) = entry.read_to_end(&mut bytes) {
            if budget.exceeded {
                return Err(too_large(limits));
            }
            return Err(BundleError::invalid(format!(
                "{path}: cannot be read: {err}"
            )));
        }
        files.push(ArchiveFile { path, bytes });
    }
    if budget.exceeded {
        return Err(too_large(limits));
    }
    Ok(files)
}

fn archive_error(err: std::io::Error, last: Option<&ArchiveFile>) -> BundleError {
    if err.to_string().contains("budget exceeded") {
        return BundleError::too_large(
            "the bundle unpacks to more than bundle.max_uncompressed_bytes; refused",
        );
    }
    match last {
        Some(file) => {
            BundleError::invalid(format!("archive read failed after {}: {err}", file.path))
        }
        None => BundleError::invalid(format!("archive read failed: {err}")),
    }
}

/// `/a/./b.rego` -> `a/b.rego`; refuses what could name a place outside the bundle.
fn clean_path(raw: &[u8]) -> Result<String, BundleError> {
    let shown = || String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
    if raw.len() > MAX_PATH_BYTES {
        return Err(BundleError::invalid(format!(
            "{}...: an entry name is longer than {MAX_PATH_BYTES} bytes",
            shown()
        )));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| BundleError::invalid(format!("{}: an entry name is not UTF-8", shown())))?;
    if text.chars().any(|c| c.is_control() || c == '\\') {
        return Err(BundleError::invalid(format!(
            "{}: an entry name holds a control character or a backslash",
            text.escape_debug()
        )));
    }
    let mut segments = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => continue,
            ".." => {
                return Err(BundleError::invalid(format!(
                    "{text}: an entry name must not hold `..`"
                )));
            }
            other => segments.push(other),
        }
    }
    if segments.is_empty() {
        return Err(BundleError::invalid(format!(
            "{text:?}: an entry names no file"
        )));
    }
    Ok(segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_escapes_refused() {
        assert_eq!(clean_path(b"/a/./b.rego").unwrap(), "a/b.rego");
        assert_eq!(clean_path(b"./.manifest").unwrap(), ".manifest");
        assert_eq!(clean_path(b"data.json").unwrap(), "data.json");
        for bad in [
            &b"../x.rego"[..],
            b"/a/../../etc/passwd",
            b"a\\b",
            b"/",
            b"a\nb",
        ] {
            assert!(
                clean_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(clean_path(&[b'a'; MAX_PATH_BYTES + 1]).is_err());
        assert!(clean_path(&[0xff, 0xfe]).is_err());
    }
}
