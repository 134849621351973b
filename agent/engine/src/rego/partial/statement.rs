//! A statement that reads unknowns, taken apart into a template ([`Piece`]): its operands
//! ([`Side`]: an unknown reference, a known operand left as a hole for the known query, or a rule
//! to inline) and its operator, or a refusal naming the construct and where it is.

use regorus::unstable::{AssignOp, Expr, Literal, LiteralStmt};

use super::PartialError;
use super::deps::{RefKey, ref_parts, to_values};
use super::eval::{Evaluator, location, start, unsupported};
use super::render::{Name, Scope, path_text};
use super::residual::{Op, Term};
use super::template::{Build, Key, Piece, Side, Tpl};

impl Evaluator<'_> {
    /// The operand `expr` of a statement that reads unknowns.
    pub(super) fn side(
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
    pub(super) fn key(
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
    pub(super) fn piece(
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
