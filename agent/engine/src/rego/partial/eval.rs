//! The partial evaluator: a body's statements split into the known ones, which regorus
//! evaluates (all of them, as one ad-hoc query, with every known operand of the other statements
//! bound to a variable of that query), and the ones that read unknowns, which become residual
//! expressions with those operands' values in place. Each solution of the known query is one
//! residual query; a rule that reads unknowns is inlined where it is used, one alternative per
//! body (OR), and its alternatives multiply with the rest of the body.
//!
//! What it cannot do exactly it refuses, naming the construct and where it is, rather than
//! answering something else: iteration over an unknown collection, unknowns inside calls other
//! than the comparisons and `startswith`/`endswith`/`contains`, `not` over a rule that reads
//! unknowns, `else`, partial set and object rules, functions whose bodies read unknowns, and a
//! `default` value that could decide the question (it would need the negation of every body).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Instant;

use regorus::Value;
use regorus::unstable::{AssignOp, Expr, Literal, LiteralStmt, Span};

use super::deps::to_values;
use super::inline::Inlined;
use super::render::{ModuleNames, Name, Scope, Writer, path_text};
use super::residual::{Residual, Term};
use super::rules::Rules;
use super::template::{Build, Side, Tpl, fill};
use super::{MAX_EVALUATIONS, MAX_RESIDUAL_QUERIES, PartialError};
use crate::rego::{EvalError, Location, RegoSet, parse_cost};

/// A body's value, as its rule head gives it.
#[derive(Clone, Copy)]
pub(super) enum HeadValue<'e> {
    /// The top-level query: no value.
    None,
    /// `rule if ...`.
    True,
    Expr(&'e Expr),
}

/// One way a body holds.
pub(super) struct BodyOut {
    pub residuals: Vec<Residual>,
    pub value: Option<Term>,
}

pub(super) struct Evaluator<'a> {
    set: &'a RegoSet,
    pub(super) rules: &'a Rules,
    engine: regorus::Engine,
    pub(super) unknowns: Vec<Vec<Value>>,
    started: Instant,
    /// Whether each rule reads unknowns, as found.
    pub(super) dep: HashMap<Vec<String>, bool>,
    pub(super) visiting: BTreeSet<Vec<String>>,
    pub(super) inlined: HashMap<Vec<String>, Rc<Inlined>>,
    pub(super) depth: usize,
    evaluations: usize,
}

pub(super) fn location(span: &Span) -> Location {
    Location {
        file: span.source.get_path().clone(),
        row: span.line,
        col: span.col,
    }
}

/// Where an expression starts (regorus's spans of references, calls and infix expressions start
/// at their `.`, `[`, `(` or operator).
pub(super) fn start(expr: &Expr) -> &Span {
    match expr {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => start(refr),
        Expr::Call { fcn, .. } => start(fcn),
        Expr::BinExpr { lhs, .. }
        | Expr::BoolExpr { lhs, .. }
        | Expr::ArithExpr { lhs, .. }
        | Expr::AssignExpr { lhs, .. } => start(lhs),
        Expr::Membership { key: Some(key), .. } => start(key),
        Expr::Membership { value, .. } => start(value),
        other => other.span(),
    }
}

pub(super) fn unsupported(construct: impl Into<String>, span: &Span) -> PartialError {
    PartialError::Unsupported {
        construct: construct.into(),
        location: location(span),
    }
}

/// Whether a statement is an assignment of a variable (`x := e`, `x = e`): its name and value.
fn assignment<'e>(stmt: &'e LiteralStmt, scope: &Scope<'_>) -> Option<(String, &'e Expr)> {
    let Literal::Expr { expr, .. } = &stmt.literal else {
        return None;
    };
    let Expr::AssignExpr { op, lhs, rhs, .. } = expr.as_ref() else {
        return None;
    };
    let var = |e: &Expr| match e {
        Expr::Var { value, .. } => value
            .as_string()
            .ok()
            .map(|s| s.to_string())
            .filter(|name| name != "_" && scope.resolve(name) == Name::Local),
        _ => None,
    };
    match op {
        AssignOp::ColEq => var(lhs).map(|name| (name, rhs.as_ref())),
        AssignOp::Eq => var(lhs)
            .map(|name| (name, rhs.as_ref()))
            .or_else(|| var(rhs).map(|name| (name, lhs.as_ref()))),
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(
        set: &'a RegoSet,
        rules: &'a Rules,
        input: Option<Value>,
        unknowns: Vec<Vec<String>>,
    ) -> Evaluator<'a> {
        let mut engine = set.template.clone();
        engine.set_gather_prints(true);
        engine.set_input(input.unwrap_or(Value::Undefined));
        Evaluator {
            set,
            rules,
            engine,
            unknowns: unknowns.iter().map(|u| to_values(u)).collect(),
            started: Instant::now(),
            dep: HashMap::new(),
            visiting: BTreeSet::new(),
            inlined: HashMap::new(),
            depth: 0,
            evaluations: 0,
        }
    }

    // ---- bodies ----

    /// Partially evaluates a body: one output per way it can hold.
    pub fn body(
        &mut self,
        stmts: &[LiteralStmt],
        names: &'a ModuleNames,
        head: HeadValue<'_>,
    ) -> Result<Vec<BodyOut>, PartialError> {
        let mut scope = Scope::new(names);
        scope.declare_stmts(stmts);

        // Variables bound to unknowns (`x := input.fruits`), to a fixed point.
        let mut tainted = BTreeSet::new();
        loop {
            let before = tainted.len();
            for stmt in stmts {
                if let Some((name, value)) = assignment(stmt, &scope)
                    && !tainted.contains(&name)
                    && self.expr_dep(value, &mut scope, &tainted)?
                {
                    tainted.insert(name);
                }
            }
            if tainted.len() == before {
                break;
            }
        }

        // The known statements, and the variables they bind.
        let mut known = Vec::new();
        let mut known_vars = BTreeSet::new();
        let mut unknown = Vec::new();
        for stmt in stmts {
            if matches!(stmt.literal, Literal::SomeVars { .. }) {
                continue;
            }
            if self.stmt_dep(stmt, &mut scope, &tainted)? {
                unknown.push(stmt);
                continue;
            }
            let mut writer = Writer::new(&mut scope);
            writer.stmt(stmt);
            known_vars.extend(writer.locals_seen);
            known.push(writer.out);
        }

        let mut build = Build {
            holes: Vec::new(),
            templates: BTreeMap::new(),
            known_vars,
            tainted,
        };
        // Assignments of unknowns first: later statements read their templates.
        let mut pieces = Vec::new();
        let mut pending: Vec<&LiteralStmt> = Vec::new();
        for stmt in &unknown {
            match assignment(stmt, &scope) {
                Some((name, value)) if build.tainted.contains(&name) => {
                    if !stmt.with_mods.is_empty() {
                        return Err(unsupported("`with` over unknowns", &stmt.span));
                    }
                    match self.side(value, &mut scope, &mut build)? {
                        Side::T(tpl @ Tpl::Ref(_)) => {
                            build.templates.insert(name, tpl);
                        }
                        _ => {
                            return Err(unsupported(
                                format!(
                                    "assigning `{name}` a value computed from unknowns (only an \
                                     unknown reference can be assigned)"
                                ),
                                &stmt.span,
                            ));
                        }
                    }
                }
                _ => pending.push(stmt),
            }
        }
        for stmt in pending {
            pieces.push(self.piece(stmt, &mut scope, &mut build)?);
        }
        let value = match head {
            HeadValue::None => None,
            HeadValue::True => Some(Tpl::Value(Value::Bool(true))),
            HeadValue::Expr(expr) => Some(match self.side(expr, &mut scope, &mut build)? {
                Side::T(tpl) => tpl,
                Side::Rule(path) => {
                    return Err(unsupported(
                        format!(
                            "a rule whose value is the rule `{}`, which depends on unknowns",
                            path_text(&path)
                        ),
                        start(expr),
                    ));
                }
            }),
        };

        let rows = self.run(&known, &build.holes)?;
        let mut outs = Vec::new();
        for row in rows {
            let mut products: Vec<Vec<Residual>> = vec![Vec::new()];
            for piece in &pieces {
                let alternatives = self.expand(piece, &row)?;
                let mut next = Vec::new();
                for done in &products {
                    for alt in &alternatives {
                        let mut joined = done.clone();
                        joined.extend(alt.iter().cloned());
                        next.push(joined);
                    }
                }
                if next.len() > MAX_RESIDUAL_QUERIES {
                    return Err(PartialError::TooLarge(format!(
                        "more than {MAX_RESIDUAL_QUERIES} residual queries"
                    )));
                }
                products = next;
            }
            let value = value.as_ref().map(|tpl| fill(tpl, &row));
            for residuals in products {
                outs.push(BodyOut {
                    residuals,
                    value: value.clone(),
                });
            }
            if outs.len() > MAX_RESIDUAL_QUERIES {
                return Err(PartialError::TooLarge(format!(
                    "more than {MAX_RESIDUAL_QUERIES} residual queries"
                )));
            }
        }
        Ok(outs)
    }

    /// Runs the known statements with every hole bound; one row of hole values per distinct
    /// solution.
    fn run(&mut self, known: &[String], holes: &[String]) -> Result<Vec<Vec<Value>>, PartialError> {
        if known.is_empty() && holes.is_empty() {
            return Ok(vec![Vec::new()]);
        }
        let mut parts: Vec<String> = known.to_vec();
        for (i, hole) in holes.iter().enumerate() {
            parts.push(format!("__pe_{i} := {hole}"));
        }
        let text = parts.join("; ");
        if text.len() > super::MAX_QUERY_BYTES * 4 {
            return Err(PartialError::TooLarge(
                "the known part of a body is too long to evaluate".into(),
            ));
        }
        if let Err(err) = parse_cost::check("<partial>", &text) {
            return Err(PartialError::TooLarge(err.message));
        }
        self.evaluations += 1;
        if self.evaluations > MAX_EVALUATIONS {
            return Err(PartialError::TooLarge(format!(
                "more than {MAX_EVALUATIONS} evaluations of known parts"
            )));
        }
        let limit = self.set.settings.time_limit;
        if self.started.elapsed() > limit {
            return Err(EvalError::TimeLimit {
                path: "<partial evaluation>".into(),
                limit_ms: limit.as_millis() as u64,
            }
            .into());
        }
        let shown: String = text.chars().take(200).collect();
        let results = self.engine.eval_query(text, false).map_err(|err| {
            match self.set.eval_error(&shown, &err) {
                EvalError::InvalidPath { message, .. } => PartialError::InvalidQuery {
                    message: format!("evaluating the known part `{shown}`: {message}"),
                },
                other => other.into(),
            }
        })?;
        let mut rows = BTreeSet::new();
        for row in results.result {
            let holds = row
                .expressions
                .iter()
                .all(|e| e.value != Value::Bool(false) && e.value != Value::Undefined);
            if !holds {
                continue;
            }
            let mut values = Vec::with_capacity(holes.len());
            for i in 0..holes.len() {
                let value = match &row.bindings {
                    Value::Object(fields) => fields
                        .get(&Value::from(format!("__pe_{i}").as_str()))
                        .cloned()
                        .unwrap_or(Value::Undefined),
                    _ => Value::Undefined,
                };
                values.push(value);
            }
            if values.contains(&Value::Undefined) {
                continue;
            }
            rows.insert(values);
            if rows.len() > MAX_RESIDUAL_QUERIES {
                return Err(PartialError::TooLarge(format!(
                    "more than {MAX_RESIDUAL_QUERIES} solutions of a known part"
                )));
            }
        }
        Ok(rows.into_iter().collect())
    }
}
