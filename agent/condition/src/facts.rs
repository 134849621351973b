//! Mesh and history facts: the values a condition reads beside the incident
//! (`mesh.fraction_with('cpu_spike')`, `history.count('memory_leak', '10m')`, ...).
//!
//! The condition language only names them; their values come from whoever evaluates, through
//! [`Facts`]: the decision layer answers from this node's gossiped view of the mesh and from the
//! index it keeps beside the audit ring. A fact that has no value (no mesh view, a policy that never
//! matched) is *missing*, exactly like a missing incident field.

use std::fmt;

use crate::printer::QuotedStr;

/// A fact as written in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// `mesh.nodes_alive`: alive members this node sees, itself included.
    NodesAlive,
    /// `mesh.nodes_with('type')`: alive members (this one included) with an incident of that type
    /// in the sliding window.
    NodesWith(String),
    /// `mesh.fraction_with('type')`: `nodes_with / nodes_alive`, from 0 to 1.
    FractionWith(String),
    /// `mesh.max_severity('type')`: the highest severity of that type among alive members.
    MaxSeverity(String),
    /// `history.count('type', '10m')`: incidents of that type on this node within the window, the
    /// one being evaluated included.
    HistoryCount { kind: String, window: Window },
    /// `history.last_matched('policy name')`: seconds since that policy last matched on this node.
    LastMatched(String),
}

/// A window length as written (`'90s'`, `'10m'`, `'2h'`, `'1d'`) and in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub text: String,
    pub millis: u64,
}

/// The longest window a history fact may ask for (the audit ring rarely holds more).
pub const MAX_WINDOW_MS: u64 = 31 * 24 * 3600 * 1000;

impl Window {
    /// Parses `<digits><unit>`, unit one of `s`, `m`, `h`, `d`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            format!("the window '{text}' has no unit: write e.g. '90s', '10m', '2h' or '1d'")
        })?;
        let (digits, unit) = text.split_at(unit_at);
        let scale: u64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "the window '{text}' has the unknown unit '{unit}': use s, m, h or d"
                ));
            }
        };
        let count: u64 = digits
            .parse()
            .map_err(|_| format!("the window '{text}' needs a number before its unit"))?;
        let millis = count.saturating_mul(scale);
        if millis == 0 || millis > MAX_WINDOW_MS {
            return Err(format!(
                "the window '{text}' must be longer than 0 and at most 31 days"
            ));
        }
        Ok(Window {
            text: text.to_owned(),
            millis,
        })
    }
}

/// What an evaluator is asked for one fact; borrowed from the compiled condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FactQuery<'a> {
    NodesAlive,
    NodesWith(&'a str),
    FractionWith(&'a str),
    MaxSeverity(&'a str),
    HistoryCount { kind: &'a str, window_ms: u64 },
    LastMatched(&'a str),
}

impl Fact {
    pub fn query(&self) -> FactQuery<'_> {
        match self {
            Fact::NodesAlive => FactQuery::NodesAlive,
            Fact::NodesWith(kind) => FactQuery::NodesWith(kind),
            Fact::FractionWith(kind) => FactQuery::FractionWith(kind),
            Fact::MaxSeverity(kind) => FactQuery::MaxSeverity(kind),
            Fact::HistoryCount { kind, window } => FactQuery::HistoryCount {
                kind,
                window_ms: window.millis,
            },
            Fact::LastMatched(name) => FactQuery::LastMatched(name),
        }
    }

    /// Whether the fact comes from the mesh (else from this node's history).
    pub fn is_mesh(&self) -> bool {
        !matches!(self, Fact::HistoryCount { .. } | Fact::LastMatched(_))
    }
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fact::NodesAlive => f.write_str("mesh.nodes_alive"),
            Fact::NodesWith(kind) => write!(f, "mesh.nodes_with({})", QuotedStr(kind)),
            Fact::FractionWith(kind) => write!(f, "mesh.fraction_with({})", QuotedStr(kind)),
            Fact::MaxSeverity(kind) => write!(f, "mesh.max_severity({})", QuotedStr(kind)),
            Fact::HistoryCount { kind, window } => write!(
                f,
                "history.count({}, {})",
                QuotedStr(kind),
                QuotedStr(&window.text)
            ),
            Fact::LastMatched(name) => write!(f, "history.last_matched({})", QuotedStr(name)),
        }
    }
}

/// Answers facts during an evaluation. Called on the hot path: an answer must not allocate.
pub trait Facts {
    /// The value of one fact, or `None` when it has none (it is then reported missing).
    fn fact(&self, query: FactQuery<'_>) -> Option<f64>;

    /// The mesh as Rego rules see it under `input.mesh`; `None` leaves `input.mesh` out.
    fn rego_mesh(&self) -> Option<serde_json::Value> {
        None
    }
}

/// No facts at all: every fact is missing (a condition evaluated outside an agent).
pub struct NoFacts;

impl Facts for NoFacts {
    fn fact(&self, _: FactQuery<'_>) -> Option<f64> {
        None
    }
}
