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
use regorus::unstable::{AssignOp, Expr, Literal, LiteralStmt, Module, Ref, Rule, RuleHead, Span};

use super::render::{ModuleNames, Name, Scope, Writer, path_text, static_ref};
use super::residual::{Op, Residual, Term};
use super::{MAX_EVALUATIONS, MAX_INLINE_DEPTH, MAX_RESIDUAL_QUERIES, PartialError};
use crate::rego::recursion::static_path;
use crate::rego::{EvalError, Location, RegoSet, parse_cost};

/// One rule definition and the module it is in.
struct Def {
    module: usize,
    rule: Ref<Rule>,
    /// Its head is a static path (`a.b.c`), not `a[x]`.
    exact: bool,
}

/// Every rule of a set by path, and how names resolve in each module.
pub(super) struct Rules {
    names: Vec<ModuleNames>,
    /// The top-level query's names: no package, no imports.
    pub query_names: ModuleNames,
    by_path: BTreeMap<Vec<String>, Vec<Def>>,
    pub packages: Vec<Vec<String>>,
}

impl Rules {
    pub fn new(modules: &[Ref<Module>]) -> Rules {
        let mut names = Vec::new();
        let mut by_path: BTreeMap<Vec<String>, Vec<Def>> = BTreeMap::new();
        let mut packages = Vec::new();
        for (index, module) in modules.iter().enumerate() {
            let mut package = vec!["data".to_owned()];
            package.extend(static_path(&module.package.refr));
            let mut aliases = BTreeMap::new();
            for import in &module.imports {
                let path = static_path(&import.refr);
                if path.first().map(String::as_str) != Some("data") {
                    continue;
                }
                let alias = match &import.r#as {
                    Some(span) => span.text().to_owned(),
                    None => match path.last() {
                        Some(last) => last.clone(),
                        None => continue,
                    },
                };
                aliases.insert(alias, path);
            }
            let mut rules = BTreeSet::new();
            for rule in &module.policy {
                let head = match rule.as_ref() {
                    Rule::Spec { head, .. } => match head {
                        RuleHead::Compr { refr, .. }
                        | RuleHead::Set { refr, .. }
                        | RuleHead::Func { refr, .. } => refr,
                    },
                    Rule::Default { refr, .. } => refr,
                };
                let prefix = static_path(head);
                let exact = static_ref(head).is_some_and(|full| full.len() == prefix.len());
                if let Some(first) = prefix.first() {
                    rules.insert(first.clone());
                }
                let mut path = package.clone();
                path.extend(prefix);
                by_path.entry(path).or_default().push(Def {
                    module: index,
                    rule: rule.clone(),
                    exact,
                });
            }
            packages.push(package.clone());
            names.push(ModuleNames {
                package,
                aliases,
                rules,
            });
        }
        Rules {
            names,
            query_names: ModuleNames::default(),
            by_path,
            packages,
        }
    }
}

/// What a rule can be inlined as: one alternative per body that can hold.
struct Inlined {
    alts: Vec<Alt>,
    default: Option<Value>,
    location: Location,
}

/// One body of a rule: the residual conditions under which it holds, and its value then.
#[derive(Clone)]
struct Alt {
    residuals: Vec<Residual>,
    value: Term,
}

/// A residual operand before the known query has run: holes are its bindings.
#[derive(Clone, Debug)]
enum Tpl {
    Hole(usize),
    Value(Value),
    Ref(Vec<Key>),
}

#[derive(Clone, Debug)]
enum Key {
    Known(Value),
    Hole(usize),
}

/// An operand of a statement that reads unknowns.
enum Side {
    T(Tpl),
    /// A rule that reads unknowns, inlined when the statement is expanded.
    Rule(Vec<String>),
}

/// A statement that reads unknowns, before the known query has run.
enum Piece {
    Call {
        op: Op,
        args: [Side; 2],
        negated: bool,
        location: Location,
    },
    Truthy {
        side: Side,
        negated: bool,
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
    rules: &'a Rules,
    engine: regorus::Engine,
    unknowns: Vec<Vec<Value>>,
    started: Instant,
    dep: HashMap<Vec<String>, bool>,
    visiting: BTreeSet<Vec<String>>,
    inlined: HashMap<Vec<String>, Rc<Inlined>>,
    depth: usize,
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

fn unsupported(construct: impl Into<String>, span: &Span) -> PartialError {
    PartialError::Unsupported {
        construct: construct.into(),
        location: location(span),
    }
}

fn to_values(path: &[String]) -> Vec<Value> {
    path.iter().map(|s| Value::from(s.as_str())).collect()
}

/// The parts of a reference: its root variable and its keys (a literal, or an expression).
enum RefKey<'e> {
    Static(Value),
    Dyn(&'e Expr),
}

fn ref_parts(expr: &Expr) -> Option<(String, Vec<RefKey<'_>>)> {
    let mut keys = Vec::new();
    let mut current = expr;
    loop {
        match current {
            Expr::Var { value, .. } => {
                keys.reverse();
                return Some((value.as_string().ok()?.to_string(), keys));
            }
            Expr::RefDot { refr, field, .. } => {
                keys.push(RefKey::Static(field.1.clone()));
                current = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. }
                    | Expr::RawString { value, .. }
                    | Expr::Number { value, .. }
                    | Expr::Bool { value, .. }
                    | Expr::Null { value, .. } => keys.push(RefKey::Static(value.clone())),
                    other => keys.push(RefKey::Dyn(other)),
                }
                current = refr;
            }
            _ => return None,
        }
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

    // ---- what depends on unknowns ----

    /// Whether the document at `path` (then `keys`) reads unknowns: it overlaps an unknown, or a
    /// rule that reads unknowns.
    fn path_dep(&mut self, path: &[String], keys: &[RefKey<'_>]) -> Result<bool, PartialError> {
        let mut prefix = to_values(path);
        for key in keys {
            match key {
                RefKey::Static(value) => prefix.push(value.clone()),
                RefKey::Dyn(_) => break,
            }
        }
        if self
            .unknowns
            .iter()
            .any(|u| prefix.starts_with(u) || u.starts_with(&prefix))
        {
            return Ok(true);
        }
        if path.first().map(String::as_str) != Some("data") {
            return Ok(false);
        }
        let rules: Vec<Vec<String>> = self
            .rules
            .by_path
            .keys()
            .filter(|rule| {
                let rule = to_values(rule);
                rule.starts_with(&prefix) || prefix.starts_with(&rule)
            })
            .cloned()
            .collect();
        for rule in rules {
            if self.rule_dep(&rule)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the rule at `path` reads unknowns (through any definition).
    fn rule_dep(&mut self, path: &[String]) -> Result<bool, PartialError> {
        if let Some(&known) = self.dep.get(path) {
            return Ok(known);
        }
        let rules = self.rules;
        let Some(defs) = rules.by_path.get(path) else {
            return Ok(false);
        };
        if !self.visiting.insert(path.to_vec()) {
            // The store refuses recursive modules; a cycle here is a group of ref heads.
            let span = defs[0].rule.span();
            return Err(unsupported(
                format!("rule `{}`, which depends on itself", path_text(path)),
                span,
            ));
        }
        let mut dep = false;
        for def in defs {
            if dep {
                break;
            }
            let mut scope = Scope::new(&rules.names[def.module]);
            let none = BTreeSet::new();
            dep = match def.rule.as_ref() {
                Rule::Default { args, value, .. } => {
                    args.iter().for_each(|arg| scope.bind(arg));
                    self.expr_dep(value, &mut scope, &none)?
                }
                Rule::Spec { head, bodies, .. } => {
                    let mut head_dep = false;
                    let head_value = match head {
                        RuleHead::Compr { assign, .. } => assign.as_ref().map(|a| &a.value),
                        RuleHead::Set { key, .. } => key.as_ref(),
                        RuleHead::Func { args, assign, .. } => {
                            args.iter().for_each(|arg| scope.bind(arg));
                            assign.as_ref().map(|a| &a.value)
                        }
                    };
                    if bodies.is_empty()
                        && let Some(value) = head_value
                    {
                        head_dep = self.expr_dep(value, &mut scope, &none)?;
                    }
                    for body in bodies {
                        if head_dep {
                            break;
                        }
                        scope.push();
                        scope.declare_locals(&body.query);
                        if let Some(value) = head_value {
                            head_dep |= self.expr_dep(value, &mut scope, &none)?;
                        }
                        if let Some(assign) = &body.assign {
                            head_dep |= self.expr_dep(&assign.value, &mut scope, &none)?;
                        }
                        for stmt in &body.query.stmts {
                            head_dep |= self.stmt_dep(stmt, &mut scope, &none)?;
                        }
                        scope.pop();
                    }
                    head_dep
                }
            };
        }
        self.visiting.remove(path);
        self.dep.insert(path.to_vec(), dep);
        Ok(dep)
    }

    fn stmt_dep(
        &mut self,
        stmt: &LiteralStmt,
        scope: &mut Scope<'_>,
        tainted: &BTreeSet<String>,
    ) -> Result<bool, PartialError> {
        let mut dep = false;
        for with in &stmt.with_mods {
            dep |= self.expr_dep(&with.refr, scope, tainted)?;
            dep |= self.expr_dep(&with.r#as, scope, tainted)?;
        }
        Ok(dep
            || match &stmt.literal {
                Literal::SomeVars { .. } => false,
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    let mut dep = self.expr_dep(collection, scope, tainted)?;
                    if let Some(key) = key {
                        dep |= self.expr_dep(key, scope, tainted)?;
                    }
                    dep || self.expr_dep(value, scope, tainted)?
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                    self.expr_dep(expr, scope, tainted)?
                }
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    let mut dep = self.expr_dep(domain, scope, tainted)?;
                    scope.push();
                    if let Some(key) = key {
                        scope.declare(key.text());
                    }
                    scope.declare(value.text());
                    scope.declare_locals(query);
                    for stmt in &query.stmts {
                        dep |= self.stmt_dep(stmt, scope, tainted)?;
                    }
                    scope.pop();
                    dep
                }
            })
    }

    /// Whether an expression reads unknowns (an unknown, a rule or function that reads them, or
    /// a variable bound to one).
    fn expr_dep(
        &mut self,
        expr: &Expr,
        scope: &mut Scope<'_>,
        tainted: &BTreeSet<String>,
    ) -> Result<bool, PartialError> {
        match expr {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => Ok(false),
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                let Some((root, keys)) = ref_parts(expr) else {
                    // A reference into a literal or a call's value: its parts decide.
                    return match expr {
                        Expr::RefDot { refr, .. } => self.expr_dep(refr, scope, tainted),
                        Expr::RefBrack { refr, index, .. } => Ok(self
                            .expr_dep(refr, scope, tainted)?
                            || self.expr_dep(index, scope, tainted)?),
                        _ => Ok(false),
                    };
                };
                let mut dep = false;
                for key in &keys {
                    if let RefKey::Dyn(index) = key {
                        dep |= self.expr_dep(index, scope, tainted)?;
                    }
                }
                Ok(dep
                    || match scope.resolve(&root) {
                        Name::Local => tainted.contains(&root),
                        Name::Path(path) => self.path_dep(&path, &keys)?,
                    })
            }
            Expr::Call { fcn, params, .. } => {
                let mut dep = false;
                for param in params {
                    dep |= self.expr_dep(param, scope, tainted)?;
                }
                if let Some(path) = static_ref(fcn)
                    && let Some(first) = path.first()
                    && let Name::Path(mut full) = scope.resolve(first)
                {
                    full.extend(path[1..].iter().cloned());
                    dep |= self.path_dep(&full, &[])?;
                }
                Ok(dep)
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                let mut dep = false;
                for item in items {
                    dep |= self.expr_dep(item, scope, tainted)?;
                }
                Ok(dep)
            }
            Expr::Object { fields, .. } => {
                let mut dep = false;
                for (_, key, value) in fields {
                    dep |= self.expr_dep(key, scope, tainted)?;
                    dep |= self.expr_dep(value, scope, tainted)?;
                }
                Ok(dep)
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                scope.push();
                scope.declare_locals(query);
                let mut dep = self.expr_dep(term, scope, tainted)?;
                for stmt in &query.stmts {
                    dep |= self.stmt_dep(stmt, scope, tainted)?;
                }
                scope.pop();
                Ok(dep)
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                scope.push();
                scope.declare_locals(query);
                let mut dep = self.expr_dep(key, scope, tainted)?;
                dep |= self.expr_dep(value, scope, tainted)?;
                for stmt in &query.stmts {
                    dep |= self.stmt_dep(stmt, scope, tainted)?;
                }
                scope.pop();
                Ok(dep)
            }
            Expr::UnaryExpr { expr, .. } => self.expr_dep(expr, scope, tainted),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                Ok(self.expr_dep(lhs, scope, tainted)? | self.expr_dep(rhs, scope, tainted)?)
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                let mut dep = self.expr_dep(value, scope, tainted)?;
                dep |= self.expr_dep(collection, scope, tainted)?;
                if let Some(key) = key {
                    dep |= self.expr_dep(key, scope, tainted)?;
                }
                Ok(dep)
            }
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
    fn run(
        &mut self,
        known: &[String],
        holes: &[String],
    ) -> Result<Vec<Vec<Value>>, PartialError> {
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
        let results = self
            .engine
            .eval_query(text, false)
            .map_err(|err| match self.set.eval_error(&shown, &err) {
                EvalError::InvalidPath { message, .. } => PartialError::InvalidQuery {
                    message: format!("evaluating the known part `{shown}`: {message}"),
                },
                other => other.into(),
            })?;
        let mut rows = BTreeSet::new();
        for row in results.result {
            let holds = row.expressions.iter().all(|e| {
                e.value != Value::Bool(false) && e.value != Value::Undefined
            });
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
            if values.iter().any(|v| *v == Value::Undefined) {
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
                    let mut path: Vec<Key> = to_values(&root_path).into_iter().map(Key::Known).collect();
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
                let paths: Vec<Vec<String>> =
                    self.rules.by_path.keys().cloned().collect();
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
                        scope.resolve(name) == Name::Local && !build.known_vars.contains(name.as_ref())
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
                args: [
                    self.side(lhs, scope, build)?,
                    self.side(rhs, scope, build)?,
                ],
                negated,
                location,
            },
            Expr::AssignExpr {
                op: AssignOp::Eq,
                lhs,
                rhs,
                ..
            } => Piece::Call {
                op: Op::Eq,
                args: [
                    self.side(lhs, scope, build)?,
                    self.side(rhs, scope, build)?,
                ],
                negated,
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
                    location,
                }
            }
            Expr::Membership { key: Some(_), .. } => {
                return Err(unsupported("`key, value in ...` over unknowns", start(expr)));
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
                    location,
                }
            }
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => Piece::Truthy {
                side: self.side(expr, scope, build)?,
                negated,
                location,
            },
            other => {
                return Err(unsupported(
                    format!("the expression `{}` over unknowns", other.span().text()),
                    start(other),
                ));
            }
        };
        if negated {
            let inlines = match &piece {
                Piece::Call { args, .. } => args.iter().any(|a| matches!(a, Side::Rule(_))),
                Piece::Truthy { side, .. } => matches!(side, Side::Rule(_)),
            };
            if inlines {
                return Err(unsupported(
                    "`not` over a rule that depends on unknowns",
                    &stmt.span,
                ));
            }
        }
        Ok(piece)
    }

    // ---- expansion ----

    /// The alternatives (OR) a statement becomes for one solution of the known part.
    fn expand(&mut self, piece: &Piece, row: &[Value]) -> Result<Vec<Vec<Residual>>, PartialError> {
        match piece {
            Piece::Truthy {
                side,
                negated,
                location,
            } => match side {
                Side::T(tpl) => Ok(vec![vec![Residual::Term {
                    term: fill(tpl, row),
                    negated: *negated,
                    location: location.clone(),
                }]]),
                Side::Rule(path) => {
                    let inlined = self.inline(path)?;
                    if let Some(default) = &inlined.default
                        && *default != Value::Bool(false)
                    {
                        return Err(PartialError::Unsupported {
                            construct: format!(
                                "the default value of `{}`, which would hold when no body \
                                 does (that needs the negation of every body)",
                                path_text(path)
                            ),
                            location: inlined.location.clone(),
                        });
                    }
                    let mut out = Vec::new();
                    for alt in &inlined.alts {
                        match &alt.value {
                            Term::Value(Value::Bool(false)) => {}
                            Term::Value(_) => out.push(alt.residuals.clone()),
                            term @ Term::Ref(_) => {
                                let mut residuals = alt.residuals.clone();
                                residuals.push(Residual::Term {
                                    term: term.clone(),
                                    negated: false,
                                    location: location.clone(),
                                });
                                out.push(residuals);
                            }
                        }
                    }
                    Ok(out)
                }
            },
            Piece::Call {
                op,
                args,
                negated,
                location,
            } => {
                let call = |a: Term, b: Term| Residual::Call {
                    op: *op,
                    args: [a, b],
                    negated: *negated,
                    location: location.clone(),
                };
                match args {
                    [Side::T(a), Side::T(b)] => {
                        let (a, b) = (fill(a, row), fill(b, row));
                        if let (Term::Value(x), Term::Value(y)) = (&a, &b)
                            && let Some(holds) = op.holds(x, y)
                        {
                            return Ok(if holds != *negated { vec![vec![]] } else { vec![] });
                        }
                        Ok(vec![vec![call(a, b)]])
                    }
                    [Side::Rule(_), Side::Rule(_)] => Err(PartialError::Unsupported {
                        construct: "a comparison of two rules that depend on unknowns".into(),
                        location: location.clone(),
                    }),
                    [Side::Rule(path), Side::T(other)] | [Side::T(other), Side::Rule(path)] => {
                        let rule_first = matches!(args[0], Side::Rule(_));
                        let other = fill(other, row);
                        let inlined = self.inline(path)?;
                        if let Some(default) = &inlined.default {
                            let decides = match &other {
                                Term::Value(v) => {
                                    let (a, b) = if rule_first { (default, v) } else { (v, default) };
                                    op.holds(a, b).unwrap_or(true)
                                }
                                Term::Ref(_) => true,
                            };
                            if decides {
                                return Err(PartialError::Unsupported {
                                    construct: format!(
                                        "the default value of `{}`, which could decide \
                                         the comparison at {} (that needs the negation of \
                                         every body)",
                                        path_text(path),
                                        location_text(location)
                                    ),
                                    location: inlined.location.clone(),
                                });
                            }
                        }
                        let mut out = Vec::new();
                        for alt in &inlined.alts {
                            let (a, b) = if rule_first {
                                (alt.value.clone(), other.clone())
                            } else {
                                (other.clone(), alt.value.clone())
                            };
                            if let (Term::Value(x), Term::Value(y)) = (&a, &b)
                                && let Some(holds) = op.holds(x, y)
                            {
                                if holds {
                                    out.push(alt.residuals.clone());
                                }
                                continue;
                            }
                            let mut residuals = alt.residuals.clone();
                            residuals.push(call(a, b));
                            out.push(residuals);
                        }
                        Ok(out)
                    }
                }
            }
        }
    }

    /// A rule that reads unknowns, as alternatives: one per body and solution.
    fn inline(&mut self, path: &[String]) -> Result<Rc<Inlined>, PartialError> {
        if let Some(done) = self.inlined.get(path) {
            return Ok(done.clone());
        }
        let rules = self.rules;
        let Some(defs) = rules.by_path.get(path) else {
            return Err(PartialError::Unsupported {
                construct: format!("`{}`, which is not a rule", path_text(path)),
                location: Location {
                    file: "<query>".into(),
                    row: 1,
                    col: 1,
                },
            });
        };
        if self.depth >= MAX_INLINE_DEPTH {
            return Err(PartialError::TooLarge(format!(
                "rules inlined more than {MAX_INLINE_DEPTH} deep"
            )));
        }
        self.depth += 1;
        let result = self.inline_defs(path, defs);
        self.depth -= 1;
        let inlined = Rc::new(result?);
        self.inlined.insert(path.to_vec(), inlined.clone());
        Ok(inlined)
    }

    fn inline_defs(&mut self, path: &[String], defs: &'a [Def]) -> Result<Inlined, PartialError> {
        let rules = self.rules;
        let mut inlined = Inlined {
            alts: Vec::new(),
            default: None,
            location: location(defs[0].rule.span()),
        };
        let name = path_text(path);
        for def in defs {
            let names = &rules.names[def.module];
            let span = def.rule.span();
            if !def.exact {
                return Err(unsupported(
                    format!("the rule `{name}` with a variable in its head, which depends on unknowns"),
                    span,
                ));
            }
            match def.rule.as_ref() {
                Rule::Default { args, value, .. } => {
                    if !args.is_empty() {
                        return Err(unsupported(
                            format!("the function `{name}`, which depends on unknowns"),
                            span,
                        ));
                    }
                    let outs = self.body(&[], names, HeadValue::Expr(value))?;
                    inlined.default = match outs.into_iter().next().and_then(|o| o.value) {
                        Some(Term::Value(value)) => Some(value),
                        _ => {
                            return Err(unsupported(
                                format!("the default value of `{name}`"),
                                span,
                            ));
                        }
                    };
                }
                Rule::Spec { head, bodies, .. } => {
                    let head_value = match head {
                        RuleHead::Compr { assign, .. } => assign.as_ref().map(|a| &a.value),
                        RuleHead::Set { .. } => {
                            return Err(unsupported(
                                format!(
                                    "the partial set rule `{name}` (`contains`), which depends \
                                     on unknowns"
                                ),
                                span,
                            ));
                        }
                        RuleHead::Func { .. } => {
                            return Err(unsupported(
                                format!("the function `{name}`, which depends on unknowns"),
                                span,
                            ));
                        }
                    };
                    if bodies.is_empty() {
                        let value = head_value.map_or(HeadValue::True, |v| HeadValue::Expr(v));
                        for out in self.body(&[], names, value)? {
                            inlined.alts.push(alt(out));
                        }
                    }
                    for body in bodies {
                        if body.is_else {
                            return Err(unsupported(
                                format!("`else` in the rule `{name}`, which depends on unknowns"),
                                &body.span,
                            ));
                        }
                        let value = match (&body.assign, head_value) {
                            (Some(assign), _) => HeadValue::Expr(&assign.value),
                            (None, Some(value)) => HeadValue::Expr(value),
                            (None, None) => HeadValue::True,
                        };
                        for out in self.body(&body.query.stmts, names, value)? {
                            inlined.alts.push(alt(out));
                        }
                        if inlined.alts.len() > MAX_RESIDUAL_QUERIES {
                            return Err(PartialError::TooLarge(format!(
                                "more than {MAX_RESIDUAL_QUERIES} alternatives of `{name}`"
                            )));
                        }
                    }
                }
            }
        }
        Ok(inlined)
    }
}

fn alt(out: BodyOut) -> Alt {
    Alt {
        residuals: out.residuals,
        value: out.value.unwrap_or(Term::Value(Value::Bool(true))),
    }
}

fn location_text(location: &Location) -> String {
    format!("{}:{}:{}", location.file, location.row, location.col)
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

impl Build {
    fn hole(&mut self, expr: &Expr, scope: &mut Scope<'_>) -> usize {
        let mut writer = Writer::new(scope);
        writer.expr(expr, true);
        self.holes.push(writer.out);
        self.holes.len() - 1
    }
}

fn fill(tpl: &Tpl, row: &[Value]) -> Term {
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
