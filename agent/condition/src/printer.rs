//! Printing a parse tree back to source: the text parses back to the same tree, with only the
//! parentheses the binding strengths need.

use std::fmt;

use super::tree::{CmpOp, Expr, Literal, Operand, Path, Segment};

/// Binding strength of a node when printed; a child weaker than its context gets parentheses.
fn strength(expr: &Expr) -> u8 {
    match expr {
        Expr::Or(items) if items.len() >= 2 => 1,
        Expr::And(items) if items.len() >= 2 => 2,
        Expr::Or(items) | Expr::And(items) => items.first().map_or(4, strength),
        Expr::Not(_) => 3,
        _ => 4,
    }
}

/// Prints `expr`, in parentheses when it binds less tightly than `min`.
fn write_child(f: &mut fmt::Formatter<'_>, expr: &Expr, min: u8) -> fmt::Result {
    if strength(expr) < min {
        write!(f, "({expr})")
    } else {
        write!(f, "{expr}")
    }
}

fn write_chain(
    f: &mut fmt::Formatter<'_>,
    items: &[Expr],
    word: &str,
    own: u8,
    empty: &str,
) -> fmt::Result {
    match items {
        [] => f.write_str(empty),
        [single] => write!(f, "{single}"),
        _ => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {word} ")?;
                }
                // An operand of the same kind must be parenthesised, or it would flatten into
                // this chain.
                write_child(f, item, own + 1)?;
            }
            Ok(())
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => write_chain(f, items, "or", 1, "false"),
            Expr::And(items) => write_chain(f, items, "and", 2, "true"),
            Expr::Not(inner) => {
                f.write_str("not ")?;
                write_child(f, inner, 3)
            }
            Expr::Compare { lhs, op, rhs } => write!(f, "{lhs} {op} {rhs}"),
            Expr::In {
                operand,
                list,
                negated,
            } => {
                write!(f, "{operand} {}in [", if *negated { "not " } else { "" })?;
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Expr::Method { path, method, arg } => write!(f, "{path}.{}({arg})", method.name()),
            Expr::Truthy(operand) => write!(f, "{operand}"),
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Path(path) => write!(f, "{path}"),
            Operand::Literal(literal) => write!(f, "{literal}"),
        }
    }
}

/// Whether `key` can be written as `.key` (otherwise it is written `['key']`).
fn is_plain_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Id => f.write_str("incident.id"),
            Path::Type => f.write_str("incident.type"),
            Path::Severity => f.write_str("incident.severity"),
            Path::Timestamp => f.write_str("incident.timestamp"),
            Path::Context(segments) => {
                f.write_str("incident.context")?;
                for segment in segments {
                    match segment {
                        Segment::Key(key) if is_plain_name(key) => write!(f, ".{key}")?,
                        Segment::Key(key) => write!(f, "[{}]", QuotedStr(key))?,
                        Segment::Index(index) => write!(f, "[{index}]")?,
                    }
                }
                Ok(())
            }
            Path::Fact(fact) => write!(f, "{fact}"),
        }
    }
}

/// Writes a string as a single-quoted literal that the lexer reads back to the same string.
pub(crate) struct QuotedStr<'a>(pub &'a str);

impl fmt::Display for QuotedStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("'")?;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\'' => f.write_str("\\'")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                // Other control characters would be invisible or garble a terminal.
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("'")
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(text) => write!(f, "{}", QuotedStr(text)),
            // Integral values print as integers (`8`, not `8.0`); the rest use `Debug`: the
            // shortest text that reads back to the same f64, with an exponent for very large or
            // small values; both forms are within the number syntax.
            Literal::Num(value) if value.fract() == 0.0 && value.abs() < 1e16 => {
                write!(f, "{value}")
            }
            Literal::Num(value) => write!(f, "{value:?}"),
            Literal::Bool(value) => write!(f, "{value}"),
            Literal::Null => f.write_str("null"),
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        })
    }
}
