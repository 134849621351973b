//! Explaining a verdict: the same evaluation as [`super::eval`], walked with a notebook. It runs
//! only when a caller asks (`POST /evaluate?explain=true`), so it may allocate.
//!
//! The test that *decided* the verdict is the last one evaluated: `and` and `or` short-circuit, so
//! the walk stops exactly when the outcome is known, and the last test read is the one that
//! settled it (the first false test of a failing `and`, the first true one of a passing `or`).

use serde::Serialize;

use super::compile::{Field, Node, Program};
use super::eval::{self, Input, View};

/// Why a condition matched or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub matched: bool,
    /// The test that decided the verdict (`true`/`false` when a constant did).
    pub decided_by: Option<String>,
    /// Every test evaluated, in evaluation order.
    pub clauses: Vec<Clause>,
    /// Fields and facts that were read and had no value.
    pub missing: Vec<String>,
}

/// One test as it was evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clause {
    pub text: String,
    pub result: bool,
    /// What each field or fact the test read held.
    pub values: Vec<FieldValue>,
}

/// A field or fact and what it held (`None`: missing).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldValue {
    pub name: String,
    pub value: Option<serde_json::Value>,
    /// Whether it is a mesh or history fact rather than an incident field.
    pub fact: bool,
}

pub(crate) fn explain(program: &Program, input: Input<'_>) -> Explanation {
    let mut notes = Notes {
        program,
        clauses: Vec::new(),
        missing: 0,
    };
    let matched = notes.walk(&program.root, input);
    let decided_by = notes.clauses.last().map(|clause| clause.text.clone());
    let missing = program
        .names
        .iter()
        .enumerate()
        .filter(|(index, _)| notes.missing & super::missing_bit(*index) != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    Explanation {
        matched,
        decided_by,
        clauses: notes.clauses,
        missing,
    }
}

struct Notes<'p> {
    program: &'p Program,
    clauses: Vec<Clause>,
    missing: u64,
}

impl Notes<'_> {
    /// Mirrors [`eval::eval`]'s short-circuits; every test goes through [`eval::test`].
    fn walk(&mut self, node: &Node, input: Input<'_>) -> bool {
        match node {
            // A constant left in a chain is the value that settles it (the compiler drops the
            // others): it decides.
            Node::Const(value) => {
                self.clauses.push(Clause {
                    text: value.to_string(),
                    result: *value,
                    values: Vec::new(),
                });
                *value
            }
            Node::And(items) => items.iter().all(|item| self.walk(item, input)),
            Node::Or(items) => items.iter().any(|item| self.walk(item, input)),
            Node::Not(inner) => !self.walk(inner, input),
            leaf => {
                let result = eval::test(leaf, input, &mut self.missing);
                let fields = leaf_fields(leaf);
                let clause = fields
                    .first()
                    .and_then(|field| self.program.clauses.get(field.clause as usize))
                    .map_or_else(String::new, |text| text.to_string());
                let values = fields
                    .iter()
                    .map(|field| {
                        let mut ignored = 0;
                        FieldValue {
                            name: self
                                .program
                                .names
                                .get(field.index as usize)
                                .map_or_else(String::new, |name| name.to_string()),
                            value: eval::read(field, input, &mut ignored).map(to_json),
                            fact: matches!(field.root, super::compile::Root::Fact(_)),
                        }
                    })
                    .collect();
                self.clauses.push(Clause {
                    text: clause,
                    result,
                    values,
                });
                result
            }
        }
    }
}

fn leaf_fields(node: &Node) -> Vec<&Field> {
    match node {
        Node::CmpLit { field, .. }
        | Node::In { field, .. }
        | Node::Truthy(field)
        | Node::Method { field, .. } => vec![field],
        Node::CmpFields { lhs, rhs, .. } => vec![lhs, rhs],
        Node::Const(_) | Node::And(_) | Node::Or(_) | Node::Not(_) => Vec::new(),
    }
}

fn to_json(view: View<'_>) -> serde_json::Value {
    match view {
        View::Null => serde_json::Value::Null,
        View::Bool(b) => serde_json::Value::Bool(b),
        View::Num(n) => serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, Into::into),
        View::Str(s) => serde_json::Value::String(s.to_owned()),
        View::Array(items) => serde_json::Value::Array(items.to_vec()),
        View::Object(map) => serde_json::Value::Object(map.clone()),
    }
}
