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

use super::deps::{RefKey, ref_parts, to_values};
use super::inline::Inlined;
use super::render::{ModuleNames, Name, Scope, Writer, path_text};
use super::residual::{Op, Residual, Term};
use super::rules::Rules;
use super::{MAX_EVALUATIONS, MAX_RESIDUAL_QUERIES, PartialError};
use crate::rego::{EvalError, Location, RegoSet, parse_cost};

/// A residual operand before the known query has run: holes are its bindings.
#[derive(Clone, Debug)]
pub(super) enum Tpl {
    Hole(usize),
    Value(Value),
    Ref(Vec<Key>),
}

#[derive(Clone, Debug)]
pub(super) enum Key {
    Known(Value),
    Hole(usize),
}

/// An operand of a statement that reads unknowns.
pub(super) enum Side {
    T(Tpl),
    /// A rule that reads unknowns, inlined when the statement is expanded.
    Rule(Vec<String>),
}

/// A statement that reads unknowns, before the known query has run.
pub(super) enum Piece {
    Call {
        op: Op,
        args: [Side; 2],
        negated: bool,
        /// Under `not`: the one known operand, bound to all its values (see [`Build::collect`]).
        collected: Option<usize>,
        location: Location,
    },
    Truthy {
        side: Side,
        negated: bool,
        collected: Option<usize>,
        location: Location,
    },
}

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
fn start(expr: &Expr) -> &Span {
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

    /// The operand `expr` of a statement that reads unknowns.
    fn side(
        &mut self,
        expr: &Expr,
        scope: &mut Scope<'_>,
        build: &mut Build,
    ) -> Result<Side, PartialError> {
        if !self.expr_dep(expr, scope, &build.tainted)? {
            return Ok(Side::T(Tpl::Hole(build.hole(expr, scope))));
        }
        let Some((root, keys)) = ref_parts(expr) else {
            return Err(match expr {
                Expr::Call { fcn, .. } => unsupported(
                    format!(
                        "unknowns inside the call of `{}` (only comparisons, `in`, \
                         `startswith`, `endswith` and `contains` can take them)",
                        fcn.span().text()
                    ),
                    start(fcn),
                ),
                _ => unsupported(
                    format!("the expression `{}` over unknowns", expr.span().text()),
                    start(expr),
                ),
            });
        };
        match scope.resolve(&root) {
            Name::Local => {
                let Some(Tpl::Ref(base)) = build.templates.get(&root).cloned() else {
                    return Err(unsupported(
                        format!("the variable `{root}` bound to a value computed from unknowns"),
                        start(expr),
                    ));
                };
                let mut path = base;
                for key in &keys {
                    path.push(self.key(key, expr, scope, build)?);
                }
                Ok(Side::T(Tpl::Ref(path)))
            }
            Name::Path(root_path) => {
                let shown = expr.span().text();
                let mut prefix = to_values(&root_path);
                let mut consumed = 0;
                for key in &keys {
                    match key {
                        RefKey::Static(value) => prefix.push(value.clone()),
                        RefKey::Dyn(_) => break,
                    }
                    consumed += 1;
                }
                if self.unknowns.iter().any(|u| prefix.starts_with(u)) {
                    let mut path: Vec<Key> =
                        to_values(&root_path).into_iter().map(Key::Known).collect();
                    for key in &keys {
                        path.push(self.key(key, expr, scope, build)?);
                    }
                    return Ok(Side::T(Tpl::Ref(path)));
                }
                if let Some(u) = self.unknowns.iter().find(|u| u.starts_with(&prefix)) {
                    let construct = if consumed < keys.len() {
                        format!(
                            "iteration over the unknown `{}` (in `{shown}`)",
                            Term::Ref(u.clone())
                        )
                    } else {
                        format!(
                            "the reference `{shown}`, which holds the unknown `{}` whole",
                            Term::Ref(u.clone())
                        )
                    };
                    return Err(unsupported(construct, start(expr)));
                }
                // A rule (or rules) that read unknowns.
                let paths: Vec<Vec<String>> = self.rules.by_path.keys().cloned().collect();
                for rule in paths {
                    let rule_v = to_values(&rule);
                    if !(rule_v.starts_with(&prefix) || prefix.starts_with(&rule_v)) {
                        continue;
                    }
                    if !self.rule_dep(&rule)? {
                        continue;
                    }
                    if rule_v == prefix && consumed == keys.len() {
                        return Ok(Side::Rule(rule));
                    }
                    let construct = if prefix.starts_with(&rule_v) {
                        format!(
                            "a reference into the value of the rule `{}`, which depends on \
                             unknowns (in `{shown}`)",
                            path_text(&rule)
                        )
                    } else {
                        format!(
                            "the reference `{shown}`, which holds the rule `{}` that depends on \
                             unknowns",
                            path_text(&rule)
                        )
                    };
                    return Err(unsupported(construct, start(expr)));
                }
                Err(unsupported(
                    format!("the reference `{shown}` over unknowns"),
                    start(expr),
                ))
            }
        }
    }

    /// A key of a reference under an unknown: a literal, or a known expression (a hole).
    fn key(
        &mut self,
        key: &RefKey<'_>,
        whole: &Expr,
        scope: &mut Scope<'_>,
        build: &mut Build,
    ) -> Result<Key, PartialError> {
        match key {
            RefKey::Static(value) => Ok(Key::Known(value.clone())),
            RefKey::Dyn(index) => {
                let unbound = match index {
                    Expr::Var { value, .. } => value.as_string().is_ok_and(|name| {
                        scope.resolve(name) == Name::Local
                            && !build.known_vars.contains(name.as_ref())
                    }),
                    _ => false,
                };
                if unbound || self.expr_dep(index, scope, &build.tainted)? {
                    return Err(unsupported(
                        format!(
                            "iteration over an unknown collection (`{}`)",
                            whole.span().text()
                        ),
                        index.span(),
                    ));
                }
                Ok(Key::Hole(build.hole(index, scope)))
            }
        }
    }

    /// A statement that reads unknowns, as a residual template.
    fn piece(
        &mut self,
        stmt: &LiteralStmt,
        scope: &mut Scope<'_>,
        build: &mut Build,
    ) -> Result<Piece, PartialError> {
        if !stmt.with_mods.is_empty() {
            return Err(unsupported("`with` over unknowns", &stmt.span));
        }
        let (expr, negated) = match &stmt.literal {
            Literal::Expr { expr, .. } => (expr, false),
            Literal::NotExpr { expr, .. } => (expr, true),
            Literal::SomeIn { collection, .. } => {
                return Err(unsupported(
                    format!(
                        "iteration over an unknown collection (`some ... in {}`)",
                        collection.span().text()
                    ),
                    &stmt.span,
                ));
            }
            Literal::Every { .. } => {
                return Err(unsupported("`every` over unknowns", &stmt.span));
            }
            Literal::SomeVars { .. } => {
                return Err(unsupported("`some` over unknowns", &stmt.span));
            }
        };
        let location = location(start(expr));
        let piece = match expr.as_ref() {
            Expr::BoolExpr { op, lhs, rhs, .. } => Piece::Call {
                op: Op::from_bool_op(op),
                args: [self.side(lhs, scope, build)?, self.side(rhs, scope, build)?],
                negated,
                collected: None,
                location,
            },
            Expr::AssignExpr {
                op: AssignOp::Eq,
                lhs,
                rhs,
                ..
            } => Piece::Call {
                op: Op::Eq,
                args: [self.side(lhs, scope, build)?, self.side(rhs, scope, build)?],
                negated,
                collected: None,
                location,
            },
            Expr::Membership {
                key: None,
                value,
                collection,
                ..
            } => {
                let value = self.side(value, scope, build)?;
                let collection = match self.side(collection, scope, build)? {
                    side @ Side::T(Tpl::Hole(_)) => side,
                    _ => {
                        return Err(unsupported(
                            format!(
                                "membership in an unknown collection (`{}`)",
                                collection.span().text()
                            ),
                            start(collection),
                        ));
                    }
                };
                Piece::Call {
                    op: Op::Member,
                    args: [value, collection],
                    negated,
                    collected: None,
                    location,
                }
            }
            Expr::Membership { key: Some(_), .. } => {
                return Err(unsupported(
                    "`key, value in ...` over unknowns",
                    start(expr),
                ));
            }
            Expr::Call { fcn, params, .. } => {
                let name = fcn.span().text();
                let op = match (name, params.len()) {
                    ("startswith", 2) => Op::StartsWith,
                    ("endswith", 2) => Op::EndsWith,
                    ("contains", 2) => Op::Contains,
                    _ => {
                        return Err(unsupported(
                            format!(
                                "unknowns inside the call of `{name}` (only comparisons, `in`, \
                                 `startswith`, `endswith` and `contains` can take them)"
                            ),
                            start(fcn),
                        ));
                    }
                };
                if scope.resolve(name) != Name::Local {
                    return Err(unsupported(
                        format!("a call of the function `{name}` over unknowns"),
                        start(expr),
                    ));
                }
                let args = [
                    self.side(&params[0], scope, build)?,
                    self.side(&params[1], scope, build)?,
                ];
                if !matches!(args[1], Side::T(Tpl::Hole(_))) {
                    return Err(unsupported(
                        format!("an unknown as the second argument of `{name}`"),
                        start(&params[1]),
                    ));
                }
                Piece::Call {
                    op,
                    args,
                    negated,
                    collected: None,
                    location,
                }
            }
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => Piece::Truthy {
                side: self.side(expr, scope, build)?,
                negated,
                collected: None,
                location,
            },
            other => {
                return Err(unsupported(
                    format!("the expression `{}` over unknowns", other.span().text()),
                    start(other),
                ));
            }
        };
        if !negated {
            return Ok(piece);
        }
        let sides: Vec<&Side> = match &piece {
            Piece::Call { args, .. } => args.iter().collect(),
            Piece::Truthy { side, .. } => vec![side],
        };
        if sides.iter().any(|side| matches!(side, Side::Rule(_))) {
            return Err(unsupported(
                "`not` over a rule that depends on unknowns",
                &stmt.span,
            ));
        }
        // `not e` holds when `e` is undefined, so an undefined known operand must not drop the
        // body: the operand is collected (all its values, none when undefined) instead.
        let mut holes = Vec::new();
        for side in sides {
            if let Side::T(tpl) = side {
                tpl.holes(&mut holes);
            }
        }
        if holes.len() > 1 {
            return Err(unsupported(
                "`not` over an expression with more than one known operand and an unknown",
                &stmt.span,
            ));
        }
        let collected = holes.first().copied();
        if let Some(hole) = collected {
            build.collect(hole);
        }
        Ok(match piece {
            Piece::Call {
                op,
                args,
                negated,
                location,
                ..
            } => Piece::Call {
                op,
                args,
                negated,
                collected,
                location,
            },
            Piece::Truthy {
                side,
                negated,
                location,
                ..
            } => Piece::Truthy {
                side,
                negated,
                collected,
                location,
            },
        })
    }
}

/// What a body's statements that read unknowns need from its known part.
struct Build {
    /// Known operands, as Rego text; each is bound to `__pe_<index>` in the known query.
    holes: Vec<String>,
    /// Variables bound to an unknown reference.
    templates: BTreeMap<String, Tpl>,
    /// Variables the known statements bind.
    known_vars: BTreeSet<String>,
    tainted: BTreeSet<String>,
}

impl Tpl {
    /// The holes this operand reads.
    fn holes(&self, out: &mut Vec<usize>) {
        match self {
            Tpl::Hole(i) => out.push(*i),
            Tpl::Value(_) => {}
            Tpl::Ref(keys) => out.extend(keys.iter().filter_map(|k| match k {
                Key::Hole(i) => Some(*i),
                Key::Known(_) => None,
            })),
        }
    }
}

impl Build {
    /// Binds hole `index` to the array of all its values (empty when it is undefined).
    fn collect(&mut self, index: usize) {
        let expr = &self.holes[index];
        self.holes[index] = format!("[__pe_v{index} | __pe_v{index} := {expr}]");
    }

    fn hole(&mut self, expr: &Expr, scope: &mut Scope<'_>) -> usize {
        let mut writer = Writer::new(scope);
        writer.expr(expr, true);
        self.holes.push(writer.out);
        self.holes.len() - 1
    }
}

pub(super) fn fill(tpl: &Tpl, row: &[Value]) -> Term {
    match tpl {
        Tpl::Hole(i) => Term::Value(row.get(*i).cloned().unwrap_or(Value::Undefined)),
        Tpl::Value(value) => Term::Value(value.clone()),
        Tpl::Ref(keys) => Term::Ref(
            keys.iter()
                .map(|key| match key {
                    Key::Known(value) => value.clone(),
                    Key::Hole(i) => row.get(*i).cloned().unwrap_or(Value::Undefined),
                })
                .collect(),
        ),
    }
}
