//! Refuses Rego modules in which a rule or function depends on itself, as OPA's compiler does
//! (`rego_recursion_error`).
//!
//! regorus does not: its VM recurses without bound on `p := q` / `q := p`, and its interpreter on
//! `f(x) := f(x)`, until the thread's stack overflows and the process aborts. A module is saved
//! once and evaluated many times (and replicated to every node), so the check runs when a set is
//! built, over the parsed modules: every rule is a node keyed by the static part of its head's path
//! (`data.pkg.rule`), every reference in its bodies (`data.pkg.rule`, a bare rule name of its own
//! package, an import alias, a function call) is an edge to the rules it can reach, and a cycle is
//! refused with its path.
//!
//! The graph over-approximates where resolution is dynamic (`data.pkg[x]` reaches every rule under
//! `data.pkg`), as OPA's does. A body's own variables (arguments, `some`, `every`, `:=`) shadow rule
//! names, so a local `x` is not taken for the rule `x`.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};

use super::bindings::{import_aliases, pattern_vars, statement_vars};
use super::{CompileError, Location};

/// A rule (all definitions sharing one static head path).
struct Node {
    path: Vec<String>,
    location: Location,
    /// Paths this rule's bodies refer to (resolved to nodes after every module is read).
    refs: Vec<Vec<String>>,
}

/// Checks `modules` for rules or functions that depend on themselves.
pub fn check(modules: &[Ref<Module>]) -> Result<(), CompileError> {
    let mut nodes: Vec<Node> = Vec::new();
    for module in modules {
        // `package a.b` is `data.a.b`.
        let mut package = vec!["data".to_owned()];
        package.extend(static_path(&module.package.refr));
        let aliases = import_aliases(module, &["data"]);
        for rule in &module.policy {
            let (head, args, bodies) = match rule.as_ref() {
                Rule::Spec { head, bodies, .. } => {
                    let (refr, args) = match head {
                        RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => {
                            (refr, &[][..])
                        }
                        RuleHead::Func { refr, args, .. } => (refr, args.as_slice()),
                    };
                    (refr, args, Some((head, bodies)))
                }
                // A default has a constant value: it depends on nothing.
                Rule::Default { refr, .. } => (refr, &[][..], None),
            };
            let mut path = package.clone();
            path.extend(static_path(head).into_iter().skip_while(|s| s == "data"));
            let span = rule.span();
            let mut walker = Walker {
                package: &package,
                aliases: &aliases,
                scopes: vec![BTreeSet::new()],
                refs: Vec::new(),
            };
            for arg in args {
                walker.bind(arg);
            }
            walker.walk_ref_indices(head);
            if let Some((head, bodies)) = bodies {
                let head_value = |walker: &mut Walker<'_>| match head {
                    RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                        if let Some(assign) = assign {
                            walker.expr(&assign.value);
                        }
                    }
                    RuleHead::Set { key, .. } => {
                        if let Some(key) = key {
                            walker.expr(key);
                        }
                    }
                };
                if bodies.is_empty() {
                    head_value(&mut walker);
                }
                // Each body (an `else` too) has its own variables, which the head's value sees.
                for body in bodies {
                    walker.scopes.push(BTreeSet::new());
                    walker.collect_locals(&body.query);
                    head_value(&mut walker);
                    if let Some(assign) = &body.assign {
                        walker.expr(&assign.value);
                    }
                    walker.query(&body.query);
                    walker.scopes.pop();
                }
            }
            nodes.push(Node {
                path,
                location: Location {
                    file: span.source.get_path().to_string(),
                    row: span.line,
                    col: span.col,
                },
                refs: walker.refs,
            });
        }
    }
    let packages: Vec<Vec<String>> = modules
        .iter()
        .map(|module| {
            let mut package = vec!["data".to_owned()];
            package.extend(static_path(&module.package.refr));
            package
        })
        .collect();
    find_cycle(&nodes, &packages)
}

/// Resolves references to nodes and looks for a cycle (iterative depth-first search).
fn find_cycle(nodes: &[Node], packages: &[Vec<String>]) -> Result<(), CompileError> {
    // Nodes sharing a path are one rule (several definitions): merge them.
    let mut by_path: BTreeMap<&[String], usize> = BTreeMap::new();
    for node in nodes {
        let next = by_path.len();
        by_path.entry(node.path.as_slice()).or_insert(next);
    }
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); by_path.len()];
    let mut first: Vec<Option<&Node>> = vec![None; by_path.len()];
    for node in nodes {
        let from = by_path[node.path.as_slice()];
        first[from].get_or_insert(node);
        for refr in &node.refs {
            let mut matched = false;
            for (path, &to) in &by_path {
                // `data.a.b.c` reaches the rule `data.a.b` (its value, indexed) and every rule
                // under `data.a.b.c` (a package or a prefix of ref heads).
                if path.starts_with(refr) || refr.starts_with(path) {
                    edges[from].insert(to);
                    matched = true;
                }
            }
            if matched {
                continue;
            }
            // No rule at or under it, but inside a group of ref-head rules (`a.b` beside `a.m`
            // and `a.c`): regorus evaluates the whole group (`data.pkg.a`) and indexes it, so
            // the reference reaches every rule of the group (found by fuzzing: `a.c := a.b + 1`
            // overflowed the stack).
            let group = (1..refr.len()).rev().map(|n| &refr[..n]).find(|prefix| {
                packages
                    .iter()
                    .any(|package| prefix.len() > package.len() && prefix.starts_with(package))
                    && by_path.keys().any(|p| p.starts_with(prefix))
            });
            if let Some(group) = group {
                for (path, &to) in &by_path {
                    if path.starts_with(group) {
                        edges[from].insert(to);
                    }
                }
            }
        }
    }
    let names: Vec<String> = {
        let mut names = vec![String::new(); by_path.len()];
        for (path, &index) in &by_path {
            names[index] = path.join(".");
        }
        names
    };

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut mark = vec![Mark::New; by_path.len()];
    for start in 0..by_path.len() {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> =
            vec![(start, edges[start].iter().copied().collect())];
        mark[start] = Mark::OnStack;
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) if mark[next] == Mark::OnStack => {
                    let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut chain: Vec<&str> = stack[from..]
                        .iter()
                        .map(|(n, _)| names[*n].as_str())
                        .collect();
                    chain.push(names[next].as_str());
                    let location =
                        first[next]
                            .map(|n| n.location.clone())
                            .unwrap_or_else(|| Location {
                                file: String::new(),
                                row: 0,
                                col: 0,
                            });
                    return Err(CompileError {
                        code: "rego_recursion_error",
                        message: format!(
                            "rule {} is recursive: {}",
                            names[next],
                            chain.join(" -> ")
                        ),
                        location,
                    });
                }
                Some(next) if mark[next] == Mark::New => {
                    mark[next] = Mark::OnStack;
                    stack.push((next, edges[next].iter().copied().collect()));
                }
                Some(_) => {}
                None => {
                    mark[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

/// The leading static components of a reference: `data.a["b"].c[x].d` -> `[data, a, b, c]`.
pub(super) fn static_path(expr: &Expr) -> Vec<String> {
    let mut reversed = Vec::new();
    let mut current = expr;
    loop {
        match current {
            Expr::Var { value, .. } => {
                if let Ok(name) = value.as_string() {
                    reversed.push(name.to_string());
                }
                break;
            }
            Expr::RefDot { refr, field, .. } => {
                reversed.push(
                    field
                        .1
                        .as_string()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                );
                current = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        reversed.push(value.as_string().map(|s| s.to_string()).unwrap_or_default())
                    }
                    // A dynamic index: only what comes before it is static.
                    _ => reversed.clear(),
                }
                current = refr;
            }
            _ => {
                reversed.clear();
                break;
            }
        }
    }
    reversed.reverse();
    reversed
}

/// Collects the references of one rule's bodies.
struct Walker<'a> {
    package: &'a [String],
    aliases: &'a BTreeMap<String, Vec<String>>,
    /// Variables in scope (the rule's arguments, then each body, comprehension and `every`
    /// inside it): they shadow rule names.
    scopes: Vec<BTreeSet<String>>,
    refs: Vec<Vec<String>>,
}

impl Walker<'_> {
    fn declare(&mut self, name: &str) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.insert(name.to_owned());
        }
    }

    fn is_local(&self, name: &str) -> bool {
        self.scopes.iter().any(|scope| scope.contains(name))
    }

    /// Records the variables a pattern binds (an argument, the left side of `:=`, `some x`).
    fn bind(&mut self, pattern: &Expr) {
        pattern_vars(pattern, &mut |name| self.declare(name));
    }

    /// Declares the variables a query's own statements bind (not those of nested queries, which
    /// get their own scope when walked).
    fn collect_locals(&mut self, query: &Query) {
        statement_vars(&query.stmts, true, &mut |name| self.declare(name));
    }

    fn query(&mut self, query: &Query) {
        for stmt in &query.stmts {
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => self.membership(key.as_ref(), value, collection),
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    self.expr(domain);
                    self.scopes.push(BTreeSet::new());
                    if let Some(key) = key {
                        self.declare(key.text());
                    }
                    self.declare(value.text());
                    self.collect_locals(query);
                    self.query(query);
                    self.scopes.pop();
                }
            }
            for with in &stmt.with_mods {
                self.expr(&with.r#as);
            }
        }
    }

    fn reference(&mut self, expr: &Expr) {
        let path = static_path(expr);
        let Some(root) = path.first() else { return };
        let resolved = if root == "data" {
            path
        } else if root == "input" || self.is_local(root) {
            return;
        } else if let Some(alias) = self.aliases.get(root) {
            alias.iter().chain(&path[1..]).cloned().collect()
        } else {
            // A bare name: a rule of this package (or a builtin, which matches no rule).
            self.package.iter().chain(&path).cloned().collect()
        };
        self.refs.push(resolved);
    }

    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { .. } => self.reference(expr),
            Expr::RefDot { refr, .. } => {
                self.reference(expr);
                self.walk_ref_indices(refr);
            }
            Expr::RefBrack { refr, index, .. } => {
                self.reference(expr);
                self.expr(index);
                self.walk_ref_indices(refr);
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().for_each(|item| self.expr(item))
            }
            Expr::Object { fields, .. } => {
                for (_, key, value) in fields {
                    self.expr(key);
                    self.expr(value);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.scopes.push(BTreeSet::new());
                self.collect_locals(query);
                self.expr(term);
                self.query(query);
                self.scopes.pop();
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.scopes.push(BTreeSet::new());
                self.collect_locals(query);
                self.expr(key);
                self.expr(value);
                self.query(query);
                self.scopes.pop();
            }
            Expr::Call { fcn, params, .. } => {
                self.reference(fcn);
                params.iter().for_each(|param| self.expr(param));
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => self.membership(key.as_ref(), value, collection),
        }
    }

    /// `key, value in collection` (a `some ... in` or a membership test).
    fn membership(&mut self, key: Option<&Ref<Expr>>, value: &Expr, collection: &Expr) {
        if let Some(key) = key {
            self.expr(key);
        }
        self.expr(value);
        self.expr(collection);
    }

    /// The dynamic indices inside a reference chain (`a[f(x)].b`): the chain itself was recorded.
    fn walk_ref_indices(&mut self, mut expr: &Expr) {
        loop {
            match expr {
                Expr::RefDot { refr, .. } => expr = refr,
                Expr::RefBrack { refr, index, .. } => {
                    self.expr(index);
                    expr = refr;
                }
                Expr::Var { .. } => return,
                // A call or a literal at the root (`f(x).a`): walk it whole.
                root => return self.expr(root),
            }
        }
    }
}
