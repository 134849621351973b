//! UCAST conditions as an SQL `WHERE` clause, formatted as OPA formats them (its SQL builder
//! interpolates every value as a literal): `WHERE fruits.colour = E'red'` for PostgreSQL,
//! `'red'` for MySQL and SQLite, `N'red'` for SQL Server; numbers are written as string literals
//! (`E'2'`), as OPA does; `AND`/`OR` in parentheses, `NOT` in front; `IS NULL` for `null`.
//! Always true is the empty string.

use regorus::Value;

use super::ucast::{Dialect, FieldValue, Node};

/// The `WHERE` clause of a condition, or `""` when there is none (always true).
pub fn where_clause(node: Option<&Node>, dialect: Dialect) -> String {
    match node {
        None => String::new(),
        Some(node) => format!("WHERE {}", condition(node, dialect)),
    }
}

fn condition(node: &Node, dialect: Dialect) -> String {
    match node {
        Node::Compound { operator, value } => {
            let parts: Vec<String> = value.iter().map(|n| condition(n, dialect)).collect();
            match *operator {
                "not" => format!("NOT {}", parts.join(" AND ")),
                "or" => format!("({})", parts.join(" OR ")),
                _ => format!("({})", parts.join(" AND ")),
            }
        }
        Node::Field {
            operator,
            field,
            value,
        } => {
            let rhs = match value {
                FieldValue::Field(other) => other.clone(),
                FieldValue::Value(Value::Null) => {
                    return match *operator {
                        "ne" => format!("{field} IS NOT NULL"),
                        _ => format!("{field} IS NULL"),
                    };
                }
                FieldValue::Value(value) => match *operator {
                    "in" => {
                        let items: Vec<String> = match value {
                            Value::Array(items) => {
                                items.iter().map(|v| literal(v, dialect)).collect()
                            }
                            Value::Set(items) => {
                                items.iter().map(|v| literal(v, dialect)).collect()
                            }
                            other => vec![literal(other, dialect)],
                        };
                        if items.is_empty() {
                            return "0 = 1".into();
                        }
                        return format!("{field} IN ({})", items.join(", "));
                    }
                    "startswith" | "endswith" | "contains" => {
                        let text = match value {
                            Value::String(s) => escape_like(s),
                            other => escape_like(&super::residual::json_text(other)),
                        };
                        let pattern = match *operator {
                            "startswith" => format!("{text}%"),
                            "endswith" => format!("%{text}"),
                            _ => format!("%{text}%"),
                        };
                        return format!("{field} LIKE {}", quote(&pattern, dialect));
                    }
                    _ => literal(value, dialect),
                },
            };
            let op = match *operator {
                "eq" => "=",
                "ne" => "<>",
                "lt" => "<",
                "lte" => "<=",
                "gt" => ">",
                "gte" => ">=",
                other => other,
            };
            format!("{field} {op} {rhs}")
        }
    }
}

/// A value as an SQL literal.
fn literal(value: &Value, dialect: Dialect) -> String {
    match value {
        Value::Null | Value::Undefined => "NULL".into(),
        Value::Bool(true) => "TRUE".into(),
        Value::Bool(false) => "FALSE".into(),
        Value::String(s) => quote(s, dialect),
        other => quote(&super::residual::json_text(other), dialect),
    }
}

/// `%`, `_` and `\` taken literally in a `LIKE` pattern.
fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%")
}

/// A string literal in the dialect's quoting.
fn quote(text: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    match dialect {
        Dialect::SqlServer => {
            // Standard SQL strings: a backslash is an ordinary character.
            out.push_str("N'");
            for c in text.chars() {
                if c == '\'' {
                    out.push_str("''");
                } else {
                    out.push(c);
                }
            }
        }
        Dialect::Sqlite => {
            out.push('\'');
            for c in text.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\0' => out.push_str("'||char(0)||'"),
                    other => out.push(other),
                }
            }
        }
        Dialect::Postgres | Dialect::MySql => {
            if dialect == Dialect::Postgres {
                out.push('E');
            }
            out.push('\'');
            for c in text.chars() {
                match c {
                    '\0' => out.push_str("\\0"),
                    '\u{8}' => out.push_str("\\b"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{1a}' => out.push_str("\\Z"),
                    '\'' => out.push_str("\\'"),
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    other => out.push(other),
                }
            }
        }
    }
    out.push('\'');
    out
}
