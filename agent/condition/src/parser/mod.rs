//! The recursive-descent parser that builds a parse tree ([`Expr`]) from tokens. Field names are
//! resolved here (an unknown field is a parse error), so a tree can only name fields an incident
//! has.

mod fact;

use super::lexer::{Tok, Token, describe, lex};
use super::tree::{Expr, Literal, Method, Operand, Path, Segment};
use super::{ConditionError, MAX_DEPTH, MAX_SOURCE_BYTES};

pub fn parse(source: &str) -> Result<Expr, ConditionError> {
    parse_spanned(source).map(|parsed| parsed.expr)
}

/// A parse tree plus the source positions the compiler needs, each list in source order (which is
/// the order a left-to-right walk of the tree meets the nodes).
pub(crate) struct Parsed {
    pub expr: Expr,
    /// Byte range of every path (method calls excluded), for the display names of missing fields.
    pub paths: Vec<(usize, usize)>,
    /// Column of the argument of every `.matches(..)`, for regex errors.
    pub regex_columns: Vec<usize>,
}

pub(crate) fn parse_spanned(source: &str) -> Result<Parsed, ConditionError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(ConditionError::new(
            1,
            format!(
                "the condition is {} bytes long; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
        ));
    }
    let tokens = lex(source)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        paths: Vec::new(),
        regex_columns: Vec::new(),
    };
    if matches!(parser.peek().tok, Tok::Eof) {
        return Err(parser.error_here("expected a condition, found end of input"));
    }
    let expr = parser.or(0)?;
    let next = parser.peek();
    if !matches!(next.tok, Tok::Eof) {
        let message = match &next.tok {
            Tok::RParen => "found `)` without a matching `(`".to_string(),
            tok => format!(
                "expected `and`, `or` or end of input, found {}{}",
                describe(tok),
                keyword_hint(tok)
            ),
        };
        return Err(parser.error_here(message));
    }
    Ok(Parsed {
        expr,
        paths: parser.paths,
        regex_columns: parser.regex_columns,
    })
}

const KEYWORDS: [&str; 4] = ["and", "or", "not", "in"];

/// A hint for `AND`, `Or`, ...: keywords are lowercase.
fn keyword_hint(tok: &Tok<'_>) -> String {
    match tok {
        Tok::Word(word)
            if !KEYWORDS.contains(word)
                && KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) =>
        {
            format!(" (keywords are lowercase: `{}`)", word.to_ascii_lowercase())
        }
        _ => String::new(),
    }
}

/// A value, or a method call, which is a test by itself.
enum Term {
    Operand(Operand),
    Call {
        path: Path,
        method: Method,
        arg: Literal,
        col: usize,
    },
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
    paths: Vec<(usize, usize)>,
    regex_columns: Vec<usize>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Token<'a> {
        self.peek_at(0)
    }

    /// The token `ahead` places on; past the end this is the final `Eof`.
    fn peek_at(&self, ahead: usize) -> &Token<'a> {
        let last = self.tokens.len().saturating_sub(1);
        &self.tokens[(self.pos + ahead).min(last)]
    }

    fn advance(&mut self) -> Token<'a> {
        let token = self.peek().clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    fn error_here(&self, message: impl Into<String>) -> ConditionError {
        ConditionError::new(self.peek().col, message)
    }

    fn expected(&self, what: &str) -> ConditionError {
        let tok = &self.peek().tok;
        let quote_hint = match tok {
            Tok::Word(word) if !KEYWORDS.contains(word) && *word != "incident" => {
                format!(" (a string needs quotes: '{word}')")
            }
            _ => String::new(),
        };
        self.error_here(format!(
            "expected {what}, found {}{quote_hint}",
            describe(tok)
        ))
    }

    fn at_word(&self, word: &str) -> bool {
        self.peek().tok == Tok::Word(word)
    }

    fn at_or(&self) -> bool {
        self.at_word("or") || self.peek().tok == Tok::OrSym
    }

    fn at_and(&self) -> bool {
        self.at_word("and") || self.peek().tok == Tok::AndSym
    }

    fn at_not(&self) -> bool {
        self.at_word("not") || self.peek().tok == Tok::Bang
    }

    fn check_depth(&self, depth: usize) -> Result<(), ConditionError> {
        if depth >= MAX_DEPTH {
            return Err(self.error_here(format!(
                "the condition nests too deeply: at most {MAX_DEPTH} levels of parentheses and `not`"
            )));
        }
        Ok(())
    }

    /// `or = and { "or" and }`; `depth` counts the enclosing parentheses and `not`s.
    fn or(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let first = self.and(depth)?;
        if !self.at_or() {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.at_or() {
            self.advance();
            items.push(self.and(depth)?);
        }
        Ok(Expr::Or(items))
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let first = self.not(depth)?;
        if !self.at_and() {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.at_and() {
            self.advance();
            items.push(self.not(depth)?);
        }
        Ok(Expr::And(items))
    }

    fn not(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        if self.at_not() {
            self.check_depth(depth)?;
            self.advance();
            return Ok(Expr::Not(Box::new(self.not(depth + 1)?)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        if self.peek().tok != Tok::LParen {
            return self.test();
        }
        self.check_depth(depth)?;
        let open = self.advance();
        let inner = self.or(depth + 1)?;
        if self.peek().tok != Tok::RParen {
            let found = describe(&self.peek().tok);
            return Err(self.error_here(format!(
                "expected `and`, `or` or `)` closing the `(` at column {}, found {found}",
                open.col
            )));
        }
        self.advance();
        Ok(inner)
    }

    /// A comparison, `in` test, method call or bare operand.
    fn test(&mut self) -> Result<Expr, ConditionError> {
        let lhs = match self.term("a condition", true)? {
            Term::Operand(operand) => operand,
            Term::Call {
                path,
                method,
                arg,
                col,
            } => {
                if matches!(self.peek().tok, Tok::Cmp(_)) || self.at_word("in") {
                    return Err(ConditionError::new(
                        col,
                        format!(
                            "`.{}(..)` is a test by itself; it cannot be compared",
                            method.name()
                        ),
                    ));
                }
                return Ok(Expr::Method { path, method, arg });
            }
        };
        match self.peek().tok.clone() {
            Tok::Cmp(op) => {
                self.advance();
                let rhs = self.operand(&format!("a value after `{op}`"))?;
                if let Tok::Cmp(second) = self.peek().tok {
                    return Err(self.error_here(format!(
                        "comparisons cannot be chained: write `a {op} b and b {second} c`, not `a {op} b {second} c`"
                    )));
                }
                Ok(Expr::Compare { lhs, op, rhs })
            }
            Tok::Word("in") => {
                self.advance();
                let list = self.list()?;
                Ok(Expr::In {
                    operand: lhs,
                    list,
                    negated: false,
                })
            }
            Tok::Word("not") if self.peek_at(1).tok == Tok::Word("in") => {
                self.advance();
                self.advance();
                let list = self.list()?;
                Ok(Expr::In {
                    operand: lhs,
                    list,
                    negated: true,
                })
            }
            Tok::Word("not") => {
                self.advance();
                Err(self.expected("`in` after `not`"))
            }
            Tok::Word("is") => {
                Err(self.error_here("`is` is not supported; use `==` (or `!=` for `is not`)"))
            }
            _ => Ok(Expr::Truthy(lhs)),
        }
    }

    /// An operand where a method call is not allowed (the right of a comparison).
    fn operand(&mut self, what: &str) -> Result<Operand, ConditionError> {
        match self.term(what, false)? {
            Term::Operand(operand) => Ok(operand),
            // `term` only returns calls when they are allowed.
            Term::Call { col, method, .. } => Err(ConditionError::new(
                col,
                format!(
                    "`.{}(..)` is a test by itself; it cannot be compared",
                    method.name()
                ),
            )),
        }
    }

    fn term(&mut self, what: &str, allow_call: bool) -> Result<Term, ConditionError> {
        if let Some(literal) = literal_of(&self.peek().tok) {
            self.advance();
            return Ok(Term::Operand(Operand::Literal(literal)));
        }
        match self.peek().tok {
            Tok::Word("incident") => self.path(allow_call),
            Tok::Word("mesh" | "history") => self.fact(),
            Tok::Word(word) if !KEYWORDS.contains(&word) && keyword_hint(&Tok::Word(word)).is_empty() => {
                Err(self.error_here(format!(
                    "unknown name `{word}`: a field starts with `incident.` (e.g. `incident.type`), a fact with `mesh.` or `history.`, and a string needs quotes ('{word}')"
                )))
            }
            ref tok => {
                let hint = keyword_hint(tok);
                Err(self.error_here(format!("expected {what}, found {}{hint}", describe(tok))))
            }
        }
    }

    /// `incident.field{segment}`, possibly followed by `.method(literal)`.
    fn path(&mut self, allow_call: bool) -> Result<Term, ConditionError> {
        let root = self.advance();
        if self.peek().tok != Tok::Dot {
            return Err(ConditionError::new(
                root.col,
                "`incident` is not a value by itself; name one of its fields: incident.id, incident.type, \
                 incident.severity, incident.timestamp or incident.context",
            ));
        }
        self.advance();
        let Tok::Word(name) = self.peek().tok else {
            return Err(self.expected("a field name after `incident.`"));
        };
        let field = self.advance();
        let mut path = match name {
            "id" => Path::Id,
            "type" => Path::Type,
            "severity" => Path::Severity,
            "timestamp" => Path::Timestamp,
            "context" => Path::Context(Vec::new()),
            _ => {
                let hint = if name == "kind" {
                    " (the kind is `incident.type`)"
                } else {
                    ""
                };
                return Err(ConditionError::new(
                    root.col,
                    format!(
                        "unknown field `incident.{name}`; an incident has id, type, severity, timestamp, context{hint}"
                    ),
                ));
            }
        };
        let mut end = field.end;
        loop {
            match self.peek().tok {
                Tok::Dot => {
                    let Tok::Word(key) = self.peek_at(1).tok else {
                        self.advance();
                        return Err(self.expected("a field name after `.`"));
                    };
                    if self.peek_at(2).tok == Tok::LParen {
                        self.paths.push((root.start, end));
                        return self.call(path, allow_call);
                    }
                    self.advance();
                    let key_token = self.advance();
                    push_segment(&mut path, Segment::Key(key.to_string()), key_token.col)?;
                    end = key_token.end;
                }
                Tok::LBracket => {
                    let open = self.advance();
                    let segment = match &self.peek().tok {
                        Tok::Str(key) => Segment::Key(key.clone()),
                        Tok::Num { raw, .. } if raw.bytes().all(|b| b.is_ascii_digit()) => {
                            let index = raw.parse().map_err(|_| {
                                self.error_here(format!("the index {raw} is too large"))
                            })?;
                            Segment::Index(index)
                        }
                        _ => {
                            return Err(self.expected(
                                "a quoted key or a non-negative integer index inside `[..]`",
                            ));
                        }
                    };
                    self.advance();
                    if self.peek().tok != Tok::RBracket {
                        return Err(self.expected("`]`"));
                    }
                    end = self.advance().end;
                    push_segment(&mut path, segment, open.col)?;
                }
                _ => break,
            }
        }
        self.paths.push((root.start, end));
        Ok(Term::Operand(Operand::Path(path)))
    }

    /// `.method(literal)`, positioned on the `.`.
    fn call(&mut self, path: Path, allow_call: bool) -> Result<Term, ConditionError> {
        self.advance();
        let name_token = self.advance();
        let Tok::Word(name) = name_token.tok else {
            return Err(ConditionError::new(
                name_token.col,
                "expected a method name",
            ));
        };
        let Some(method) = Method::from_name(name) else {
            return Err(ConditionError::new(
                name_token.col,
                format!(
                    "unknown method `{name}`; a field has startswith, endswith, contains and matches"
                ),
            ));
        };
        if !allow_call {
            return Err(ConditionError::new(
                name_token.col,
                format!("`.{name}(..)` is a test by itself; it cannot be compared"),
            ));
        }
        self.advance(); // `(`
        let arg_token = self.peek().clone();
        let wants_string = method != Method::Contains;
        let arg = match literal_of(&arg_token.tok) {
            Some(literal @ Literal::Str(_)) => literal,
            Some(literal) if !wants_string => literal,
            _ if wants_string => {
                return Err(self.expected(&format!(
                    "a string literal as the argument of `.{name}(..)`"
                )));
            }
            _ => return Err(self.expected(&format!("a literal as the argument of `.{name}(..)`"))),
        };
        self.advance();
        match self.peek().tok {
            Tok::RParen => {}
            Tok::Comma => {
                return Err(self.error_here(format!("`.{name}(..)` takes exactly one argument")));
            }
            _ => return Err(self.expected(&format!("`)` after the argument of `.{name}(`"))),
        }
        self.advance();
        if method == Method::Matches {
            self.regex_columns.push(arg_token.col);
        }
        Ok(Term::Call {
            path,
            method,
            arg,
            col: name_token.col,
        })
    }

    /// `[ literal, ... ]` after `in`.
    fn list(&mut self) -> Result<Vec<Literal>, ConditionError> {
        if self.peek().tok != Tok::LBracket {
            return Err(
                self.expected("`[` after `in` (`in` takes a list of literals such as ['a', 'b'])")
            );
        }
        self.advance();
        let mut items = Vec::new();
        loop {
            if self.peek().tok == Tok::RBracket {
                self.advance();
                return Ok(items);
            }
            let Some(literal) = literal_of(&self.peek().tok) else {
                return Err(
                    self.expected("a literal (a string, number, true, false or null) in the list")
                );
            };
            self.advance();
            items.push(literal);
            match self.peek().tok {
                Tok::Comma => {
                    self.advance();
                }
                Tok::RBracket => {}
                _ => return Err(self.expected("`,` or `]` in the list")),
            }
        }
    }
}

/// Adds a step below a path; only `incident.context` has steps.
fn push_segment(path: &mut Path, segment: Segment, col: usize) -> Result<(), ConditionError> {
    match path {
        Path::Context(segments) => {
            segments.push(segment);
            Ok(())
        }
        other => Err(ConditionError::new(
            col,
            format!("`{other}` has no fields below it; only `incident.context` has"),
        )),
    }
}

fn literal_of(tok: &Tok<'_>) -> Option<Literal> {
    Some(match tok {
        Tok::Str(text) => Literal::Str(text.clone()),
        Tok::Num { value, .. } => Literal::Num(*value),
        Tok::Word("true" | "True") => Literal::Bool(true),
        Tok::Word("false" | "False") => Literal::Bool(false),
        Tok::Word("null" | "None") => Literal::Null,
        _ => return None,
    })
}
