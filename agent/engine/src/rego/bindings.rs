//! What names mean in a module, as both walkers of regorus's parsed modules need it (the recursion
//! check and partial evaluation): the variables a pattern or a query's own statements bind, which
//! shadow rule names, and the aliases a module's imports give.

use std::collections::BTreeMap;

use regorus::unstable::{AssignOp, Expr, Literal, LiteralStmt, Module};

use super::recursion::static_path;

/// Calls `declare` with each variable `pattern` binds (`x`, `[x, y]`, `{"k": x}`).
pub(super) fn pattern_vars(pattern: &Expr, declare: &mut dyn FnMut(&str)) {
    match pattern {
        Expr::Var { value, .. } => {
            if let Ok(name) = value.as_string() {
                declare(name.as_ref());
            }
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|item| pattern_vars(item, declare))
        }
        Expr::Object { fields, .. } => fields
            .iter()
            .for_each(|(_, _, value)| pattern_vars(value, declare)),
        _ => {}
    }
}

/// Calls `declare` with the variables `stmts` declare themselves (not those of nested queries):
/// `some x`, `some k, v in ...`, the left side of `:=`, and with `unify` the left side of `=`.
pub(super) fn statement_vars(stmts: &[LiteralStmt], unify: bool, declare: &mut dyn FnMut(&str)) {
    for stmt in stmts {
        match &stmt.literal {
            Literal::SomeVars { vars, .. } => vars.iter().for_each(|var| declare(var.text())),
            Literal::SomeIn { key, value, .. } => {
                if let Some(key) = key {
                    pattern_vars(key, declare);
                }
                pattern_vars(value, declare);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                if let Expr::AssignExpr { op, lhs, .. } = expr.as_ref()
                    && (unify || matches!(op, AssignOp::ColEq))
                {
                    pattern_vars(lhs, declare);
                }
            }
            Literal::Every { .. } => {}
        }
    }
}

/// The aliases `module`'s imports rooted at one of `roots` give: `import data.a.b` makes `b` mean
/// `data.a.b`; `import data.a.b as c` makes `c` mean it.
pub(super) fn import_aliases(module: &Module, roots: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut aliases = BTreeMap::new();
    for import in &module.imports {
        let path = static_path(&import.refr);
        if !path
            .first()
            .is_some_and(|root| roots.contains(&root.as_str()))
        {
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
    aliases
}
