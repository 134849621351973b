//! The parse tree of a condition ([`Expr`]) and its parts. Field names are resolved by the parser,
//! so a tree can only name fields an incident has.

/// A condition's parse tree.
///
/// `And` and `Or` are n-ary: a chain `a and b and c` is one node with three operands, while
/// parentheses that group an operation of the same kind (`a and (b and c)`) give a nested node.
/// The parser never builds them with fewer than two operands; [`Display`](std::fmt::Display) prints an empty
/// `And` as `true`, an empty `Or` as `false` and a single operand as itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    /// `lhs op rhs`.
    Compare {
        lhs: Operand,
        op: CmpOp,
        rhs: Operand,
    },
    /// `operand in [..]`, or `operand not in [..]` when `negated`.
    In {
        operand: Operand,
        list: Vec<Literal>,
        negated: bool,
    },
    /// `path.method(arg)`.
    Method {
        path: Path,
        method: Method,
        arg: Literal,
    },
    /// A bare operand in boolean position: Python truthiness.
    Truthy(Operand),
}

/// A value in a comparison: a field or a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Path),
    Literal(Literal),
}

/// A field of the incident, or a fact about the mesh or this node's history. Only `context` has
/// fields below it.
#[derive(Debug, Clone, PartialEq)]
pub enum Path {
    Id,
    Type,
    Severity,
    Timestamp,
    Context(Vec<Segment>),
    Fact(crate::Fact),
}

/// One step below `incident.context`.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// `.name` or `['name']`.
    Key(String),
    /// `[index]`.
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The operator that gives the same answer with the operands swapped (`a < b` is `b > a`).
    pub fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::Ne => CmpOp::Ne,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
        }
    }
}

/// A string test called on a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    StartsWith,
    EndsWith,
    Contains,
    Matches,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::StartsWith => "startswith",
            Method::EndsWith => "endswith",
            Method::Contains => "contains",
            Method::Matches => "matches",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "startswith" => Method::StartsWith,
            "endswith" => Method::EndsWith,
            "contains" => Method::Contains,
            "matches" => Method::Matches,
            _ => return None,
        })
    }
}
