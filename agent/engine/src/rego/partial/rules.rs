//! The rules of a set by path (every definition, the module it is in, whether its head is a
//! static path), and how names resolve in each module (package, import aliases, rule names):
//! what the partial evaluator inlines and how it reads each module's bodies.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Module, Ref, Rule, RuleHead};

use super::render::{ModuleNames, static_ref};
use crate::rego::bindings::import_aliases;
use crate::rego::recursion::static_path;

/// One rule definition and the module it is in.
pub(super) struct Def {
    pub module: usize,
    pub rule: Ref<Rule>,
    /// Its head is a static path (`a.b.c`), not `a[x]`.
    pub exact: bool,
}

/// Every rule of a set by path, and how names resolve in each module.
pub(super) struct Rules {
    pub names: Vec<ModuleNames>,
    /// The top-level query's names: no package, no imports.
    pub query_names: ModuleNames,
    pub by_path: BTreeMap<Vec<String>, Vec<Def>>,
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
            let aliases = import_aliases(module, &["data", "input"]);
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
