//! The compiler: turns a parse tree into the program [`super::eval`] runs. Everything that can fail
//! or allocate is done here, once: fields are resolved to a root plus pre-split steps, each
//! distinct path (by its text in the source) gets its bit in the missing-field set, regexes are
//! compiled, literals are put on the right of comparisons, and tests on literals alone are folded
//! to constants.

use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

use super::eval;
use super::parser::Parsed;
use super::tree::{CmpOp, Expr, Literal, Method, Operand, Path, Segment};
use super::{ConditionError, MAX_REGEXES, missing_bit};
use crate::Fact;

/// Upper bound on a compiled regex, so that a pathological pattern fails to compile instead of
/// taking the memory and time of the policy store. Far above anything a condition needs.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Upper bound on each regex's lazy DFA cache (the regex crate's default is 2 MiB).
const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub root: Node,
    /// Display name of each distinct path, by index (the index gives the missing bit).
    pub names: Box<[Box<str>]>,
    /// The text of each test (a comparison, `in`, a string test or a bare operand), by the
    /// index its fields carry: what `explain` reports.
    pub clauses: Box<[Box<str>]>,
    /// Whether any field is a mesh or history fact.
    pub uses_facts: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Const(bool),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    Truthy(Field),
    /// `field op literal`: the common shape, kept apart so it needs no dispatch on the right side.
    CmpLit {
        field: Field,
        op: CmpOp,
        lit: Lit,
    },
    CmpFields {
        lhs: Field,
        op: CmpOp,
        rhs: Field,
    },
    In {
        field: Field,
        list: Box<[Lit]>,
        negated: bool,
    },
    Method {
        field: Field,
        test: StrTest,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum StrTest {
    StartsWith(Lit),
    EndsWith(Lit),
    Contains(Lit),
    Matches(Regex),
}

/// A resolved field: where to start and which steps to take below `context`.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub root: Root,
    pub steps: Box<[Step]>,
    /// This path's bit in [`super::Outcome`]'s missing set.
    pub bit: u64,
    /// Index of its display name in [`Program::names`].
    pub index: u32,
    /// Index of the test it is read in, in [`Program::clauses`].
    pub clause: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Root {
    Id,
    Type,
    Severity,
    Timestamp,
    Context,
    /// A mesh or history fact, answered by the evaluator's [`crate::Facts`].
    Fact(Box<Fact>),
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Key(Box<str>),
    Index(usize),
}

#[derive(Debug, Clone)]
pub(crate) enum Lit {
    Str(Box<str>),
    Num(f64),
    Bool(bool),
    Null,
}

impl From<&Literal> for Lit {
    fn from(literal: &Literal) -> Lit {
        match literal {
            Literal::Str(text) => Lit::Str(text.as_str().into()),
            Literal::Num(value) => Lit::Num(*value),
            Literal::Bool(value) => Lit::Bool(*value),
            Literal::Null => Lit::Null,
        }
    }
}

pub(crate) fn compile(source: &str, parsed: Parsed) -> Result<Program, ConditionError> {
    let mut compiler = Compiler {
        source,
        paths: parsed.paths.into_iter(),
        regex_columns: parsed.regex_columns.into_iter(),
        regexes: 0,
        names: Vec::new(),
        index_of: HashMap::new(),
        clauses: Vec::new(),
        uses_facts: false,
    };
    let root = compiler.expr(&parsed.expr)?;
    Ok(Program {
        root,
        names: compiler
            .names
            .into_iter()
            .map(String::into_boxed_str)
            .collect(),
        uses_facts: compiler.uses_facts,
        clauses: compiler
            .clauses
            .into_iter()
            .map(String::into_boxed_str)
            .collect(),
    })
}

/// An operand once resolved.
enum Value {
    Field(Field),
    Lit(Lit),
}

struct Compiler<'a> {
    source: &'a str,
    /// The parser's byte ranges of paths and columns of regexes, consumed in source order, which
    /// is the order [`Compiler::expr`] meets them.
    paths: std::vec::IntoIter<(usize, usize)>,
    regex_columns: std::vec::IntoIter<usize>,
    /// Regexes compiled so far (at most [`MAX_REGEXES`]).
    regexes: usize,
    names: Vec<String>,
    index_of: HashMap<String, usize>,
    clauses: Vec<String>,
    uses_facts: bool,
}

impl Compiler<'_> {
    fn expr(&mut self, expr: &Expr) -> Result<Node, ConditionError> {
        if !matches!(expr, Expr::Or(_) | Expr::And(_) | Expr::Not(_)) {
            // A test: the fields compiled below belong to it.
            self.clauses.push(expr.to_string());
        }
        Ok(match expr {
            Expr::Or(items) => self.chain(items, false, Node::Or)?,
            Expr::And(items) => self.chain(items, true, Node::And)?,
            Expr::Not(inner) => match self.expr(inner)? {
                Node::Const(value) => Node::Const(!value),
                node => Node::Not(Box::new(node)),
            },
            Expr::Compare { lhs, op, rhs } => match (self.operand(lhs), self.operand(rhs)) {
                (Value::Field(field), Value::Lit(lit)) => Node::CmpLit {
                    field,
                    op: *op,
                    lit,
                },
                (Value::Lit(lit), Value::Field(field)) => Node::CmpLit {
                    field,
                    op: op.flipped(),
                    lit,
                },
                (Value::Field(lhs), Value::Field(rhs)) => Node::CmpFields { lhs, op: *op, rhs },
                (Value::Lit(lhs), Value::Lit(rhs)) => Node::Const(eval::compare(
                    eval::lit_view(&lhs),
                    *op,
                    eval::lit_view(&rhs),
                )),
            },
            Expr::In {
                operand,
                list,
                negated,
            } => {
                let list: Box<[Lit]> = list.iter().map(Lit::from).collect();
                match self.operand(operand) {
                    Value::Field(field) => Node::In {
                        field,
                        list,
                        negated: *negated,
                    },
                    Value::Lit(lit) => {
                        Node::Const(eval::in_list(eval::lit_view(&lit), &list) != *negated)
                    }
                }
            }
            Expr::Method { path, method, arg } => {
                let field = self.field(path);
                let arg = Lit::from(arg);
                let test = match method {
                    Method::StartsWith => StrTest::StartsWith(arg),
                    Method::EndsWith => StrTest::EndsWith(arg),
                    Method::Contains => StrTest::Contains(arg),
                    Method::Matches => StrTest::Matches(self.regex(&arg)?),
                };
                Node::Method { field, test }
            }
            Expr::Truthy(operand) => match self.operand(operand) {
                Value::Field(field) => Node::Truthy(field),
                Value::Lit(lit) => Node::Const(eval::truthy(eval::lit_view(&lit))),
            },
        })
    }

    /// `and` (`is_and`) or `or` over `items`. A constant equal to the chain's identity is dropped;
    /// one equal to its absorbing value ends the chain (what follows would never run), but the
    /// operands before it stay, since they still run and may report missing fields. All operands
    /// are compiled so that the positions recorded by the parser stay in step.
    fn chain(
        &mut self,
        items: &[Expr],
        is_and: bool,
        make: fn(Box<[Node]>) -> Node,
    ) -> Result<Node, ConditionError> {
        let mut nodes = Vec::with_capacity(items.len());
        let mut decided = false;
        for item in items {
            let node = self.expr(item)?;
            if decided {
                continue;
            }
            match node {
                Node::Const(value) if value == is_and => {}
                Node::Const(value) => {
                    nodes.push(Node::Const(value));
                    decided = true;
                }
                node => nodes.push(node),
            }
        }
        Ok(if nodes.len() <= 1 {
            nodes.pop().unwrap_or(Node::Const(is_and))
        } else {
            make(nodes.into_boxed_slice())
        })
    }

    fn operand(&mut self, operand: &Operand) -> Value {
        match operand {
            Operand::Path(path) => Value::Field(self.field(path)),
            Operand::Literal(literal) => Value::Lit(literal.into()),
        }
    }

    fn field(&mut self, path: &Path) -> Field {
        // The name as written; should the parser's ranges ever run out, the canonical spelling
        // is still a faithful name.
        let name = match self
            .paths
            .next()
            .and_then(|(start, end)| self.source.get(start..end))
        {
            Some(text) => text.to_string(),
            None => path.to_string(),
        };
        let index = match self.index_of.get(&name) {
            Some(&index) => index,
            None => {
                let index = self.names.len();
                self.index_of.insert(name.clone(), index);
                self.names.push(name);
                index
            }
        };
        let (root, steps) = match path {
            Path::Fact(fact) => {
                self.uses_facts = true;
                (Root::Fact(Box::new(fact.clone())), Box::default())
            }
            Path::Id => (Root::Id, Box::default()),
            Path::Type => (Root::Type, Box::default()),
            Path::Severity => (Root::Severity, Box::default()),
            Path::Timestamp => (Root::Timestamp, Box::default()),
            Path::Context(segments) => (
                Root::Context,
                segments
                    .iter()
                    .map(|segment| match segment {
                        Segment::Key(key) => Step::Key(key.as_str().into()),
                        Segment::Index(index) => Step::Index(*index),
                    })
                    .collect(),
            ),
        };
        Field {
            root,
            steps,
            bit: missing_bit(index),
            index: index as u32,
            clause: self.clauses.len().saturating_sub(1) as u32,
        }
    }

    fn regex(&mut self, pattern: &Lit) -> Result<Regex, ConditionError> {
        let column = self.regex_columns.next().unwrap_or(1);
        let Lit::Str(pattern) = pattern else {
            return Err(ConditionError::new(column, "`.matches(..)` takes a string"));
        };
        self.regexes += 1;
        if self.regexes > MAX_REGEXES {
            return Err(ConditionError::new(
                column,
                format!(
                    "a condition may use at most {MAX_REGEXES} `.matches(..)`; \
                     combine patterns with `|` or split the policy"
                ),
            ));
        }
        RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build()
            .map_err(|error| {
                ConditionError::new(
                    column,
                    format!("invalid regular expression: {}", regex_reason(&error)),
                )
            })
    }
}

/// The regex crate's syntax errors are several lines (pattern, caret, reason); a condition error
/// is one line with its own column, so keep the reason only.
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    let reason = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("");
    reason.strip_prefix("error: ").unwrap_or(reason).to_string()
}
