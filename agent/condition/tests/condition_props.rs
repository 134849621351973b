//! Property tests of the condition language: printing a tree and parsing it back is the identity;
//! arbitrary input never panics the parser or compiler; any compiled tree evaluates without
//! panicking, and `not` negates it.

use agent_condition::Incident;
use agent_condition::{CmpOp, Condition, Expr, Literal, Method, Operand, Path, Segment, parse};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Key names that the generated incidents also use, so that some paths resolve.
const KEYS: &[&str] = &["a", "b", "load_avg", "in", "not", "True", "x-y", "é"];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(String::from),
        1 => "[a-z_][a-z0-9_]{0,5}",
        1 => "[ '\"\\\\é🙂.\\[\\]()\n\t-]{0,5}",
        1 => any::<String>(),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        3 => key().prop_map(Segment::Key),
        1 => (0usize..4).prop_map(Segment::Index),
        1 => any::<usize>().prop_map(Segment::Index),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop_oneof![
        1 => Just(Path::Id),
        1 => Just(Path::Type),
        1 => Just(Path::Severity),
        1 => Just(Path::Timestamp),
        4 => prop::collection::vec(segment(), 0..4).prop_map(Path::Context),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ab'\"\\\\\n\t\r\u{0}\u{7f}é🙂 ]{0,8}",
        1 => any::<String>(),
        1 => prop::sample::select(vec!["memory_leak", "cpu_spike", "a", ""]).prop_map(String::from),
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
        (-1000i32..1000).prop_map(f64::from),
        Just(-0.0),
        Just(1e16),
        Just(5e-324),
    ]
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        string().prop_map(Literal::Str),
        number().prop_map(Literal::Num),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
    ]
}

fn operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        path().prop_map(Operand::Path),
        literal().prop_map(Operand::Literal)
    ]
}

fn cmp_op() -> impl Strategy<Value = CmpOp> {
    prop::sample::select(vec![
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ])
}

/// A method call with an argument of a type the parser accepts for it.
fn method() -> impl Strategy<Value = Expr> {
    let string_method =
        prop::sample::select(vec![Method::StartsWith, Method::EndsWith, Method::Matches]);
    prop_oneof![
        (path(), string_method, string().prop_map(Literal::Str)),
        (path(), Just(Method::Contains), literal()),
    ]
    .prop_map(|(path, method, arg)| Expr::Method { path, method, arg })
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        (operand(), cmp_op(), operand()).prop_map(|(lhs, op, rhs)| Expr::Compare { lhs, op, rhs }),
        (
            operand(),
            prop::collection::vec(literal(), 0..4),
            any::<bool>()
        )
            .prop_map(|(operand, list, negated)| Expr::In {
                operand,
                list,
                negated
            }),
        method(),
        operand().prop_map(Expr::Truthy),
    ]
}

/// Trees as the parser builds them: `And`/`Or` with at least two operands.
fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(|n| Number::from_f64(n).map_or(Value::Null, Value::Number)),
        (-5i64..5).prop_map(|n| Value::Number(n.into())),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn incident() -> impl Strategy<Value = Incident> {
    (
        string(),
        string(),
        number(),
        prop::option::of(string()),
        prop::collection::vec((prop::sample::select(KEYS), json()), 0..6),
    )
        .prop_map(|(id, kind, severity, timestamp, entries)| Incident {
            id,
            kind,
            severity,
            timestamp,
            context: entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        })
}

fn contains_matches(expr: &Expr) -> bool {
    match expr {
        Expr::Or(items) | Expr::And(items) => items.iter().any(contains_matches),
        Expr::Not(inner) => contains_matches(inner),
        Expr::Method { method, .. } => *method == Method::Matches,
        _ => false,
    }
}

/// Words and symbols of the language (and near misses), to reach deeper parser states than
/// random bytes do.
const VOCABULARY: &[&str] = &[
    "incident",
    ".",
    "context",
    "type",
    "severity",
    "id",
    "timestamp",
    "load_avg",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "in",
    "not",
    "and",
    "or",
    "&&",
    "||",
    "!",
    "(",
    ")",
    "[",
    "]",
    ",",
    "'a'",
    "\"b\"",
    "'",
    "\"",
    "\\",
    "1",
    "-2.5",
    "1e999",
    "0",
    "true",
    "None",
    "False",
    "startswith",
    "contains",
    "matches",
    "'['",
    "'(a|b)'",
    "'\\u{41}'",
    "is",
    "AND",
    "-",
    "%",
    "é",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn display_then_parse_is_identity(tree in expr()) {
        let printed = tree.to_string();
        let reparsed = parse(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(&tree), "printed as: {}", printed);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let source = String::from_utf8_lossy(&bytes);
        let _ = parse(&source);
        let _ = Condition::compile(&source);
    }

    #[test]
    fn random_strings_never_panic(source in any::<String>()) {
        let _ = parse(&source);
        let _ = Condition::compile(&source);
    }

    #[test]
    fn token_soup_never_panics(
        words in prop::collection::vec(prop::sample::select(VOCABULARY), 0..40),
        spaced in any::<bool>(),
        incident in incident(),
    ) {
        let source = words.join(if spaced { " " } else { "" });
        let parsed = parse(&source);
        match Condition::compile(&source) {
            Ok(condition) => {
                // Whatever compiles also parses, and evaluates.
                prop_assert!(parsed.is_ok());
                let outcome = condition.eval(&incident);
                let _ = condition.missing_fields(outcome).count();
            }
            Err(error) => prop_assert!(error.column >= 1 && error.column <= source.chars().count() + 1),
        }
    }

    #[test]
    fn compiled_trees_evaluate_and_not_negates(tree in expr(), incident in incident()) {
        let source = tree.to_string();
        let condition = match Condition::compile(&source) {
            Ok(condition) => condition,
            Err(error) => {
                // Only a `.matches(..)` with an argument that is not a valid regex may fail.
                prop_assert!(contains_matches(&tree), "{} failed: {}", source, error);
                prop_assert!(error.message.starts_with("invalid regular expression"), "{}", error);
                return Ok(());
            }
        };
        let outcome = condition.eval(&incident);
        prop_assert_eq!(condition.eval(&incident), outcome, "evaluation is deterministic");
        let names: Vec<&str> = condition.missing_fields(outcome).collect();
        prop_assert_eq!(names.is_empty(), !outcome.any_missing());

        let negated = Condition::compile(&Expr::Not(Box::new(tree)).to_string()).unwrap();
        let negated_outcome = negated.eval(&incident);
        prop_assert_eq!(negated_outcome.matched, !outcome.matched);
        prop_assert_eq!(negated_outcome.any_missing(), outcome.any_missing());
    }
}
