//! Residual queries as data filters: the targets OPA's Compile API names (UCAST variants and SQL
//! dialects), what each can express (OPA's "fragment": comparisons of one `input.<table>.<column>`
//! with a value, `in`, `startswith`/`endswith`/`contains` where the target has them, `not` where
//! it has it), and the UCAST condition tree (`{"type": "compound", "operator": "and"/"or"/"not",
//! "value": [...]}`, `{"type": "field", "operator": "eq", "field": "fruits.colour", "value":
//! "red"}`) that `sql.rs` also writes from. Table and column names can be mapped
//! (`targetSQLTableMappings`: `{"fruits": {"$self": "fruit_table", "colour": "col"}}`).

use regorus::Value;
use serde_json::{Value as Json, json};

use super::residual::{Op, Residual, Term};
use crate::rego::Location;

/// An SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    SqlServer,
    Sqlite,
}

/// A UCAST variant (what its consumers can read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    All,
    Minimal,
    Prisma,
    Linq,
}

/// A data filter target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Ucast(Variant),
    Sql(Dialect),
}

impl Target {
    /// From an `Accept` media type: `application/vnd.opa.ucast.all+json`, and the
    /// `application/vnd.styra.*` names the TypeScript SDK sends.
    pub fn from_media_type(media: &str) -> Option<Target> {
        let rest = media
            .strip_prefix("application/vnd.opa.")
            .or_else(|| media.strip_prefix("application/vnd.styra."))?
            .strip_suffix("+json")?;
        Target::from_dialect(&rest.replacen('.', "+", 1))
    }

    /// From `options.targetDialects`: `ucast+all`, `sql+postgresql`.
    pub fn from_dialect(name: &str) -> Option<Target> {
        Some(match name {
            "ucast+all" => Target::Ucast(Variant::All),
            "ucast+minimal" => Target::Ucast(Variant::Minimal),
            "ucast+prisma" => Target::Ucast(Variant::Prisma),
            "ucast+linq" => Target::Ucast(Variant::Linq),
            "sql+postgresql" => Target::Sql(Dialect::Postgres),
            "sql+mysql" => Target::Sql(Dialect::MySql),
            "sql+sqlserver" => Target::Sql(Dialect::SqlServer),
            "sql+sqlite" => Target::Sql(Dialect::Sqlite),
            _ => return None,
        })
    }

    /// `ucast` or `sql`, and the dialect's key in `targetSQLTableMappings`.
    pub fn keys(self) -> (&'static str, &'static str) {
        match self {
            Target::Ucast(Variant::All) => ("ucast", "all"),
            Target::Ucast(Variant::Minimal) => ("ucast", "minimal"),
            Target::Ucast(Variant::Prisma) => ("ucast", "prisma"),
            Target::Ucast(Variant::Linq) => ("ucast", "linq"),
            Target::Sql(Dialect::Postgres) => ("sql", "postgresql"),
            Target::Sql(Dialect::MySql) => ("sql", "mysql"),
            Target::Sql(Dialect::SqlServer) => ("sql", "sqlserver"),
            Target::Sql(Dialect::Sqlite) => ("sql", "sqlite"),
        }
    }

    /// As OPA names it in errors: `UCAST (LINQ)`, `SQL (sqlite)`.
    fn describe(self) -> String {
        match self {
            Target::Ucast(Variant::Minimal) => "UCAST".into(),
            Target::Ucast(Variant::Linq) => "UCAST (LINQ)".into(),
            Target::Ucast(_) | Target::Sql(_) => {
                let (kind, dialect) = self.keys();
                format!("{} ({dialect})", kind.to_uppercase())
            }
        }
    }

    fn supports_builtin(self, op: Op) -> bool {
        let comparison = matches!(op, Op::Eq | Op::Neq | Op::Lt | Op::Lte | Op::Gt | Op::Gte);
        match self {
            Target::Ucast(Variant::Minimal) => comparison,
            Target::Ucast(Variant::Linq) | Target::Sql(Dialect::Sqlite) => {
                comparison || op == Op::Member
            }
            Target::Ucast(_) | Target::Sql(_) => true,
        }
    }

    fn supports_not(self) -> bool {
        matches!(
            self,
            Target::Sql(_) | Target::Ucast(Variant::All) | Target::Ucast(Variant::Prisma)
        )
    }

    /// Comparing two columns (`{"field": ...}` as the value).
    fn supports_field_ref(self) -> bool {
        matches!(self, Target::Sql(_) | Target::Ucast(Variant::All))
    }
}

/// An expression the target cannot express, in OPA's terms (`pe_fragment_error`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FragmentError {
    pub code: &'static str,
    pub message: String,
    pub location: Location,
}

/// A UCAST condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Compound {
        operator: &'static str,
        value: Vec<Node>,
    },
    Field {
        operator: &'static str,
        field: String,
        value: FieldValue,
    },
}

/// What a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Value(Value),
    /// Another column.
    Field(String),
}

/// Checks every residual expression against `target` and builds the condition tree: `Ok(None)`
/// when some query is empty (always true). `queries` must not be empty (never true has no
/// filter).
pub fn build(
    queries: &[Vec<Residual>],
    target: Target,
    mappings: Option<&Json>,
) -> Result<Option<Node>, Vec<FragmentError>> {
    let mappings = lookup_mappings(mappings, target);
    let mut errors = Vec::new();
    let mut bodies = Vec::new();
    let mut always = false;
    for query in queries {
        if query.is_empty() {
            always = true;
        }
        let mut nodes = Vec::new();
        for expr in query {
            match node(expr, target, mappings) {
                Ok(node) => nodes.push(node),
                Err(err) => errors.push(err),
            }
        }
        bodies.push(match nodes.len() {
            1 => nodes.pop(),
            0 => None,
            _ => Some(Node::Compound {
                operator: "and",
                value: nodes,
            }),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if always {
        return Ok(None);
    }
    let mut bodies: Vec<Node> = bodies.into_iter().flatten().collect();
    Ok(Some(if bodies.len() == 1 {
        bodies.remove(0)
    } else {
        Node::Compound {
            operator: "or",
            value: bodies,
        }
    }))
}

/// The UCAST JSON of a condition (`{}` for always true).
pub fn to_json(node: Option<&Node>) -> Json {
    match node {
        None => json!({}),
        Some(Node::Compound { operator, value }) => json!({
            "type": "compound",
            "operator": operator,
            "value": value.iter().map(|n| to_json(Some(n))).collect::<Vec<_>>(),
        }),
        Some(Node::Field {
            operator,
            field,
            value,
        }) => json!({
            "type": "field",
            "operator": operator,
            "field": field,
            "value": match value {
                FieldValue::Value(v) => serde_json::to_value(v).unwrap_or(Json::Null),
                FieldValue::Field(f) => json!({ "field": f }),
            },
        }),
    }
}

fn fragment(location: &Location, message: String) -> FragmentError {
    FragmentError {
        code: "pe_fragment_error",
        message,
        location: location.clone(),
    }
}

fn is_scalar(value: &Value) -> bool {
    matches!(
        value,
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)
    )
}

fn node(expr: &Residual, target: Target, mappings: Option<&Json>) -> Result<Node, FragmentError> {
    let (op, args, negated, location) = match expr {
        Residual::Term { location, .. } => {
            return Err(fragment(
                location,
                format!("invalid statement \"{expr}\": try `{expr} != false`"),
            ));
        }
        Residual::Call {
            op,
            args,
            negated,
            location,
        } => (*op, args, *negated, location),
    };
    let shown = match op {
        Op::Member => "in",
        other => other.name(),
    };
    if negated && !target.supports_not() {
        return Err(fragment(
            location,
            format!(
                "\"not\" not permitted: unsupported feature \"not\" for {}",
                target.describe()
            ),
        ));
    }
    if !target.supports_builtin(op) {
        return Err(fragment(
            location,
            format!(
                "invalid builtin `{shown}`: unsupported for {}",
                target.describe()
            ),
        ));
    }
    let field_of = |term: &Term| -> Result<Option<String>, FragmentError> {
        match term {
            Term::Value(_) => Ok(None),
            Term::Ref(path) => match path.as_slice() {
                [
                    Value::String(root),
                    Value::String(table),
                    Value::String(column),
                ] if root.as_ref() == "input" => Ok(Some(translate(table, column, mappings))),
                _ => Err(fragment(
                    location,
                    format!(
                        "{}: invalid ref operand: {term} (a column is `input.<table>.<column>`)",
                        op.name()
                    ),
                )),
            },
        }
    };
    let left = field_of(&args[0])?;
    let right = field_of(&args[1])?;
    let value_of = |term: &Term| match term {
        Term::Value(value) => value.clone(),
        Term::Ref(_) => Value::Undefined,
    };
    let (field, value, flipped) = match (left, right) {
        (Some(l), Some(r)) => {
            if !matches!(op, Op::Eq | Op::Neq | Op::Lt | Op::Lte | Op::Gt | Op::Gte) {
                return Err(fragment(
                    location,
                    format!("rhs of {} must be known", op.name()),
                ));
            }
            if !target.supports_field_ref() {
                return Err(fragment(
                    location,
                    format!(
                        "reference to field: unsupported feature \"field-ref\" for {}",
                        target.describe()
                    ),
                ));
            }
            (l, FieldValue::Field(r), false)
        }
        (Some(l), None) => (l, FieldValue::Value(value_of(&args[1])), false),
        (None, Some(r)) => {
            if matches!(
                op,
                Op::Member | Op::StartsWith | Op::EndsWith | Op::Contains
            ) {
                return Err(fragment(location, format!("rhs of {shown} must be known")));
            }
            (r, FieldValue::Value(value_of(&args[0])), true)
        }
        (None, None) => {
            return Err(fragment(
                location,
                format!("{}: no unknown operand", op.name()),
            ));
        }
    };
    let operator = match (op, flipped) {
        (Op::Eq, _) => "eq",
        (Op::Neq, _) => "ne",
        (Op::Lt, false) | (Op::Gt, true) => "lt",
        (Op::Lte, false) | (Op::Gte, true) => "lte",
        (Op::Gt, false) | (Op::Lt, true) => "gt",
        (Op::Gte, false) | (Op::Lte, true) => "gte",
        (Op::Member, _) => "in",
        (Op::StartsWith, _) => "startswith",
        (Op::EndsWith, _) => "endswith",
        (Op::Contains, _) => "contains",
    };
    if let FieldValue::Value(value) = &value {
        let fits = match op {
            Op::Eq | Op::Neq => is_scalar(value),
            Op::Lt | Op::Lte | Op::Gt | Op::Gte => is_scalar(value) && *value != Value::Null,
            Op::Member => match value {
                Value::Array(items) => items.iter().all(is_scalar),
                Value::Set(items) => items.iter().all(is_scalar),
                _ => false,
            },
            Op::StartsWith | Op::EndsWith | Op::Contains => matches!(value, Value::String(_)),
        };
        if !fits {
            return Err(fragment(
                location,
                format!(
                    "{}: the value {} cannot be compared with a column this way",
                    op.name(),
                    super::residual::json_text(value)
                ),
            ));
        }
    }
    let node = Node::Field {
        operator,
        field,
        value,
    };
    Ok(if negated {
        Node::Compound {
            operator: "not",
            value: vec![node],
        }
    } else {
        node
    })
}

/// The mappings for `target`: under its dialect's key, its kind's key, or the map itself.
fn lookup_mappings(mappings: Option<&Json>, target: Target) -> Option<&Json> {
    let mappings = mappings.filter(|m| m.as_object().is_some_and(|o| !o.is_empty()))?;
    let (kind, dialect) = target.keys();
    mappings
        .get(dialect)
        .filter(|m| m.is_object())
        .or_else(|| mappings.get(kind).filter(|m| m.is_object()))
        .or(Some(mappings))
}

/// `fruits.colour`, renamed as the mappings say (`$self` renames the table).
fn translate(table: &str, column: &str, mappings: Option<&Json>) -> String {
    let entry = mappings.and_then(|m| m.get(table));
    let table_out = entry
        .and_then(|e| e.get("$self"))
        .and_then(Json::as_str)
        .unwrap_or(table);
    let column_out = entry
        .and_then(|e| e.get(column))
        .and_then(Json::as_str)
        .unwrap_or(column);
    format!("{table_out}.{column_out}")
}
