//! Rego text again from regorus's parsed AST, with every name resolved the way its module
//! resolves it: a rule of the module's package (`allow`) becomes its full path
//! (`data.example.authz.allow`), an import alias its imported path, while local variables and
//! builtin names stay as written. The known statements of a body are evaluated by regorus as one
//! ad-hoc query written this way, outside the module they came from.
//!
//! No value is ever written into the text: known values reach the evaluator as the bindings of
//! that query, so the text costs what the module's own text cost to parse.

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;
use regorus::unstable::{ArithOp, AssignOp, BinOp, BoolOp, Expr, Literal, LiteralStmt, Query};

use super::residual::is_identifier;
use crate::rego::bindings::{pattern_vars, statement_vars};

/// How names resolve in one module (or in the top-level query, which has no package).
#[derive(Debug, Default, Clone)]
pub(super) struct ModuleNames {
    /// `["data", "example", "authz"]`; empty for the top-level query.
    pub package: Vec<String>,
    /// Import aliases: `b` (from `import data.a.b`) -> `["data", "a", "b"]`.
    pub aliases: BTreeMap<String, Vec<String>>,
    /// The first name of every rule head in the package (`allow`, `a` for `a.b.c := 1`).
    pub rules: BTreeSet<String>,
}

/// Names in scope while walking one body: the module's, and the variables declared so far.
pub(super) struct Scope<'a> {
    pub names: &'a ModuleNames,
    locals: Vec<BTreeSet<String>>,
}

/// What a bare name means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Name {
    /// A variable of the body (declared, or bound by unification or iteration).
    Local,
    /// A document: `input`, `data`, a rule, an import.
    Path(Vec<String>),
}

impl<'a> Scope<'a> {
    pub fn new(names: &'a ModuleNames) -> Scope<'a> {
        Scope {
            names,
            locals: vec![BTreeSet::new()],
        }
    }

    pub fn declare(&mut self, name: &str) {
        if let Some(scope) = self.locals.last_mut() {
            scope.insert(name.to_owned());
        }
    }

    pub fn push(&mut self) {
        self.locals.push(BTreeSet::new());
    }

    pub fn pop(&mut self) {
        self.locals.pop();
    }

    pub fn resolve(&self, name: &str) -> Name {
        if self.locals.iter().any(|scope| scope.contains(name)) {
            return Name::Local;
        }
        if name == "input" || name == "data" {
            return Name::Path(vec![name.to_owned()]);
        }
        if let Some(path) = self.names.aliases.get(name) {
            return Name::Path(path.clone());
        }
        if self.names.rules.contains(name) {
            let mut path = self.names.package.clone();
            path.push(name.to_owned());
            return Name::Path(path);
        }
        Name::Local
    }

    /// Declares what a pattern binds (`x`, `[x, y]`).
    pub fn bind(&mut self, pattern: &Expr) {
        pattern_vars(pattern, &mut |name| self.declare(name));
    }

    /// Declares the variables a query's own statements declare (`some`, `:=`, `some ... in`).
    pub fn declare_locals(&mut self, query: &Query) {
        self.declare_stmts(&query.stmts)
    }

    pub fn declare_stmts(&mut self, stmts: &[LiteralStmt]) {
        statement_vars(stmts, false, &mut |name| self.declare(name));
    }
}

/// `["data", "a", "b-c"]` -> `data.a["b-c"]`.
pub(super) fn path_text(path: &[String]) -> String {
    let mut out = String::new();
    for (i, part) in path.iter().enumerate() {
        if i == 0 {
            out.push_str(part);
        } else if is_identifier(part) {
            out.push('.');
            out.push_str(part);
        } else {
            out.push('[');
            out.push_str(&serde_json::Value::from(part.as_str()).to_string());
            out.push(']');
        }
    }
    out
}

/// Writes Rego text; records the local variables it writes (they are bound by the query).
pub(super) struct Writer<'s, 'a> {
    pub scope: &'s mut Scope<'a>,
    pub out: String,
    pub locals_seen: BTreeSet<String>,
}

impl<'s, 'a> Writer<'s, 'a> {
    pub fn new(scope: &'s mut Scope<'a>) -> Writer<'s, 'a> {
        Writer {
            scope,
            out: String::new(),
            locals_seen: BTreeSet::new(),
        }
    }

    pub fn stmt(&mut self, stmt: &LiteralStmt) {
        match &stmt.literal {
            Literal::SomeVars { vars, .. } => {
                self.out.push_str("some ");
                for (i, var) in vars.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.out.push_str(var.text());
                    self.locals_seen.insert(var.text().to_owned());
                }
            }
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                self.out.push_str("some ");
                if let Some(key) = key {
                    self.expr(key, false);
                    self.out.push_str(", ");
                }
                self.expr(value, false);
                self.out.push_str(" in ");
                self.expr(collection, true);
            }
            Literal::Expr { expr, .. } => self.expr(expr, false),
            Literal::NotExpr { expr, .. } => {
                self.out.push_str("not ");
                self.expr(expr, false);
            }
            Literal::Every {
                key,
                value,
                domain,
                query,
                ..
            } => {
                self.out.push_str("every ");
                if let Some(key) = key {
                    self.out.push_str(key.text());
                    self.out.push_str(", ");
                }
                self.out.push_str(value.text());
                self.out.push_str(" in ");
                self.expr(domain, true);
                self.scope.push();
                if let Some(key) = key {
                    self.scope.declare(key.text());
                }
                self.scope.declare(value.text());
                self.out.push_str(" { ");
                self.query(query);
                self.out.push_str(" }");
                self.scope.pop();
            }
        }
        for with in &stmt.with_mods {
            self.out.push_str(" with ");
            self.expr(&with.refr, true);
            self.out.push_str(" as ");
            self.expr(&with.r#as, true);
        }
    }

    /// A nested query (comprehension, `every`): its own scope.
    fn query(&mut self, query: &Query) {
        self.scope.push();
        self.scope.declare_locals(query);
        for (i, stmt) in query.stmts.iter().enumerate() {
            if i > 0 {
                self.out.push_str("; ");
            }
            self.stmt(stmt);
        }
        self.scope.pop();
    }

    fn name(&mut self, name: &str) {
        match self.scope.resolve(name) {
            Name::Local => {
                self.out.push_str(name);
                self.locals_seen.insert(name.to_owned());
            }
            Name::Path(path) => self.out.push_str(&path_text(&path)),
        }
    }

    /// `nested`: the expression is an operand, so infix expressions get parentheses.
    pub fn expr(&mut self, expr: &Expr, nested: bool) {
        match expr {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                self.out.push_str(&json(value))
            }
            Expr::Number { span, .. } => self.out.push_str(span.text()),
            Expr::Bool { value, .. } | Expr::Null { value, .. } => self.out.push_str(&json(value)),
            Expr::Var { value, .. } => match value.as_string() {
                Ok(name) => self.name(name.as_ref()),
                Err(_) => self.out.push_str(&json(value)),
            },
            Expr::Array { items, .. } => {
                self.out.push('[');
                self.list(items);
                self.out.push(']');
            }
            Expr::Set { items, .. } => {
                if items.is_empty() {
                    self.out.push_str("set()");
                } else {
                    self.out.push('{');
                    self.list(items);
                    self.out.push('}');
                }
            }
            Expr::Object { fields, .. } => {
                self.out.push('{');
                for (i, (_, key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.expr(key, true);
                    self.out.push_str(": ");
                    self.expr(value, true);
                }
                self.out.push('}');
            }
            Expr::ArrayCompr { term, query, .. } => {
                self.comprehension('[', ']', |w| w.expr(term, true), query)
            }
            Expr::SetCompr { term, query, .. } => {
                self.comprehension('{', '}', |w| w.expr(term, true), query)
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => self.comprehension(
                '{',
                '}',
                |w| {
                    w.expr(key, true);
                    w.out.push_str(": ");
                    w.expr(value, true);
                },
                query,
            ),
            Expr::Call { fcn, params, .. } => {
                self.function(fcn);
                self.out.push('(');
                self.list(params);
                self.out.push(')');
            }
            Expr::UnaryExpr { expr, .. } => {
                self.out.push_str("-(");
                self.expr(expr, false);
                self.out.push(')');
            }
            Expr::RefDot { refr, field, .. } => {
                self.expr(refr, true);
                match field.1.as_string() {
                    Ok(name) if is_identifier(name) => {
                        self.out.push('.');
                        self.out.push_str(name);
                    }
                    _ => {
                        self.out.push('[');
                        self.out.push_str(&json(&field.1));
                        self.out.push(']');
                    }
                }
            }
            Expr::RefBrack { refr, index, .. } => {
                self.expr(refr, true);
                self.out.push('[');
                self.expr(index, false);
                self.out.push(']');
            }
            Expr::BinExpr { op, lhs, rhs, .. } => {
                let op = match op {
                    BinOp::Union => "|",
                    BinOp::Intersection => "&",
                };
                self.infix(lhs, op, rhs, nested)
            }
            Expr::BoolExpr { op, lhs, rhs, .. } => {
                let op = match op {
                    BoolOp::Lt => "<",
                    BoolOp::Le => "<=",
                    BoolOp::Eq => "==",
                    BoolOp::Ge => ">=",
                    BoolOp::Gt => ">",
                    BoolOp::Ne => "!=",
                };
                self.infix(lhs, op, rhs, nested)
            }
            Expr::ArithExpr { op, lhs, rhs, .. } => {
                let op = match op {
                    ArithOp::Add => "+",
                    ArithOp::Sub => "-",
                    ArithOp::Mul => "*",
                    ArithOp::Div => "/",
                    ArithOp::Mod => "%",
                };
                self.infix(lhs, op, rhs, nested)
            }
            Expr::AssignExpr { op, lhs, rhs, .. } => {
                let op = match op {
                    AssignOp::Eq => "=",
                    AssignOp::ColEq => ":=",
                };
                self.infix(lhs, op, rhs, nested)
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if nested {
                    self.out.push('(');
                }
                if let Some(key) = key {
                    self.expr(key, true);
                    self.out.push_str(", ");
                }
                self.expr(value, true);
                self.out.push_str(" in ");
                self.expr(collection, true);
                if nested {
                    self.out.push(')');
                }
            }
        }
    }

    fn list(&mut self, items: &[regorus::unstable::Ref<Expr>]) {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.expr(item, true);
        }
    }

    fn infix(&mut self, lhs: &Expr, op: &str, rhs: &Expr, nested: bool) {
        if nested {
            self.out.push('(');
        }
        self.expr(lhs, true);
        self.out.push(' ');
        self.out.push_str(op);
        self.out.push(' ');
        self.expr(rhs, true);
        if nested {
            self.out.push(')');
        }
    }

    fn comprehension(
        &mut self,
        open: char,
        close: char,
        head: impl FnOnce(&mut Self),
        query: &Query,
    ) {
        self.out.push(open);
        self.scope.push();
        self.scope.declare_locals(query);
        head(self);
        self.out.push_str(" | ");
        for (i, stmt) in query.stmts.iter().enumerate() {
            if i > 0 {
                self.out.push_str("; ");
            }
            self.stmt(stmt);
        }
        self.scope.pop();
        self.out.push(close);
    }

    /// A called function: a rule of the package or an import by its path, a builtin as written.
    fn function(&mut self, fcn: &Expr) {
        if let Some(path) = static_ref(fcn)
            && let Some(first) = path.first()
            && let Name::Path(root) = self.scope.resolve(first)
        {
            let mut full = root;
            full.extend(path[1..].iter().cloned());
            self.out.push_str(&path_text(&full));
            return;
        }
        self.out.push_str(fcn.span().text());
    }
}

/// `a.b.c` (dots only, as function names are written) -> `["a", "b", "c"]`.
pub(super) fn static_ref(expr: &Expr) -> Option<Vec<String>> {
    match expr {
        Expr::Var { value, .. } => Some(vec![value.as_string().ok()?.to_string()]),
        Expr::RefDot { refr, field, .. } => {
            let mut path = static_ref(refr)?;
            path.push(field.1.as_string().ok()?.to_string());
            Some(path)
        }
        Expr::RefBrack { refr, index, .. } => match index.as_ref() {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                let mut path = static_ref(refr)?;
                path.push(value.as_string().ok()?.to_string());
                Some(path)
            }
            _ => None,
        },
        _ => None,
    }
}

fn json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}
