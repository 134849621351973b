//! OPA's single `data` tree, stored as documents at paths.
//!
//! A data PUT at a path replaces that subtree; a DELETE removes it. The tree is kept as a set of
//! documents none of which lies under another: a PUT below an existing document edits that
//! document, a PUT above existing documents replaces them. These functions turn a request into the
//! document writes that do it, and the documents into the tree regorus loads.

use mesh_proto::{DocKind, DocumentRecord};
use serde_json::{Map, Value};

use agent_store::DocWrite;

/// Why a data request cannot be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("data path `{0}` not found")]
    NotFound(String),
    #[error("the root of data must be a JSON object")]
    RootNotObject,
    #[error("stored data document `{path}` is not valid JSON: {message}")]
    Corrupt { path: String, message: String },
}

/// `/a//b/` -> `a/b`.
pub fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Whether `ancestor` is `path` or above it.
fn covers(ancestor: &str, path: &str) -> bool {
    ancestor.is_empty() || path == ancestor || path.starts_with(&format!("{ancestor}/"))
}

fn parse(doc: &DocumentRecord) -> Result<Value, DataError> {
    serde_json::from_str(&doc.body).map_err(|err| DataError::Corrupt {
        path: doc.name.clone(),
        message: err.to_string(),
    })
}

fn put_doc(name: &str, value: &Value) -> DocWrite {
    DocWrite::Put {
        kind: DocKind::Data,
        name: name.to_owned(),
        body: value.to_string(),
    }
}

fn delete_doc(name: &str) -> DocWrite {
    DocWrite::Delete {
        kind: DocKind::Data,
        name: name.to_owned(),
    }
}

/// The writes that make `value` the data at `path`.
pub fn put(docs: &[DocumentRecord], path: &str, value: Value) -> Result<Vec<DocWrite>, DataError> {
    let path = normalize(path);
    if path.is_empty() && !value.is_object() {
        return Err(DataError::RootNotObject);
    }
    if let Some(ancestor) = docs
        .iter()
        .find(|d| d.name != path && covers(&d.name, &path))
    {
        let mut body = parse(ancestor)?;
        let relative = &segments(&path)[segments(&ancestor.name).len()..];
        set_at(&mut body, relative, value);
        return Ok(vec![put_doc(&ancestor.name, &body)]);
    }
    let mut writes: Vec<DocWrite> = docs
        .iter()
        .filter(|d| d.name != path && covers(&path, &d.name))
        .map(|d| delete_doc(&d.name))
        .collect();
    writes.push(put_doc(&path, &value));
    Ok(writes)
}

/// The writes that remove the data at `path`.
pub fn delete(docs: &[DocumentRecord], path: &str) -> Result<Vec<DocWrite>, DataError> {
    let path = normalize(path);
    if let Some(ancestor) = docs
        .iter()
        .find(|d| d.name != path && covers(&d.name, &path))
    {
        let mut body = parse(ancestor)?;
        let relative = &segments(&path)[segments(&ancestor.name).len()..];
        if !remove_at(&mut body, relative) {
            return Err(DataError::NotFound(path));
        }
        return Ok(vec![put_doc(&ancestor.name, &body)]);
    }
    let writes: Vec<DocWrite> = docs
        .iter()
        .filter(|d| covers(&path, &d.name))
        .map(|d| delete_doc(&d.name))
        .collect();
    if writes.is_empty() {
        return Err(DataError::NotFound(path));
    }
    Ok(writes)
}

/// The whole `data` tree the documents make.
pub fn tree(docs: &[DocumentRecord]) -> Result<Value, DataError> {
    let mut root = Value::Object(Map::new());
    for doc in docs {
        set_at(&mut root, &segments(&doc.name), parse(doc)?);
    }
    Ok(root)
}

/// Makes `value` the data at `path` of `tree` (`None`: removes what is there): how a bundle's data
/// takes the place of whatever lies under its roots.
pub fn replace_at(tree: &mut Value, path: &str, value: Option<Value>) {
    let path = segments(path);
    match value {
        Some(value) => set_at(tree, &path, value),
        None if path.is_empty() => *tree = Value::Object(Map::new()),
        None => {
            remove_at(tree, &path);
        }
    }
}

fn set_at(target: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *target = value;
        return;
    };
    let mut node = target;
    for segment in parents {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = match node {
            Value::Object(map) => map
                .entry((*segment).to_owned())
                .or_insert_with(|| Value::Object(Map::new())),
            _ => unreachable!("made an object above"),
        };
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert((*last).to_owned(), value);
    }
}

fn remove_at(target: &mut Value, path: &[&str]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = target;
    for segment in parents {
        match node.get_mut(*segment) {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object_mut().and_then(|m| m.remove(*last)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::Hlc;
    use serde_json::json;

    fn doc(name: &str, body: Value) -> DocumentRecord {
        DocumentRecord {
            kind: DocKind::Data,
            name: name.into(),
            body: body.to_string(),
            version: 1,
            created_at_us: 0,
            updated_at_us: 0,
            stamp: Hlc::default(),
            author: "n".into(),
        }
    }

    fn apply(mut docs: Vec<DocumentRecord>, writes: Vec<DocWrite>) -> Vec<DocumentRecord> {
        writes.iter().for_each(|w| w.apply_to(&mut docs));
        docs
    }

    #[test]
    fn puts_replace_subtrees_like_opa() {
        let docs = apply(vec![], put(&[], "/limits/", json!({"cpu": 4})).unwrap());
        assert_eq!(tree(&docs).unwrap(), json!({"limits": {"cpu": 4}}));
        // Below an existing document: that document is edited.
        let docs = apply(
            docs.clone(),
            put(&docs, "limits/memory", json!("8Gi")).unwrap(),
        );
        assert_eq!(docs.len(), 1);
        assert_eq!(
            tree(&docs).unwrap(),
            json!({"limits": {"cpu": 4, "memory": "8Gi"}})
        );
        // Beside it: a new document.
        let docs = apply(
            docs.clone(),
            put(&docs, "tenants/premium", json!(["t1"])).unwrap(),
        );
        assert_eq!(docs.len(), 2);
        // Above existing documents: they are replaced.
        let docs = apply(
            docs.clone(),
            put(&docs, "", json!({"fresh": true})).unwrap(),
        );
        assert_eq!(tree(&docs).unwrap(), json!({"fresh": true}));
        assert_eq!(put(&docs, "", json!(3)), Err(DataError::RootNotObject));
    }

    #[test]
    fn deletes_remove_subtrees_or_say_not_found() {
        let docs = vec![doc("a", json!({"x": 1, "y": 2})), doc("b/c", json!(true))];
        let after = apply(docs.clone(), delete(&docs, "a/x").unwrap());
        assert_eq!(
            tree(&after).unwrap(),
            json!({"a": {"y": 2}, "b": {"c": true}})
        );
        let after = apply(docs.clone(), delete(&docs, "b").unwrap());
        assert_eq!(tree(&after).unwrap(), json!({"a": {"x": 1, "y": 2}}));
        assert_eq!(delete(&docs, "a/z"), Err(DataError::NotFound("a/z".into())));
        assert_eq!(
            delete(&docs, "nope"),
            Err(DataError::NotFound("nope".into()))
        );
    }
}
