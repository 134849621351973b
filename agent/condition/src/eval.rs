//! The evaluator: runs a compiled program over an [`Incident`] without allocating. Fields are read
//! through [`View`], a borrowed, copyable view of a value, so neither the incident nor its JSON
//! context is ever copied. The recursion is bounded by the depth of the program, which the parser
//! limits.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::compile::{Field, Lit, Node, Root, Step, StrTest};
use super::tree::CmpOp;
use crate::{Facts, Incident};

/// A borrowed value: an incident field, a JSON value in its context, or a literal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum View<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    Array(&'a [Value]),
    Object(&'a Map<String, Value>),
}

/// What a program reads: the incident and the facts beside it.
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    pub incident: &'a Incident,
    pub facts: &'a dyn Facts,
}

/// Evaluates `node`, or-ing into `missing` the bits of the fields it found missing. Inline across
/// crates: the engine's loop over policies calls it once per policy.
#[inline]
pub(crate) fn eval(node: &Node, input: Input<'_>, missing: &mut u64) -> bool {
    match node {
        Node::Const(value) => *value,
        Node::And(items) => items.iter().all(|item| eval(item, input, missing)),
        Node::Or(items) => items.iter().any(|item| eval(item, input, missing)),
        Node::Not(inner) => !eval(inner, input, missing),
        leaf => test(leaf, input, missing),
    }
}

/// Evaluates a test: a node with no boolean operator above its fields.
#[inline]
pub(crate) fn test(node: &Node, input: Input<'_>, missing: &mut u64) -> bool {
    match node {
        Node::Const(value) => *value,
        Node::And(_) | Node::Or(_) | Node::Not(_) => eval(node, input, missing),
        Node::CmpLit { field, op, lit } => {
            read(field, input, missing).is_some_and(|value| compare(value, *op, lit_view(lit)))
        }
        Node::CmpFields { lhs, op, rhs } => {
            // Both are read (not short-circuited) so that both are reported when missing.
            match (read(lhs, input, missing), read(rhs, input, missing)) {
                (Some(lhs), Some(rhs)) => compare(lhs, *op, rhs),
                _ => false,
            }
        }
        Node::In {
            field,
            list,
            negated,
        } => read(field, input, missing).is_some_and(|value| in_list(value, list) != *negated),
        Node::Truthy(field) => read(field, input, missing).is_some_and(truthy),
        Node::Method { field, test } => {
            read(field, input, missing).is_some_and(|value| string_test(value, test))
        }
    }
}

/// Reads a field, flagging it in `missing` when it is not there.
#[inline]
pub(crate) fn read<'a>(field: &'a Field, input: Input<'a>, missing: &mut u64) -> Option<View<'a>> {
    let value = resolve(field, input);
    if value.is_none() {
        *missing |= field.bit;
    }
    value
}

fn resolve<'a>(field: &'a Field, input: Input<'a>) -> Option<View<'a>> {
    let incident = input.incident;
    let (first, rest) = match &field.root {
        Root::Fact(fact) => return input.facts.fact(fact.query()).map(View::Num),
        // The parser only gives `context` steps.
        Root::Id => return Some(View::Str(&incident.id)),
        Root::Type => return Some(View::Str(&incident.kind)),
        Root::Severity => return Some(View::Num(incident.severity)),
        Root::Timestamp => {
            return Some(incident.timestamp.as_deref().map_or(View::Null, View::Str));
        }
        Root::Context => match field.steps.split_first() {
            None => return Some(View::Object(&incident.context)),
            Some(split) => split,
        },
    };
    let mut value = match first {
        Step::Key(key) => incident.context.get(&**key)?,
        Step::Index(_) => return None,
    };
    for step in rest {
        value = match (step, value) {
            (Step::Key(key), Value::Object(map)) => map.get(&**key)?,
            (Step::Index(index), Value::Array(items)) => items.get(*index)?,
            _ => return None,
        };
    }
    Some(view(value))
}

pub(crate) fn view(value: &Value) -> View<'_> {
    match value {
        Value::Null => View::Null,
        Value::Bool(b) => View::Bool(*b),
        // Without serde_json's `arbitrary_precision` every number has an f64 value; were one not
        // to, NaN makes every comparison with it false, which is the type-mismatch answer.
        Value::Number(n) => View::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => View::Str(s),
        Value::Array(items) => View::Array(items),
        Value::Object(map) => View::Object(map),
    }
}

pub(crate) fn lit_view(lit: &Lit) -> View<'_> {
    match lit {
        Lit::Str(s) => View::Str(s),
        Lit::Num(n) => View::Num(*n),
        Lit::Bool(b) => View::Bool(*b),
        Lit::Null => View::Null,
    }
}

pub(crate) fn compare(lhs: View<'_>, op: CmpOp, rhs: View<'_>) -> bool {
    match op {
        CmpOp::Eq => equal(lhs, rhs),
        CmpOp::Ne => !equal(lhs, rhs),
        CmpOp::Lt => order(lhs, rhs) == Some(Ordering::Less),
        CmpOp::Le => matches!(order(lhs, rhs), Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => order(lhs, rhs) == Some(Ordering::Greater),
        CmpOp::Ge => matches!(order(lhs, rhs), Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// Ordering exists between two numbers or two strings only.
fn order(lhs: View<'_>, rhs: View<'_>) -> Option<Ordering> {
    match (lhs, rhs) {
        (View::Num(a), View::Num(b)) => a.partial_cmp(&b),
        (View::Str(a), View::Str(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Equality with numbers as f64 at every level (so `[1]` equals `[1.0]`); different types are
/// unequal. Recurses as deep as the JSON values compared, not the condition.
fn equal(lhs: View<'_>, rhs: View<'_>) -> bool {
    match (lhs, rhs) {
        (View::Null, View::Null) => true,
        (View::Bool(a), View::Bool(b)) => a == b,
        (View::Num(a), View::Num(b)) => a == b,
        (View::Str(a), View::Str(b)) => a == b,
        (View::Array(a), View::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(view(x), view(y)))
        }
        (View::Object(a), View::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| equal(view(x), view(y))))
        }
        _ => false,
    }
}

pub(crate) fn in_list(value: View<'_>, list: &[Lit]) -> bool {
    list.iter().any(|item| equal(value, lit_view(item)))
}

/// Python truthiness.
pub(crate) fn truthy(value: View<'_>) -> bool {
    match value {
        View::Null => false,
        View::Bool(b) => b,
        View::Num(n) => n != 0.0,
        View::Str(s) => !s.is_empty(),
        View::Array(items) => !items.is_empty(),
        View::Object(map) => !map.is_empty(),
    }
}

fn string_test(value: View<'_>, test: &StrTest) -> bool {
    match (test, value) {
        (StrTest::StartsWith(Lit::Str(prefix)), View::Str(s)) => s.starts_with(&**prefix),
        (StrTest::EndsWith(Lit::Str(suffix)), View::Str(s)) => s.ends_with(&**suffix),
        (StrTest::Contains(Lit::Str(needle)), View::Str(s)) => s.contains(&**needle),
        (StrTest::Contains(item), View::Array(items)) => {
            let item = lit_view(item);
            items.iter().any(|element| equal(view(element), item))
        }
        // The regex keeps its scratch space in a per-thread pool, reused after the first search.
        (StrTest::Matches(regex), View::Str(s)) => regex.is_match(s),
        _ => false,
    }
}
