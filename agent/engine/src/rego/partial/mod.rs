//! Partial evaluation of a query over a [`RegoSet`], for OPA's Compile API (`POST /v1/compile`
//! and `POST /v1/compile/{path}`): what is known (the given `input`, `data`, rules that read no
//! unknown) is evaluated by regorus; what reads an unknown (`input` by default, or the refs the
//! caller names) is left as residual queries, one per way the query can hold.
//!
//! The evaluator is restricted, and refuses ([`PartialError::Unsupported`], with the construct
//! and its `file:row:col`) what it cannot answer exactly: `eval.rs` splits bodies into known and
//! unknown parts, `deps.rs` finds what reads unknowns, `inline.rs` inlines rules, `rules.rs`
//! indexes them. `residual.rs` has what it leaves, `ast_json.rs` writes that in OPA's AST JSON, `ucast.rs` and `sql.rs` translate it into
//! data filters (UCAST conditions, SQL `WHERE` clauses) within each target's limits, and
//! `render.rs` writes the known statements back as Rego for regorus to evaluate.
//!
//! Work is bounded as `/v1/query`'s is (query bytes, parse cost, the Rego time limit over the
//! whole request) and by [`MAX_RESIDUAL_QUERIES`], [`MAX_INLINE_DEPTH`] and [`MAX_EVALUATIONS`].

mod ast_json;
mod deps;
mod eval;
mod inline;
mod render;
mod residual;
mod rules;
pub mod sql;
mod statement;
mod template;
pub mod ucast;

#[cfg(test)]
mod tests;

pub use residual::{Op, Residual, Term};

use regorus::unstable::{Parser, Source};

use super::path::ref_components;
use super::{EvalError, Location, RegoSet, data_path, last_error_line, parse_cost};

/// Bytes of a query's text (as `/v1/query`).
pub(super) const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Residual queries one request may produce (and alternatives one rule may inline as).
pub const MAX_RESIDUAL_QUERIES: usize = 1_000;
/// How deep rules that read unknowns may be inlined into each other.
pub const MAX_INLINE_DEPTH: usize = 32;
/// Evaluations of known parts (one per body inlined) one request may take.
pub const MAX_EVALUATIONS: usize = 1_000;

/// What to partially evaluate.
#[derive(Debug, Clone, Copy)]
pub enum CompileQuery<'q> {
    /// A query, as `POST /v1/compile` takes it (`data.example.allow == true`).
    Text(&'q str),
    /// A rule's slash path, as `POST /v1/compile/{path}` takes it: the query `data.<path>`.
    Rule(&'q str),
}

/// Why a query was not partially evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    #[error("the query is not valid: {message}")]
    InvalidQuery { message: String },
    #[error("the unknown `{unknown}` is not valid: {message}")]
    InvalidUnknown { unknown: String, message: String },
    #[error(
        "{}:{}:{}: partial evaluation here does not support {construct}",
        location.file, location.row, location.col
    )]
    Unsupported {
        construct: String,
        location: Location,
    },
    #[error("partial evaluation stopped: {0}")]
    TooLarge(String),
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// The residual queries of a partial evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Residuals {
    /// `None`: the query can never be true. An empty query in the list: it is always true.
    pub queries: Option<Vec<Vec<Residual>>>,
}

impl Residuals {
    /// OPA's `result` of `POST /v1/compile`: `{"queries": [...]}`, or `{}` when never true.
    pub fn to_opa_json(&self) -> serde_json::Value {
        match &self.queries {
            Some(queries) => serde_json::json!({ "queries": ast_json::queries(queries) }),
            None => serde_json::json!({}),
        }
    }
}

impl RegoSet {
    /// Partially evaluates `query` with the known `input`, treating `unknowns` (refs under
    /// `input` or `data`; `["input"]` when not given) as unknown.
    pub fn partial(
        &self,
        query: CompileQuery<'_>,
        input: Option<regorus::Value>,
        unknowns: Option<&[String]>,
    ) -> Result<Residuals, PartialError> {
        let text = match query {
            CompileQuery::Text(text) => text.to_owned(),
            CompileQuery::Rule(path) => data_path(path),
        };
        if text.len() > MAX_QUERY_BYTES {
            return Err(PartialError::InvalidQuery {
                message: format!("a query is at most {MAX_QUERY_BYTES} bytes"),
            });
        }
        if let Err(err) = parse_cost::check("<query>", &text) {
            return Err(PartialError::InvalidQuery {
                message: err.message,
            });
        }
        let parsed = Source::from_contents("<query>".into(), text.clone())
            .and_then(|source| {
                let mut parser = Parser::new(&source)?;
                parser.enable_rego_v1()?;
                parser.parse_user_query()
            })
            .map_err(|err| PartialError::InvalidQuery {
                message: last_error_line(&format!("{err:#}")).to_owned(),
            })?;

        let unknowns = match unknowns {
            None => vec![vec!["input".to_owned()]],
            Some(list) => list
                .iter()
                .map(|u| parse_unknown(u))
                .collect::<Result<_, _>>()?,
        };
        let rules = rules::Rules::new(&self.modules_ast);
        for unknown in &unknowns {
            if unknown[0] == "data"
                && let Some(package) = rules
                    .packages
                    .iter()
                    .find(|p| p.starts_with(unknown) || unknown.starts_with(p))
            {
                return Err(PartialError::InvalidUnknown {
                    unknown: unknown.join("."),
                    message: format!(
                        "it overlaps the package `{}`: only `input` and data documents can be \
                         unknown",
                        package.join(".")
                    ),
                });
            }
        }
        let mut evaluator = eval::Evaluator::new(self, &rules, input, unknowns);
        let outs = evaluator.body(&parsed.stmts, &rules.query_names, eval::HeadValue::None)?;
        let mut seen = std::collections::BTreeSet::new();
        let mut queries = Vec::new();
        for out in outs {
            let key = ast_json::queries(std::slice::from_ref(&out.residuals)).to_string();
            if seen.insert(key) {
                queries.push(out.residuals);
            }
        }
        Ok(Residuals {
            queries: (!queries.is_empty()).then_some(queries),
        })
    }
}

/// `input`, `input.fruits`, `data.reports`, `input["a-b"]`.
fn parse_unknown(text: &str) -> Result<Vec<String>, PartialError> {
    ref_components(text, "input")
        .or_else(|| ref_components(text, "data"))
        .ok_or_else(|| PartialError::InvalidUnknown {
            unknown: text.chars().take(200).collect(),
            message: "an unknown is a reference under `input` or `data` with static keys \
                      (`input.fruits`, `data.reports`)"
                .into(),
        })
}
