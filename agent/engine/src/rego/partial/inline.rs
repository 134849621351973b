//! Inlining: a rule that reads unknowns becomes alternatives (one per body and solution of its
//! known part: residual conditions and the rule's value), and a statement that uses it becomes
//! one residual query per alternative that can hold. A `default` that could decide the question,
//! `else`, partial rules and functions are refused.

use std::rc::Rc;

use regorus::Value;
use regorus::unstable::{Rule, RuleHead};

use super::eval::{BodyOut, Evaluator, HeadValue, location, unsupported};
use super::render::path_text;
use super::residual::{Residual, Term};
use super::rules::Def;
use super::template::{Piece, Side, fill};
use super::{MAX_INLINE_DEPTH, MAX_RESIDUAL_QUERIES, PartialError};
use crate::rego::Location;

/// What a rule can be inlined as: one alternative per body that can hold.
pub(super) struct Inlined {
    alts: Vec<Alt>,
    default: Option<Value>,
    location: Location,
}

/// One body of a rule: the residual conditions under which it holds, and its value then.
#[derive(Clone)]
pub(super) struct Alt {
    residuals: Vec<Residual>,
    value: Term,
}

impl<'a> Evaluator<'a> {
    // ---- expansion ----

    /// The alternatives (OR) a statement becomes for one solution of the known part.
    pub(super) fn expand(
        &mut self,
        piece: &Piece,
        row: &[Value],
    ) -> Result<Vec<Vec<Residual>>, PartialError> {
        let collected = match piece {
            Piece::Call { collected, .. } | Piece::Truthy { collected, .. } => *collected,
        };
        let Some(hole) = collected else {
            return self.expand_one(piece, row);
        };
        // `not e` for every value of the collected operand: all must hold (none: it holds).
        let values: Vec<Value> = match row.get(hole) {
            Some(Value::Array(items)) => items.iter().cloned().collect(),
            _ => Vec::new(),
        };
        let mut all = Vec::new();
        for value in values {
            let mut one = row.to_vec();
            one[hole] = value;
            let mut alternatives = self.expand_one(piece, &one)?;
            match alternatives.len() {
                0 => return Ok(Vec::new()),
                1 => all.append(&mut alternatives[0]),
                _ => {
                    return Err(PartialError::TooLarge(
                        "a negated expression expanded into alternatives".into(),
                    ));
                }
            }
        }
        Ok(vec![all])
    }

    fn expand_one(
        &mut self,
        piece: &Piece,
        row: &[Value],
    ) -> Result<Vec<Vec<Residual>>, PartialError> {
        match piece {
            Piece::Truthy {
                side,
                negated,
                location,
                ..
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
                ..
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
                            return Ok(if holds != *negated {
                                vec![vec![]]
                            } else {
                                vec![]
                            });
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
                                    let (a, b) = if rule_first {
                                        (default, v)
                                    } else {
                                        (v, default)
                                    };
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
    pub(super) fn inline(&mut self, path: &[String]) -> Result<Rc<Inlined>, PartialError> {
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
                    format!(
                        "the rule `{name}` with a variable in its head, which depends on unknowns"
                    ),
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
