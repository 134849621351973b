//! Data paths: `a/b/c` as the API names them, `data.a.b.c` as regorus reads them, and back.

/// `a/b/c` -> `data.a.b.c`; segments that are not identifiers are quoted (`data.a["b-c"]`).
pub fn data_path(slash_path: &str) -> String {
    let mut out = String::from("data");
    for segment in slash_path.split('/').filter(|s| !s.is_empty()) {
        let identifier = segment
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if identifier {
            out.push('.');
            out.push_str(segment);
        } else {
            out.push_str(&format!("[{}]", serde_json::Value::from(segment)));
        }
    }
    out
}

/// `data.a["b-c"].d` -> `["data", "a", "b-c", "d"]`, as [`data_path`] writes paths; `None` for
/// anything else (it is evaluated as a query instead).
pub(super) fn path_components(path: &str) -> Option<Vec<String>> {
    ref_components(path, "data")
}

/// `root.a["b-c"].d` -> `[root, "a", "b-c", "d"]` (a reference written with static keys only).
pub(super) fn ref_components(path: &str, root: &str) -> Option<Vec<String>> {
    let mut rest = path.strip_prefix(root)?;
    let mut components = vec![root.to_owned()];
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end == 0 {
                return None;
            }
            components.push(after[..end].to_owned());
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let mut strings = serde_json::Deserializer::from_str(after).into_iter::<String>();
            let key = strings.next()?.ok()?;
            let consumed = strings.byte_offset();
            rest = after[consumed..].strip_prefix(']')?;
            components.push(key);
        } else {
            return None;
        }
    }
    Some(components)
}
