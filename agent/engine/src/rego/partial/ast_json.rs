//! Residual queries in OPA's AST JSON, as `POST /v1/compile` answers them: terms
//! `{"type": "ref" | "var" | "string" | "number" | "boolean" | "null" | "array" | "set" |
//! "object", "value": ...}`, expressions `{"index": n, "terms": [operator, args...]}` (a single
//! term for a bare reference), `"negated": true` under `not`.

use regorus::Value;
use serde_json::{Value as Json, json};

use super::residual::{Residual, Term};

/// `[[expr, ...], ...]`: one array of expressions per residual query.
pub fn queries(queries: &[Vec<Residual>]) -> Json {
    Json::Array(
        queries
            .iter()
            .map(|query| {
                Json::Array(
                    query
                        .iter()
                        .enumerate()
                        .map(|(index, expr)| expression(expr, index))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// One expression at position `index` of its query.
pub fn expression(expr: &Residual, index: usize) -> Json {
    let mut out = serde_json::Map::new();
    out.insert("index".into(), json!(index));
    if expr.negated() {
        out.insert("negated".into(), json!(true));
    }
    let terms = match expr {
        Residual::Call { op, args, .. } => {
            let operator: Vec<Json> = op
                .name()
                .split('.')
                .enumerate()
                .map(|(i, part)| {
                    if i == 0 {
                        json!({"type": "var", "value": part})
                    } else {
                        json!({"type": "string", "value": part})
                    }
                })
                .collect();
            json!([{"type": "ref", "value": operator}, term(&args[0]), term(&args[1])])
        }
        Residual::Term { term: t, .. } => term(t),
    };
    out.insert("terms".into(), terms);
    Json::Object(out)
}

/// A term: a reference's first element is a `var`, the rest are values.
pub fn term(t: &Term) -> Json {
    match t {
        Term::Value(value) => value_term(value),
        Term::Ref(path) => {
            let parts: Vec<Json> = path
                .iter()
                .enumerate()
                .map(|(i, key)| match key {
                    Value::String(s) if i == 0 => json!({"type": "var", "value": s.as_ref()}),
                    other => value_term(other),
                })
                .collect();
            json!({"type": "ref", "value": parts})
        }
    }
}

/// A known value as a term (sets stay sets, objects are lists of key and value terms).
pub fn value_term(value: &Value) -> Json {
    match value {
        Value::Null | Value::Undefined => json!({"type": "null", "value": null}),
        Value::Bool(b) => json!({"type": "boolean", "value": b}),
        Value::Number(_) => {
            json!({"type": "number", "value": serde_json::to_value(value).unwrap_or(Json::Null)})
        }
        Value::String(s) => json!({"type": "string", "value": s.as_ref()}),
        Value::Array(items) => {
            json!({"type": "array", "value": items.iter().map(value_term).collect::<Vec<_>>()})
        }
        Value::Set(items) => {
            json!({"type": "set", "value": items.iter().map(value_term).collect::<Vec<_>>()})
        }
        Value::Object(fields) => json!({
            "type": "object",
            "value": fields
                .iter()
                .map(|(k, v)| json!([value_term(k), value_term(v)]))
                .collect::<Vec<_>>(),
        }),
    }
}
