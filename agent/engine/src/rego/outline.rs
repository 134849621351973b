//! A module's outline, as OPA's `GET /v1/policies` gives it in `ast`: the package path and the
//! names of its rules. Clients read these (the Python `opa-python-client` builds each rule's URL
//! from them); the rest of OPA's AST (bodies, terms) is not reproduced.

use regorus::unstable::{Rule, RuleHead};

use super::recursion::static_path;
use super::{CompileError, compile_error, parse_cost};

/// The package (`["data", "example", "authz"]`) and rule names (in order, once each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleOutline {
    pub package: Vec<String>,
    pub rules: Vec<String>,
}

/// Parses `text` (module `id`) alone; a module the store holds parsed when it was saved.
pub fn outline(id: &str, text: &str) -> Result<ModuleOutline, CompileError> {
    parse_cost::check(id, text)?;
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(id.to_owned(), text.to_owned())
        .map_err(|err| compile_error("rego_parse_error", id, &err))?;
    let mut outline = ModuleOutline {
        package: Vec::new(),
        rules: Vec::new(),
    };
    for module in engine.get_modules() {
        outline.package = vec!["data".to_owned()];
        outline.package.extend(static_path(&module.package.refr));
        for rule in &module.policy {
            let refr = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. }
                    | RuleHead::Set { refr, .. }
                    | RuleHead::Func { refr, .. } => refr,
                },
                Rule::Default { refr, .. } => refr,
            };
            // A rule's name is the first part of its head (`a` of `a.b.c := ...`).
            if let Some(name) = static_path(refr)
                .into_iter()
                .find(|segment| segment != "data")
                && !outline.rules.contains(&name)
            {
                outline.rules.push(name);
            }
        }
    }
    Ok(outline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_and_rule_names() {
        let text = "package example.authz\nimport rego.v1\ndefault allow := false\nallow if input.user == \"a\"\nadmins contains \"b\"\nf(x) := x\n";
        let outline = outline("a.rego", text).unwrap();
        assert_eq!(outline.package, ["data", "example", "authz"]);
        assert_eq!(outline.rules, ["allow", "admins", "f"]);
    }
}
