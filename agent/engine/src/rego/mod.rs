//! Rego, through `regorus`: the compiled set of modules and data, and its evaluation.
//!
//! A [`RegoSet`] is built whole from the stored modules and data (by `opa::RegoService`) and swapped
//! in atomically, like the incident [`PolicySet`](super::PolicySet). regorus evaluates with
//! `&mut self`, so instead of locking one engine, every thread that evaluates keeps its own clone of
//! the prepared engine of the current set (clones share the parsed modules) and re-clones only when
//! the set changes. Every evaluation runs under the configured time limit (regorus checks it
//! cooperatively as it works).
//!
//! A rule path (`data.pkg.rule`) is evaluated by regorus's register VM: the first evaluation of a
//! path on a thread compiles the rule to a program (once per set), and later ones run the program,
//! several times faster than the tree-walking interpreter. Paths the VM cannot take (packages,
//! data, rules it cannot compile) go to the interpreter.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;

mod bindings;
mod outline;
mod parse_cost;
pub mod partial;
mod path;
mod recursion;

pub use outline::{ModuleOutline, outline};
pub use path::data_path;
use path::path_components;

/// regorus's answer when a path is not a rule (a package, data, or a partial path): such paths are
/// evaluated as a query instead.
const NOT_A_RULE: &str = "not a valid rule path";

/// One Rego module to compile.
#[derive(Debug, Clone)]
pub struct ModuleSource {
    /// The module id (OPA's policy id), used as the file name in error locations.
    pub id: String,
    pub text: String,
}

/// Where a compile error is, in OPA's terms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    pub file: String,
    pub row: u32,
    pub col: u32,
}

/// One compile error, in OPA's shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CompileError {
    /// `rego_parse_error`, `rego_compile_error` or `rego_recursion_error`.
    pub code: &'static str,
    pub message: String,
    pub location: Location,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Location { file, row, col } = &self.location;
        write!(f, "{file}:{row}:{col}: {}: {}", self.code, self.message)
    }
}

impl std::error::Error for CompileError {}

/// Why an evaluation gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("evaluation of {path} exceeded its time limit of {limit_ms} ms")]
    TimeLimit { path: String, limit_ms: u64 },
    #[error(
        "evaluation of {path} stopped: the agent's memory reached rego.max_memory_bytes ({limit} bytes)"
    )]
    MemoryLimit { path: String, limit: u64 },
    #[error("evaluation of {path} failed: {message}")]
    Failed { path: String, message: String },
    #[error("`{path}` is not a valid data path: {message}")]
    InvalidPath { path: String, message: String },
    #[error("the query is not valid: {message}")]
    InvalidQuery { message: String },
}

impl EvalError {
    /// A short label for metrics and error codes.
    pub fn kind(&self) -> &'static str {
        match self {
            EvalError::TimeLimit { .. } => "evaluation_timeout",
            EvalError::MemoryLimit { .. } => "evaluation_memory",
            EvalError::Failed { .. } => "evaluation_error",
            EvalError::InvalidPath { .. } => "invalid_path",
            EvalError::InvalidQuery { .. } => "invalid_query",
        }
    }
}

/// Limits that apply to every evaluation.
#[derive(Debug, Clone, Copy)]
pub struct RegoSettings {
    pub time_limit: Duration,
}

/// Compiled modules and data at one store revision.
pub struct RegoSet {
    template: regorus::Engine,
    /// The `data` tree, for the VM programs.
    data: regorus::Value,
    /// Distinguishes sets for the per-thread clones (revisions can repeat across restarts).
    generation: u64,
    revision: u64,
    settings: RegoSettings,
    modules: usize,
    /// The package of every module (`["data", "a", "b"]`): a path outside all of them is data
    /// only, read from `data` without evaluating anything.
    packages: Vec<Vec<String>>,
    /// Each module's outline (package, rule names), by module id: made once, when the set is
    /// built, for `GET /v1/policies`.
    outlines: HashMap<String, ModuleOutline>,
    /// The revision of every bundle in the set, by bundle name (decision logs carry them).
    bundles: Arc<BTreeMap<String, String>>,
    /// The parsed modules (shared with the engine), for partial evaluation.
    modules_ast: Vec<regorus::unstable::Ref<regorus::unstable::Module>>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's clone of the current set's engine: (generation, engine).
    static WORKER: RefCell<Option<(u64, regorus::Engine)>> = const { RefCell::new(None) };
    /// This thread's VM programs of the current set, by rule path (`None`: the VM cannot take it).
    static PROGRAMS: RefCell<(u64, HashMap<String, Option<RegoVM>>)> = RefCell::new((0, HashMap::new()));
}

fn timer(settings: RegoSettings) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: settings.time_limit,
        // Checking the clock every 64 work units keeps the overhead small and the overrun short.
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    }
}

impl RegoSet {
    /// Compiles `modules` with `data` (one JSON object, the root of `data`). On error nothing is
    /// built: the caller keeps the set it had.
    pub fn build(
        modules: &[ModuleSource],
        data: serde_json::Value,
        revision: u64,
        settings: RegoSettings,
    ) -> Result<RegoSet, CompileError> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(timer(settings));
        let mut units = 0;
        for module in modules {
            units += parse_cost::check(&module.id, &module.text)?;
            if units > parse_cost::MAX_SET_UNITS {
                return Err(CompileError {
                    code: "rego_parse_error",
                    message: format!(
                        "the modules together would take too long to parse (over {} units by \
                         this one; see its nested literals); remove or split modules",
                        parse_cost::MAX_SET_UNITS
                    ),
                    location: Location {
                        file: module.id.clone(),
                        row: 1,
                        col: 1,
                    },
                });
            }
            engine
                .add_policy(module.id.clone(), module.text.clone())
                .map_err(|err| compile_error("rego_parse_error", &module.id, &err))?;
        }
        // Before anything evaluates: regorus would recurse until the stack overflows.
        recursion::check(engine.get_modules())?;
        let modules_ast = engine.get_modules().clone();
        let packages = engine
            .get_modules()
            .iter()
            .map(|module| {
                let mut path = vec!["data".to_owned()];
                path.extend(recursion::static_path(&module.package.refr));
                path
            })
            .collect();
        let data = regorus::Value::from(data);
        engine
            .add_data(data.clone())
            .map_err(|err| compile_error("rego_compile_error", "data", &err))?;
        // Preparing (dependency analysis, scheduling) happens on first evaluation: do it now, so
        // that errors surface when a module is saved and clones start prepared.
        let file = modules.last().map_or("data", |m| m.id.as_str());
        engine
            .eval_query("true".into(), false)
            .map_err(|err| compile_error("rego_compile_error", file, &err))?;
        Ok(RegoSet {
            template: engine,
            data,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            revision,
            settings,
            modules: modules.len(),
            packages,
            outlines: modules
                .iter()
                .filter_map(|m| outline(&m.id, &m.text).ok().map(|o| (m.id.clone(), o)))
                .collect(),
            bundles: Arc::default(),
            modules_ast,
        })
    }

    /// An empty set (no modules, empty data).
    pub fn empty(settings: RegoSettings) -> RegoSet {
        let mut template = regorus::Engine::new();
        template.set_execution_timer_config(timer(settings));
        RegoSet {
            template,
            data: regorus::Value::new_object(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            revision: 0,
            settings,
            modules: 0,
            packages: Vec::new(),
            outlines: HashMap::new(),
            bundles: Arc::default(),
            modules_ast: Vec::new(),
        }
    }

    /// The same set, at the store revision its change was committed as.
    pub fn at_revision(mut self, revision: u64) -> RegoSet {
        self.revision = revision;
        self
    }

    /// The same set, saying which bundles (name -> revision) it holds.
    pub fn with_bundles(mut self, bundles: BTreeMap<String, String>) -> RegoSet {
        self.bundles = Arc::new(bundles);
        self
    }

    /// The revision of every bundle in this set, by name.
    pub fn bundle_revisions(&self) -> Arc<BTreeMap<String, String>> {
        Arc::clone(&self.bundles)
    }

    /// The store revision this set was built from: part of every cache key.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn module_count(&self) -> usize {
        self.modules
    }

    /// The outline of module `id`, if it is in this set.
    pub fn outline(&self, id: &str) -> Option<&ModuleOutline> {
        self.outlines.get(id)
    }

    /// Evaluates `path` (`data.a.b`) with `input`; `Ok(None)` when it is undefined.
    pub fn evaluate(
        &self,
        path: &str,
        input: Option<regorus::Value>,
    ) -> Result<Option<regorus::Value>, EvalError> {
        // Only paths as the agent writes them (`data.a.b`, `data.a["b-c"]`) reach regorus: its
        // query parser has the same exponential nesting as its module parser (found by fuzzing).
        let Some(components) = path_components(path) else {
            return Err(EvalError::InvalidPath {
                path: path.chars().take(200).collect(),
                message: "a data path is `data` followed by `.name` or `[\"key\"]` segments".into(),
            });
        };
        if let Some(value) = self.read_data(&components) {
            return Ok(value);
        }
        let input = input.unwrap_or(regorus::Value::Undefined);
        if let Some(result) = self.run_program(path, &input) {
            return result;
        }
        self.interpret(path, input)
    }

    /// The data at `path` when no module's package is above or below it: pure data needs no
    /// evaluation (and no time limit, however large it is). `None`: evaluate it.
    fn read_data(&self, components: &[String]) -> Option<Option<regorus::Value>> {
        let overlaps = self
            .packages
            .iter()
            .any(|package| package.starts_with(components) || components.starts_with(package));
        if overlaps {
            return None;
        }
        let mut value = &self.data;
        for key in &components[1..] {
            match value {
                regorus::Value::Object(fields) => {
                    match fields.get(&regorus::Value::from(key.as_str())) {
                        Some(next) => value = next,
                        None => return Some(None),
                    }
                }
                _ => return Some(None),
            }
        }
        Some(Some(value.clone()))
    }

    /// Runs the VM program of `path`, compiling it on first use; `None` if the VM cannot take it.
    fn run_program(
        &self,
        path: &str,
        input: &regorus::Value,
    ) -> Option<Result<Option<regorus::Value>, EvalError>> {
        PROGRAMS.with(|cell| {
            let mut programs = cell.borrow_mut();
            if programs.0 != self.generation {
                *programs = (self.generation, HashMap::new());
            }
            if !programs.1.contains_key(path) {
                let vm = self.compile_program(path);
                programs.1.insert(path.to_owned(), vm);
            }
            let vm = programs.1.get_mut(path)?.as_mut()?;
            vm.set_input(input.clone());
            Some(match vm.execute_entry_point_by_name(path) {
                Ok(value) => Ok((value != regorus::Value::Undefined).then_some(value)),
                Err(regorus::rvm::vm::VmError::TimeLimitExceeded { .. }) => {
                    Err(EvalError::TimeLimit {
                        path: path.to_owned(),
                        limit_ms: self.settings.time_limit.as_millis() as u64,
                    })
                }
                Err(regorus::rvm::vm::VmError::MemoryLimitExceeded { limit, .. }) => {
                    Err(EvalError::MemoryLimit {
                        path: path.to_owned(),
                        limit,
                    })
                }
                Err(err) => Err(self.eval_error(path, &anyhow::anyhow!("{err}"))),
            })
        })
    }

    /// Whether `path` runs on the VM (a rule the compiler takes) rather than the interpreter.
    pub fn runs_on_vm(&self, path: &str) -> bool {
        self.compile_program(path).is_some()
    }

    fn compile_program(&self, path: &str) -> Option<RegoVM> {
        let mut engine = self.template.clone();
        let compiled = engine.compile_with_entrypoint(&path.into()).ok()?;
        let program = Compiler::compile_from_policy(&compiled, &[path]).ok()?;
        let mut vm = RegoVM::new_with_policy(compiled);
        vm.load_program(program);
        vm.set_data(self.data.clone()).ok()?;
        // The VM's own default stops after 25,000 instructions; the time limit is what bounds an
        // evaluation here, as it does for the interpreter.
        vm.set_max_instructions(usize::MAX);
        vm.set_execution_timer_config(Some(timer(self.settings)));
        Some(vm)
    }

    /// Evaluates with this thread's clone of the interpreter.
    fn interpret(
        &self,
        path: &str,
        input: regorus::Value,
    ) -> Result<Option<regorus::Value>, EvalError> {
        WORKER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let engine = match &mut *slot {
                Some((generation, engine)) if *generation == self.generation => engine,
                _ => {
                    *slot = Some((self.generation, self.template.clone()));
                    match &mut *slot {
                        Some((_, engine)) => engine,
                        None => unreachable!("just set"),
                    }
                }
            };
            engine.set_input(input);
            let value = match engine.eval_rule(path.to_owned()) {
                Ok(value) => value,
                Err(err) if err.to_string() == NOT_A_RULE => self.query(engine, path)?,
                Err(err) => return Err(self.eval_error(path, &err)),
            };
            Ok((value != regorus::Value::Undefined).then_some(value))
        })
    }

    /// An ad-hoc query (OPA's `/v1/query`: `x := data.a.b with input as {...}; y := 1`): one
    /// row per solution, each the query's variables bound to their values (an empty row when the
    /// query holds and binds nothing; no row when it is false). The query's text is checked for
    /// parse cost first (regorus's parser nests exponentially), and it runs under the same time
    /// and memory limits as a decision.
    pub fn ad_hoc(
        &self,
        query: &str,
        input: Option<regorus::Value>,
    ) -> Result<Vec<regorus::Value>, EvalError> {
        const MAX_QUERY_BYTES: usize = 64 * 1024;
        let shown: String = query.chars().take(200).collect();
        if query.len() > MAX_QUERY_BYTES {
            return Err(EvalError::InvalidQuery {
                message: format!("a query is at most {MAX_QUERY_BYTES} bytes"),
            });
        }
        if let Err(err) = parse_cost::check("<query>", query) {
            return Err(EvalError::InvalidQuery {
                message: err.message,
            });
        }
        let mut engine = self.template.clone();
        // `print` in a query is gathered (and dropped), not written to the agent's stderr.
        engine.set_gather_prints(true);
        engine.set_input(input.unwrap_or(regorus::Value::Undefined));
        let results = engine.eval_query(query.to_owned(), false).map_err(|err| {
            match self.eval_error(&shown, &err) {
                EvalError::InvalidPath { message, .. } => EvalError::InvalidQuery { message },
                other => other,
            }
        })?;
        Ok(results
            .result
            .into_iter()
            // As OPA: a solution holds only if every expression of it does (regorus also
            // returns the rows whose comparison came out false).
            .filter(|row| {
                row.expressions.iter().all(|e| {
                    e.value != regorus::Value::Bool(false) && e.value != regorus::Value::Undefined
                })
            })
            .map(|row| match row.bindings {
                regorus::Value::Undefined => regorus::Value::new_object(),
                bindings => bindings,
            })
            .collect())
    }

    fn query(&self, engine: &mut regorus::Engine, path: &str) -> Result<regorus::Value, EvalError> {
        let results = engine
            .eval_query(path.to_owned(), false)
            .map_err(|err| self.eval_error(path, &err))?;
        Ok(results
            .result
            .into_iter()
            .next()
            .and_then(|r| r.expressions.into_iter().next())
            .map_or(regorus::Value::Undefined, |e| e.value))
    }

    fn eval_error(&self, path: &str, err: &anyhow::Error) -> EvalError {
        let memory =
            err.chain()
                .find_map(|cause| match cause.downcast_ref::<regorus::LimitError>() {
                    Some(regorus::LimitError::MemoryLimitExceeded { limit, .. }) => Some(*limit),
                    _ => None,
                });
        if let Some(limit) = memory {
            return EvalError::MemoryLimit {
                path: path.to_owned(),
                limit,
            };
        }
        let timed_out = err.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<regorus::LimitError>(),
                Some(regorus::LimitError::TimeLimitExceeded { .. })
            )
        }) || err.to_string().contains("exceeded time limit");
        if timed_out {
            return EvalError::TimeLimit {
                path: path.to_owned(),
                limit_ms: self.settings.time_limit.as_millis() as u64,
            };
        }
        let message = format!("{err:#}");
        // regorus names a query's source `<query.rego>` (0.14) or `<query>`.
        if message.contains("--> <query") || message.contains("<query>:") {
            return EvalError::InvalidPath {
                path: path.to_owned(),
                message: last_error_line(&message).to_owned(),
            };
        }
        EvalError::Failed {
            path: path.to_owned(),
            message: last_error_line(&message).to_owned(),
        }
    }
}

/// Makes every Rego evaluation stop (with [`EvalError::MemoryLimit`]) while the process holds more
/// than `bytes` (`rego.max_memory_bytes`). regorus counts every allocation through its allocator
/// (its `allocator-memory-limits` feature makes it the process's global allocator) and checks the
/// total as it works, inside builtins too: `numbers.range(1, 100000000)` stops at the limit instead
/// of taking gigabytes. The limit is process-wide, so concurrent evaluations share it.
pub fn set_memory_limit(bytes: u64) {
    regorus::set_global_memory_limit(Some(bytes));
}

/// Holds the current [`RegoSet`].
pub struct RegoEngine {
    set: ArcSwap<RegoSet>,
}

impl RegoEngine {
    pub fn new(settings: RegoSettings) -> RegoEngine {
        RegoEngine {
            set: ArcSwap::from_pointee(RegoSet::empty(settings)),
        }
    }

    pub fn current(&self) -> Arc<RegoSet> {
        self.set.load_full()
    }

    pub fn replace(&self, set: RegoSet) {
        self.set.store(Arc::new(set));
    }
}

/// Turns a regorus error (`\n--> file:row:col\n ... \nerror: message`) into OPA's shape.
fn compile_error(code: &'static str, default_file: &str, err: &anyhow::Error) -> CompileError {
    let text = format!("{err:#}");
    let mut location = Location {
        file: default_file.to_owned(),
        row: 0,
        col: 0,
    };
    if let Some(rest) = text.split("--> ").nth(1) {
        let head = rest.lines().next().unwrap_or_default();
        let mut parts = head.rsplitn(3, ':');
        let col = parts.next().and_then(|c| c.trim().parse().ok());
        let row = parts.next().and_then(|r| r.trim().parse().ok());
        if let (Some(col), Some(row), Some(file)) = (col, row, parts.next()) {
            location = Location {
                file: file.to_owned(),
                row,
                col,
            };
        }
    }
    CompileError {
        code,
        message: last_error_line(&text).to_owned(),
        location,
    }
}

/// The `error: ...` line of a regorus message, or the whole message if it has none.
fn last_error_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .unwrap_or_else(|| text.trim())
}

#[cfg(test)]
mod tests;
