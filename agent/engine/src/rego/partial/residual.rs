//! What partial evaluation leaves behind: residual expressions over unknown references and known
//! values, in the shape OPA's partial evaluator gives them (`eq(input.x, "red")`,
//! `internal.member_2(input.x, {"a", "b"})`), each with the location it came from.

use std::fmt;

use regorus::Value;

use super::super::Location;

/// One operand of a residual expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// A known value.
    Value(Value),
    /// A reference under an unknown: its root (`input` or `data`) and then its keys.
    Ref(Vec<Value>),
}

/// The operator of a residual call, by OPA's builtin name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=` and `==` (OPA's partial evaluator gives both as unification, `eq`).
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    /// `x in collection`: `internal.member_2`.
    Member,
    StartsWith,
    EndsWith,
    Contains,
}

impl Op {
    /// OPA's name of the builtin.
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Member => "internal.member_2",
            Op::StartsWith => "startswith",
            Op::EndsWith => "endswith",
            Op::Contains => "contains",
        }
    }

    pub(super) fn from_bool_op(op: &regorus::unstable::BoolOp) -> Op {
        use regorus::unstable::BoolOp;
        match op {
            BoolOp::Eq => Op::Eq,
            BoolOp::Ne => Op::Neq,
            BoolOp::Lt => Op::Lt,
            BoolOp::Le => Op::Lte,
            BoolOp::Gt => Op::Gt,
            BoolOp::Ge => Op::Gte,
        }
    }

    /// Whether `a op b` holds for two known values (Rego's ordering across types, as regorus's).
    pub(super) fn holds(self, a: &Value, b: &Value) -> Option<bool> {
        Some(match self {
            Op::Eq => a == b,
            Op::Neq => a != b,
            Op::Lt => a < b,
            Op::Lte => a <= b,
            Op::Gt => a > b,
            Op::Gte => a >= b,
            Op::Member | Op::StartsWith | Op::EndsWith | Op::Contains => return None,
        })
    }
}

/// One expression of a residual query.
#[derive(Debug, Clone, PartialEq)]
pub enum Residual {
    /// `op(a, b)`, or `not op(a, b)`.
    Call {
        op: Op,
        args: [Term; 2],
        negated: bool,
        location: Location,
    },
    /// A reference that must be defined and not false (`input.fruits.ripe`), or `not` it.
    Term {
        term: Term,
        negated: bool,
        location: Location,
    },
}

impl Residual {
    pub fn location(&self) -> &Location {
        match self {
            Residual::Call { location, .. } | Residual::Term { location, .. } => location,
        }
    }

    pub fn negated(&self) -> bool {
        match self {
            Residual::Call { negated, .. } | Residual::Term { negated, .. } => *negated,
        }
    }
}

/// `input.fruits.colour`, `input.fruits[0]`, `data.x["a-b"]`.
impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Value(value) => write!(f, "{}", json_text(value)),
            Term::Ref(path) => {
                for (i, key) in path.iter().enumerate() {
                    match key {
                        Value::String(s) if i == 0 => write!(f, "{s}")?,
                        Value::String(s) if is_identifier(s) => write!(f, ".{s}")?,
                        other => write!(f, "[{}]", json_text(other))?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Residual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated() {
            write!(f, "not ")?;
        }
        match self {
            Residual::Call { op, args, .. } => write!(f, "{}({}, {})", op.name(), args[0], args[1]),
            Residual::Term { term, .. } => write!(f, "{term}"),
        }
    }
}

pub(super) fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "<value>".to_owned())
}

pub(super) fn is_identifier(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
