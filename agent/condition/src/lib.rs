//! Safe, compiled conditions for incident rules: the replacement for the Python `eval()` of a
//! policy's `condition` string.
//!
//! A condition is parsed and compiled once, when its policy is saved ([`Condition::compile`]); each
//! evaluation ([`Condition::eval`]) then walks the compiled program over a borrowed view of the
//! [`Incident`] and allocates nothing. The language has no loops, calls of user code or recursion
//! beyond the expression's own nesting, so every condition terminates; the source is limited to
//! [`MAX_SOURCE_BYTES`] and the nesting (parentheses and `not`) to [`MAX_DEPTH`] levels so that a
//! hostile condition cannot exhaust the stack.
//!
//! # Language
//!
//! ```text
//! condition  = or ;
//! or         = and { ("or" | "||") and } ;
//! and        = not { ("and" | "&&") not } ;
//! not        = ("not" | "!") not | primary ;
//! primary    = "(" or ")" | test ;
//! test       = path "." method "(" literal ")"
//!            | operand [ cmp_op operand | ["not"] "in" list ] ;
//! operand    = path | fact | literal ;
//! path       = "incident" "." ("id" | "type" | "severity" | "timestamp" | "context" { segment }) ;
//! fact       = "mesh" "." "nodes_alive"
//!            | "mesh" "." ("nodes_with" | "fraction_with" | "max_severity") "(" string ")"
//!            | "history" "." "count" "(" string "," window ")"
//!            | "history" "." "last_matched" "(" string ")" ;
//! window     = string of digits and a unit: 's' | 'm' | 'h' | 'd', at most 31 days ;
//! segment    = "." name | "[" string "]" | "[" digits "]" ;      (* segments only under context *)
//! method     = "startswith" | "endswith" | "contains" | "matches" ;
//! cmp_op     = "==" | "!=" | "<" | "<=" | ">" | ">=" ;
//! list       = "[" [ literal { "," literal } [","] ] "]" ;
//! literal    = string | number | "true" | "false" | "null" | "True" | "False" | "None" ;
//! ```
//!
//! `name` is `[A-Za-z_][A-Za-z0-9_]*`, and after a `.` keywords (`in`, `not`, ...) are plain names.
//! Strings take either quote and the escapes `\\ \' \" \n \t \r \u{HEX}`; numbers are
//! `-?digits(.digits)?([eE][+-]?digits)?`. Comparisons bind tighter than `not`, `not` tighter
//! than `and`, `and` tighter than `or` (as in Python); comparisons do not chain (`a < b < c` is
//! an error).
//!
//! # Semantics
//!
//! * A fact is a number the evaluator supplies through [`Facts`] (see [`Fact`] for each one's
//!   meaning); a fact without a value is missing, as a missing field is. Facts have no fields or
//!   methods below them.
//! * `incident.type` is [`Incident::kind`]; `incident.timestamp` is `null` when the incident has
//!   none; `incident.context.<path>` walks the JSON context (`.key`, `['key']`, `[index]`).
//! * Numbers (JSON integers included) compare as `f64`; strings compare lexicographically (by code
//!   point). `==` between values of different types is false and `!=` is true. Ordering (`<` ...)
//!   is defined only between two numbers or two strings; otherwise it is false. Arrays and objects
//!   are equal when their elements are, numbers again compared as `f64`.
//! * A **missing** field — a key not present, an index out of range, or a step through something
//!   that is not an object/array — makes the comparison, `in`, `not in`, string test or
//!   truthiness that reads it false, even `!=` and `not in`; it is never an error. The outcome
//!   records which fields were missing ([`Outcome::any_missing`], [`Condition::missing_fields`]).
//!   A field present with the value `null` is not missing.
//! * `not` negates its operand's boolean, so `not (incident.context.x == 1)` is true when `x` is
//!   missing. `and` and `or` short-circuit: fields in a skipped operand are not read, so they are
//!   not reported missing.
//! * A bare operand in boolean position is Python truthiness: `false`, `null`, `0`, `""`, `[]` and
//!   `{}` are false, everything else true.
//! * `x in [..]` is true when `x` equals (as `==`) some element; `x not in [..]` when it equals
//!   none.
//! * `.startswith(s)`, `.endswith(s)` test a string field; `.contains(v)` is substring search on a
//!   string field and element membership (as `==`) on an array field; `.matches(re)` is an
//!   unanchored [`regex`] search (anchor with `^`/`$`), the regex compiled once at compile time. On
//!   a field of another type these tests are false.

mod compile;
mod eval;
mod explain;
mod facts;
mod incident;
mod lexer;
mod parser;
mod printer;
mod tree;

use std::fmt;

pub use explain::{Clause, Explanation, FieldValue};
pub use facts::{Fact, FactQuery, Facts, MAX_WINDOW_MS, NoFacts, Window};
pub use incident::Incident;
pub use parser::parse;
pub use tree::{CmpOp, Expr, Literal, Method, Operand, Path, Segment};

/// The longest condition source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// The deepest nesting of parentheses and `not` accepted.
pub const MAX_DEPTH: usize = 64;
/// The most `.matches(..)` one condition may use. Each regex may compile to 1 MiB (and its lazy
/// DFA cache grow to 1 MiB more), so this bounds what one condition can hold at 32 MiB.
pub const MAX_REGEXES: usize = 16;

/// A compiled condition. Cheap to evaluate from many threads at once.
#[derive(Clone)]
pub struct Condition {
    source: Box<str>,
    program: compile::Program,
}

impl fmt::Debug for Condition {
    // The compiled program is an implementation detail; the source says what the condition is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Condition {
    /// Parses and compiles `source`: resolves the fields, pre-splits the context paths and compiles
    /// the regexes, so that [`eval`](Self::eval) does no work that could fail or allocate.
    pub fn compile(source: &str) -> Result<Condition, ConditionError> {
        let parsed = parser::parse_spanned(source)?;
        let program = compile::compile(source, parsed)?;
        Ok(Condition {
            source: source.into(),
            program,
        })
    }

    /// The source the condition was compiled from, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition against `incident`, with no mesh or history facts (they are all
    /// missing). Allocates nothing.
    #[inline]
    pub fn eval(&self, incident: &Incident) -> Outcome {
        self.eval_with(incident, &NoFacts)
    }

    /// Evaluates the condition against `incident`, reading mesh and history facts from `facts`.
    /// Allocates nothing (as long as `facts` does not).
    #[inline]
    pub fn eval_with(&self, incident: &Incident, facts: &dyn Facts) -> Outcome {
        let mut missing = 0u64;
        let input = eval::Input { incident, facts };
        let matched = eval::eval(&self.program.root, input, &mut missing);
        Outcome { matched, missing }
    }

    /// Evaluates like [`eval_with`](Self::eval_with) and says why: every test that ran, in order,
    /// with the value of each field and fact it read, and the test that decided the verdict.
    pub fn explain(&self, incident: &Incident, facts: &dyn Facts) -> Explanation {
        explain::explain(&self.program, eval::Input { incident, facts })
    }

    /// Whether the condition reads any mesh or history fact.
    pub fn uses_facts(&self) -> bool {
        self.program.uses_facts
    }

    /// The display names (as written in the source, e.g. "incident.context.load_avg") of the fields
    /// flagged missing in an outcome, in order of first appearance in the source.
    ///
    /// Paths from the 64th distinct one on share the last bit of the outcome: if one of them was
    /// missing, all of them are listed.
    pub fn missing_fields(&self, outcome: Outcome) -> impl Iterator<Item = &str> + '_ {
        self.program
            .names
            .iter()
            .enumerate()
            .filter(move |(index, _)| outcome.missing & missing_bit(*index) != 0)
            .map(|(_, name)| &**name)
    }
}

/// The bit of an [`Outcome`]'s missing set that stands for the path with this index.
#[inline]
pub(crate) fn missing_bit(index: usize) -> u64 {
    1u64 << index.min(63)
}

/// The result of one evaluation: whether the condition matched, and which fields were missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the condition holds for the incident.
    pub matched: bool,
    /// Bit `i` is set when the path with index `i` (see [`missing_bit`]) was read and missing.
    missing: u64,
}

impl Outcome {
    /// The outcome of a test that reads no fields of its own (e.g. a Rego rule).
    #[inline]
    pub fn from_match(matched: bool) -> Outcome {
        Outcome {
            matched,
            missing: 0,
        }
    }

    /// Whether any field read during the evaluation was missing.
    #[inline]
    pub fn any_missing(&self) -> bool {
        self.missing != 0
    }
}

/// Why a condition did not parse or compile, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ConditionError {
    /// 1-based column, counted in chars, of the place the problem was found.
    pub column: usize,
    /// What was wrong, in words meant for the author of the condition.
    pub message: String,
}

impl ConditionError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Self {
        ConditionError {
            column,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;
