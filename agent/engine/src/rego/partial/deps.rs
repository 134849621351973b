//! What reads unknowns: a reference that overlaps an unknown, a rule or function whose
//! definitions read one (memoized per request), a variable bound to one; and the parts of a
//! reference (its root and keys) the evaluator works with.

use std::collections::BTreeSet;

use regorus::Value;
use regorus::unstable::{Expr, Literal, LiteralStmt, Rule, RuleHead};

use super::PartialError;
use super::eval::{Evaluator, unsupported};
use super::render::{Name, Scope, path_text, static_ref};

pub(super) fn to_values(path: &[String]) -> Vec<Value> {
    path.iter().map(|s| Value::from(s.as_str())).collect()
}

/// The parts of a reference: its root variable and its keys (a literal, or an expression).
pub(super) enum RefKey<'e> {
    Static(Value),
    Dyn(&'e Expr),
}

pub(super) fn ref_parts(expr: &Expr) -> Option<(String, Vec<RefKey<'_>>)> {
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

impl<'a> Evaluator<'a> {
    // ---- what depends on unknowns ----

    /// Whether the document at `path` (then `keys`) reads unknowns: it overlaps an unknown, or a
    /// rule that reads unknowns.
    pub(super) fn path_dep(
        &mut self,
        path: &[String],
        keys: &[RefKey<'_>],
    ) -> Result<bool, PartialError> {
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
    pub(super) fn rule_dep(&mut self, path: &[String]) -> Result<bool, PartialError> {
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

    pub(super) fn stmt_dep(
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
    pub(super) fn expr_dep(
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
}
