//! The templates a body's statements that read unknowns become before the known query runs:
//! operands with holes for the values the known part binds ([`Tpl`]), the statements made of
//! them ([`Piece`]), what the known query must bind ([`Build`]), and filling a template from one
//! solution of that query ([`fill`]).

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;
use regorus::unstable::Expr;

use super::render::{Scope, Writer};
use super::residual::{Op, Term};
use crate::rego::Location;

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

/// What a body's statements that read unknowns need from its known part.
#[derive(Default)]
pub(super) struct Build {
    /// Known operands, as Rego text; each is bound to `__pe_<index>` in the known query.
    pub(super) holes: Vec<String>,
    /// Variables bound to an unknown reference.
    pub(super) templates: BTreeMap<String, Tpl>,
    /// Variables the known statements bind.
    pub(super) known_vars: BTreeSet<String>,
    pub(super) tainted: BTreeSet<String>,
}

impl Tpl {
    /// The holes this operand reads.
    pub(super) fn holes(&self, out: &mut Vec<usize>) {
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
    pub(super) fn collect(&mut self, index: usize) {
        let expr = &self.holes[index];
        self.holes[index] = format!("[__pe_v{index} | __pe_v{index} := {expr}]");
    }

    pub(super) fn hole(&mut self, expr: &Expr, scope: &mut Scope<'_>) -> usize {
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
