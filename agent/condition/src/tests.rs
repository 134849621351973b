//! Unit tests of the condition language: semantics against incidents, error messages with their
//! columns, limits, and printing.

use serde_json::{Value, json};

use super::*;

fn incident(kind: &str, severity: f64, context: Value) -> Incident {
    let Value::Object(context) = context else {
        panic!("context must be an object")
    };
    Incident {
        id: "inc-1".into(),
        kind: kind.into(),
        severity,
        timestamp: None,
        context,
    }
}

/// An incident with a varied context, used by most tests.
fn sample() -> Incident {
    let mut incident = incident(
        "cpu_spike",
        7.0,
        json!({
            "load_avg": 12.5,
            "count": 3,
            "service": "nginx-frontend",
            "empty": "",
            "zero": 0,
            "nothing": null,
            "flag": true,
            "off": false,
            "tags": ["web", "edge", 5],
            "no_tags": [],
            "no_map": {},
            "load-avg": 2.0,
            "disks": [{"usage": 91, "mount": "/"}, {"usage": 40, "mount": "/data"}],
            "in": {"and": "kw"},
            "nested": {"deep": {"value": "x"}},
        }),
    );
    incident.timestamp = Some("2024-05-01T10:00:00Z".into());
    incident
}

fn eval_on(source: &str, incident: &Incident) -> bool {
    Condition::compile(source)
        .unwrap_or_else(|e| panic!("{source}: {e}"))
        .eval(incident)
        .matched
}

fn holds(source: &str) -> bool {
    eval_on(source, &sample())
}

fn error(source: &str) -> ConditionError {
    match Condition::compile(source) {
        Ok(condition) => panic!("{source} compiled: {condition:?}"),
        Err(error) => error,
    }
}

fn missing(source: &str, incident: &Incident) -> (bool, Vec<String>) {
    let condition = Condition::compile(source).unwrap();
    let outcome = condition.eval(incident);
    (
        outcome.matched,
        condition
            .missing_fields(outcome)
            .map(str::to_string)
            .collect(),
    )
}

const MEMORY_LEAK: &str = "incident.type == 'memory_leak' and incident.severity >= 8";
const CPU_SPIKE: &str = "incident.type == 'cpu_spike' and incident.context.load_avg > 10.0";
const DISK_FULL: &str = "incident.type == 'disk_full' and incident.context.usage_percent >= 95";
const NETWORK: &str = "incident.type == 'network_latency' and incident.context.latency_ms > 500";

#[test]
fn seed_conditions_match_and_do_not_match() {
    let cases = [
        (
            MEMORY_LEAK,
            incident("memory_leak", 8.0, json!({})),
            incident("memory_leak", 7.9, json!({})),
        ),
        (
            CPU_SPIKE,
            incident("cpu_spike", 1.0, json!({"load_avg": 10.5})),
            incident("cpu_spike", 1.0, json!({"load_avg": 10.0})),
        ),
        (
            DISK_FULL,
            incident("disk_full", 1.0, json!({"usage_percent": 95})),
            incident("disk_full", 1.0, json!({"usage_percent": 94.9})),
        ),
        (
            NETWORK,
            incident("network_latency", 1.0, json!({"latency_ms": 501})),
            incident("network_latency", 1.0, json!({"latency_ms": 500})),
        ),
    ];
    for (source, matching, below) in cases {
        let condition = Condition::compile(source).unwrap();
        assert_eq!(condition.source(), source);
        let outcome = condition.eval(&matching);
        assert!(outcome.matched, "{source}");
        assert!(!outcome.any_missing(), "{source}");
        assert!(!condition.eval(&below).matched, "{source}");
        let mut other_kind = matching.clone();
        other_kind.kind = "something_else".into();
        assert!(!condition.eval(&other_kind).matched, "{source}");
    }
}

#[test]
fn seed_condition_on_wrong_kind_does_not_read_context() {
    // `and` short-circuits: the context field of another kind's rule is not reported missing.
    let (matched, names) = missing(CPU_SPIKE, &incident("memory_leak", 9.0, json!({})));
    assert!(!matched);
    assert!(names.is_empty());
    let (matched, names) = missing(CPU_SPIKE, &incident("cpu_spike", 9.0, json!({})));
    assert!(!matched);
    assert_eq!(names, ["incident.context.load_avg"]);
}

#[test]
fn comparison_operators_on_numbers() {
    let table = [
        ("==", [false, true, false]),
        ("!=", [true, false, true]),
        ("<", [false, false, true]),
        ("<=", [false, true, true]),
        (">", [true, false, false]),
        (">=", [true, true, false]),
    ];
    for (op, expected) in table {
        for (rhs, want) in ["6", "7", "8"].iter().zip(expected) {
            let source = format!("incident.severity {op} {rhs}");
            assert_eq!(holds(&source), want, "{source}");
            // The same with the literal on the left, operator mirrored.
            let mirrored = match op {
                "<" => ">",
                "<=" => ">=",
                ">" => "<",
                ">=" => "<=",
                same => same,
            };
            let source = format!("{rhs} {mirrored} incident.severity");
            assert_eq!(holds(&source), want, "{source}");
        }
    }
}

#[test]
fn comparison_operators_on_strings() {
    assert!(holds("incident.context.service == 'nginx-frontend'"));
    assert!(holds("incident.context.service != 'nginx'"));
    assert!(holds("incident.context.service > 'nginx'"));
    assert!(holds("incident.context.service >= 'nginx-frontend'"));
    assert!(holds("incident.context.service < 'z'"));
    assert!(holds("incident.context.service <= 'nginx-frontend'"));
    assert!(!holds("incident.context.service < 'a'"));
    assert!(holds("incident.id == \"inc-1\""));
    assert!(holds("incident.timestamp >= '2024-01-01'"));
}

#[test]
fn numbers_compare_as_f64_across_json_integer_and_float() {
    assert!(holds("incident.context.count == 3.0"));
    assert!(holds("incident.context.count == 3"));
    assert!(holds("incident.context.count == 3e0"));
    assert!(holds("incident.context.load_avg == 1.25E1"));
    assert!(holds("incident.context.count > -1"));
    assert!(holds(
        "incident.context.disks[0].usage == incident.context.disks[0]['usage']"
    ));
}

#[test]
fn comparisons_between_two_fields() {
    assert!(holds("incident.context.count < incident.severity"));
    assert!(holds(
        "incident.context.disks[0].usage > incident.context.disks[1].usage"
    ));
    assert!(holds("incident.context.tags == incident.context.tags"));
    assert!(!holds("incident.context.tags == incident.context.no_tags"));
    assert!(holds("incident.context.nested == incident.context.nested"));
}

#[test]
fn type_mismatches() {
    assert!(!holds("incident.context.service == 5"));
    assert!(holds("incident.context.service != 5"));
    assert!(!holds("incident.context.service < 5"));
    assert!(!holds("incident.context.service >= 5"));
    assert!(!holds("incident.severity == '7'"));
    assert!(holds("incident.severity != '7'"));
    assert!(!holds("incident.context.flag == 1"));
    assert!(
        !holds("incident.context.flag > false"),
        "no ordering between booleans"
    );
    assert!(!holds("incident.context.nothing < 1"));
    assert!(holds("incident.context.nothing == null"));
    assert!(holds("incident.context.nothing == None"));
    assert!(!holds("incident.context.zero == false"));
    assert!(!holds("incident.context.tags < incident.context.tags"));
}

#[test]
fn literal_only_comparisons_are_folded_correctly() {
    assert!(holds("1 == 1.0"));
    assert!(holds("'a' < 'b'"));
    assert!(!holds("'a' == 1"));
    assert!(holds("2 in [1, 2]"));
    assert!(holds("true"));
    assert!(!holds("False"));
    assert!(!holds("null"));
    assert!(holds("not 0"));
    // A constant does not hide the fields read before it.
    let (matched, names) = missing("incident.context.absent == 1 or true", &sample());
    assert!(matched);
    assert_eq!(names, ["incident.context.absent"]);
}

#[test]
fn missing_fields_make_every_test_false_and_are_reported() {
    let sample = sample();
    for source in [
        "incident.context.absent == 1",
        "incident.context.absent != 1",
        "incident.context.absent < 1",
        "incident.context.absent == null",
        "incident.context.absent in [1]",
        "incident.context.absent not in [1]",
        "incident.context.absent not in []",
        "incident.context.absent",
        "incident.context.absent.startswith('a')",
        "incident.context.absent.contains('a')",
        "incident.context.absent.matches('.*')",
        "incident.context.absent == incident.severity",
        "incident.severity != incident.context.absent",
    ] {
        let (matched, names) = missing(source, &sample);
        assert!(!matched, "{source}");
        assert_eq!(names, ["incident.context.absent"], "{source}");
    }
}

#[test]
fn not_negates_even_a_missing_field() {
    let (matched, names) = missing("not incident.context.absent == 1", &sample());
    assert!(matched);
    assert_eq!(names, ["incident.context.absent"]);
    // `!=` on a missing field is false, so its negation is true.
    assert!(!holds("incident.context.absent != 1"));
    assert!(holds("not incident.context.absent != 1"));
}

#[test]
fn what_counts_as_missing() {
    let sample = sample();
    for source in [
        "incident.context.disks[5].usage == 1",
        "incident.context.disks[0].absent == 1",
        "incident.context.service.length == 1",
        "incident.context.service[0] == 'n'",
        "incident.context.tags.first == 'web'",
        "incident.context.nothing.x == 1",
        "incident.context[0] == 1",
    ] {
        let (matched, names) = missing(source, &sample);
        assert!(!matched, "{source}");
        assert_eq!(names.len(), 1, "{source}");
    }
    // Present but null is not missing; neither is a timestamp the incident lacks.
    let (matched, names) = missing("incident.context.nothing == null", &sample);
    assert!(matched && names.is_empty());
    let mut no_time = sample.clone();
    no_time.timestamp = None;
    let (matched, names) = missing("incident.timestamp == None", &no_time);
    assert!(matched && names.is_empty());
    assert!(!eval_on("incident.timestamp", &no_time));
    assert!(holds("incident.timestamp"));
    assert!(holds("incident.context"));
}

#[test]
fn missing_names_are_as_written_in_order_of_first_appearance_and_shared() {
    let source = "incident.context['b'] == 1 or incident.context.a == 2 or incident.context['b'] == 3 \
                  or incident.context.b == 4 or incident.context.a > 0";
    let (matched, names) = missing(source, &sample());
    assert!(!matched);
    assert_eq!(
        names,
        [
            "incident.context['b']",
            "incident.context.a",
            "incident.context.b"
        ]
    );
}

#[test]
fn missing_bits_past_the_64th_path_are_shared() {
    let paths: Vec<String> = (0..70)
        .map(|i| format!("incident.context.f{i} == 1"))
        .collect();
    let condition = Condition::compile(&paths.join(" or ")).unwrap();
    let mut context = json!({});
    for i in 0..70 {
        context[format!("f{i}")] = json!(0);
    }
    // Only f65 missing: it shares the last bit with f63..f69.
    context.as_object_mut().unwrap().remove("f65");
    let outcome = condition.eval(&incident("x", 1.0, context));
    let names: Vec<&str> = condition.missing_fields(outcome).collect();
    assert_eq!(names.len(), 7);
    assert_eq!(names[0], "incident.context.f63");
    assert!(names.contains(&"incident.context.f65"));
    // Only f2 missing: reported alone.
    let mut context = json!({});
    for i in (0..70).filter(|i| *i != 2) {
        context[format!("f{i}")] = json!(0);
    }
    let outcome = condition.eval(&incident("x", 1.0, context));
    assert_eq!(
        condition.missing_fields(outcome).collect::<Vec<_>>(),
        ["incident.context.f2"]
    );
}

#[test]
fn in_and_not_in() {
    assert!(holds("incident.type in ['cpu_spike', 'memory_leak']"));
    assert!(!holds("incident.type not in ['cpu_spike', 'memory_leak']"));
    assert!(holds("incident.type not in ['disk_full']"));
    assert!(!holds("incident.type in []"));
    assert!(holds("incident.type not in []"));
    assert!(holds("incident.severity in [1, 7.0, 'x']"));
    assert!(holds("incident.context.count in [3,]"));
    assert!(holds("incident.context.nothing in [null]"));
    assert!(holds("incident.context.flag in [True]"));
    assert!(!holds("incident.context.count in ['3']"));
}

#[test]
fn string_tests() {
    assert!(holds("incident.context.service.startswith('nginx')"));
    assert!(!holds("incident.context.service.startswith('front')"));
    assert!(holds("incident.context.service.endswith(\"frontend\")"));
    assert!(holds("incident.context.service.contains('x-f')"));
    assert!(!holds("incident.context.service.contains('apache')"));
    assert!(holds("incident.context.service.contains('')"));
    // On arrays: element membership, with any literal.
    assert!(holds("incident.context.tags.contains('edge')"));
    assert!(holds("incident.context.tags.contains(5)"));
    assert!(!holds("incident.context.tags.contains('ed')"));
    assert!(!holds("incident.context.no_tags.contains(null)"));
    // On other types: false.
    assert!(!holds("incident.severity.startswith('7')"));
    assert!(!holds("incident.context.service.contains(5)"));
    assert!(!holds("incident.context.nested.contains('deep')"));
    assert!(!holds("incident.context.count.endswith('3')"));
    assert!(holds("not incident.context.count.endswith('3')"));
}

#[test]
fn regex_matches() {
    assert!(holds(
        "incident.context.service.matches('^nginx-(front|back)end$')"
    ));
    assert!(
        holds("incident.context.service.matches('front')"),
        "unanchored search"
    );
    assert!(!holds("incident.context.service.matches('^front')"));
    assert!(holds(r"incident.id.matches('^inc-\\d+$')"));
    assert!(!holds("incident.severity.matches('7')"));
    let condition =
        Condition::compile("incident.type.matches('spike') or incident.type.matches('leak')")
            .unwrap();
    assert!(condition.eval(&sample()).matched);
    assert!(
        condition
            .eval(&incident("memory_leak", 1.0, json!({})))
            .matched
    );
    assert!(!condition.eval(&incident("disk", 1.0, json!({}))).matched);
}

#[test]
fn regexes_per_condition_are_bounded() {
    let terms = |n: usize| {
        (0..n)
            .map(|i| format!("incident.type.matches('\\\\w{{20}}N{i}')"))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    if let Err(e) = Condition::compile(&terms(super::MAX_REGEXES)) {
        panic!("{e}");
    }
    // 300 terms (14 KB) once took 467 MB and 7.5 s to compile; now the 17th term is refused.
    let e = error(&terms(300));
    assert!(e.message.contains("at most 16"), "{}", e.message);
    let seventeenth = terms(super::MAX_REGEXES + 1).rfind("'").unwrap();
    assert!(e.column > 0 && e.column <= seventeenth + 1, "{}", e.column);
}

#[test]
fn invalid_regex_is_a_compile_error_at_the_literal() {
    let e = error("incident.type == 'x' or incident.id.matches('a(b')");
    assert_eq!(e.column, 45);
    assert!(e.message.starts_with("invalid regular expression: "), "{e}");
    assert!(!e.message.contains('\n'), "{e}");
    // The second of two regexes is the bad one: its column is reported.
    let e = error("incident.id.matches('a') and incident.id.matches('[')");
    assert_eq!(e.column, 50);
    // A regex that compiles too large is refused, not built.
    let e = error("incident.id.matches('\\\\w{1000}\\\\w{1000}\\\\w{1000}')");
    assert_eq!(e.column, 21);
    assert!(e.message.contains("size limit"), "{e}");
}

#[test]
fn truthiness() {
    for (field, want) in [
        ("load_avg", true),
        ("zero", false),
        ("service", true),
        ("empty", false),
        ("nothing", false),
        ("flag", true),
        ("off", false),
        ("tags", true),
        ("no_tags", false),
        ("nested", true),
        ("no_map", false),
    ] {
        assert_eq!(holds(&format!("incident.context.{field}")), want, "{field}");
        assert_eq!(
            holds(&format!("not incident.context.{field}")),
            !want,
            "{field}"
        );
    }
    assert!(holds("incident.context.flag and incident.severity > 1"));
    assert!(!holds("incident.context.off or incident.context.zero"));
}

#[test]
fn bracket_paths_indices_and_keyword_keys() {
    assert!(holds("incident.context['load-avg'] == 2"));
    assert!(holds("incident.context[\"load-avg\"] == 2"));
    assert!(holds("incident.context['load_avg'] > 12"));
    assert!(holds("incident.context.disks[0].usage >= 90"));
    assert!(holds("incident.context.disks[1]['mount'] == '/data'"));
    assert!(holds("incident.context.tags[2] == 5"));
    assert!(holds("incident.context.in.and == 'kw'"));
    assert!(holds("incident.context['nested'].deep['value'] == 'x'"));
    assert!(holds("incident.context . nested . deep . value == 'x'"));
}

#[test]
fn precedence_and_synonyms() {
    // not > and > or; comparisons bind tighter than not.
    assert!(holds("not incident.severity == 8"));
    assert!(!holds("not incident.severity == 7"));
    assert!(holds(
        "incident.severity == 7 or incident.severity == 1 and false"
    ));
    assert!(!holds(
        "(incident.severity == 7 or incident.severity == 1) and false"
    ));
    assert!(holds("not false and true"));
    assert!(!holds("not (false or true)"));
    assert!(holds("not not true"));
    assert!(holds("false || true && !false"));
    assert!(holds(
        "!(incident.severity < 5) && incident.type == 'cpu_spike'"
    ));
    assert_eq!(
        parse("not a_is_not_allowed").unwrap_err().message,
        "unknown name `a_is_not_allowed`: a field starts with `incident.` (e.g. `incident.type`), a fact with `mesh.` or `history.`, and a string \
         needs quotes ('a_is_not_allowed')"
    );
    assert_eq!(
        parse("true or false and not true").unwrap(),
        Expr::Or(vec![
            Expr::Truthy(Operand::Literal(Literal::Bool(true))),
            Expr::And(vec![
                Expr::Truthy(Operand::Literal(Literal::Bool(false))),
                Expr::Not(Box::new(Expr::Truthy(Operand::Literal(Literal::Bool(
                    true
                ))))),
            ]),
        ])
    );
    assert_eq!(
        parse("not incident.severity == 1").unwrap(),
        Expr::Not(Box::new(Expr::Compare {
            lhs: Operand::Path(Path::Severity),
            op: CmpOp::Eq,
            rhs: Operand::Literal(Literal::Num(1.0)),
        }))
    );
}

#[test]
fn and_or_short_circuit() {
    let (matched, names) = missing(
        "incident.severity > 1 or incident.context.a == 1",
        &sample(),
    );
    assert!(matched && names.is_empty());
    let (matched, names) = missing(
        "incident.severity > 100 and incident.context.a == 1",
        &sample(),
    );
    assert!(!matched && names.is_empty());
    let (matched, names) = missing(
        "incident.severity > 100 or incident.context.a == 1",
        &sample(),
    );
    assert!(!matched);
    assert_eq!(names, ["incident.context.a"]);
}

#[test]
fn string_literals_and_escapes() {
    let sample = incident("it's \"quoted\" \\ \n\t\r é", 1.0, json!({}));
    assert!(eval_on(
        r#"incident.type == 'it\'s "quoted" \\ \n\t\r \u{e9}'"#,
        &sample
    ));
    assert!(eval_on(
        r#"incident.type == "it's \"quoted\" \\ \n\t\r é""#,
        &sample
    ));
    assert_eq!(
        parse(r"'\u{1F600}'").unwrap(),
        Expr::Truthy(Operand::Literal(Literal::Str("\u{1F600}".into())))
    );
}

#[test]
fn error_messages_and_columns() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "incident.context.latency >=",
            28,
            "expected a value after `>=`, found end of input",
        ),
        (
            "incident.sevrity >= 8",
            1,
            "unknown field `incident.sevrity`; an incident has id, type, severity, timestamp, context",
        ),
        (
            "incident.kind == 'x'",
            1,
            "unknown field `incident.kind`; an incident has id, type, severity, timestamp, context (the kind is `incident.type`)",
        ),
        (
            "incident.type = 'x'",
            15,
            "`=` is not an operator; did you mean `==`?",
        ),
        ("", 1, "expected a condition, found end of input"),
        ("   ", 4, "expected a condition, found end of input"),
        (
            "incident.type == 'x' incident",
            22,
            "expected `and`, `or` or end of input, found `incident`",
        ),
        (
            "incident.type == 'x' AND true",
            22,
            "expected `and`, `or` or end of input, found `AND` (keywords are lowercase: `and`)",
        ),
        (
            "incident.type == memory_leak",
            18,
            "unknown name `memory_leak`: a field starts with `incident.` (e.g. `incident.type`), a fact with `mesh.` or `history.`, and a string needs quotes ('memory_leak')",
        ),
        (
            "foo.bar == 1",
            1,
            "unknown name `foo`: a field starts with `incident.` (e.g. `incident.type`), a fact with `mesh.` or `history.`, and a string needs quotes ('foo')",
        ),
        (
            "incident == 1",
            1,
            "`incident` is not a value by itself; name one of its fields: incident.id, incident.type, incident.severity, incident.timestamp or incident.context",
        ),
        (
            "incident. == 1",
            11,
            "expected a field name after `incident.`, found `==`",
        ),
        (
            "incident.severity.x == 1",
            19,
            "`incident.severity` has no fields below it; only `incident.context` has",
        ),
        (
            "incident.type[0] == 1",
            14,
            "`incident.type` has no fields below it; only `incident.context` has",
        ),
        (
            "incident.context.a. == 1",
            21,
            "expected a field name after `.`, found `==`",
        ),
        (
            "incident.context[x] == 1",
            18,
            "expected a quoted key or a non-negative integer index inside `[..]`, found `x` (a string needs quotes: 'x')",
        ),
        (
            "incident.context[1.5] == 1",
            18,
            "expected a quoted key or a non-negative integer index inside `[..]`, found the number 1.5",
        ),
        (
            "incident.context[-1] == 1",
            18,
            "expected a quoted key or a non-negative integer index inside `[..]`, found the number -1",
        ),
        ("incident.context['a' == 1", 22, "expected `]`, found `==`"),
        (
            "1 < incident.severity < 9",
            23,
            "comparisons cannot be chained: write `a < b and b < c`, not `a < b < c`",
        ),
        (
            "incident.type in 'x'",
            18,
            "expected `[` after `in` (`in` takes a list of literals such as ['a', 'b']), found the string 'x'",
        ),
        (
            "incident.type in ['a', incident.id]",
            24,
            "expected a literal (a string, number, true, false or null) in the list, found `incident`",
        ),
        (
            "incident.type in ['a' 'b']",
            23,
            "expected `,` or `]` in the list, found the string 'b'",
        ),
        (
            "incident.type not ['a']",
            19,
            "expected `in` after `not`, found `[`",
        ),
        (
            "incident.type is None",
            15,
            "`is` is not supported; use `==` (or `!=` for `is not`)",
        ),
        (
            "incident.type.lower() == 'x'",
            15,
            "unknown method `lower`; a field has startswith, endswith, contains and matches",
        ),
        (
            "incident.type.startswith(1)",
            26,
            "expected a string literal as the argument of `.startswith(..)`, found the number 1",
        ),
        (
            "incident.type.contains(incident.id)",
            24,
            "expected a literal as the argument of `.contains(..)`, found `incident`",
        ),
        (
            "incident.type.endswith('a', 'b')",
            27,
            "`.endswith(..)` takes exactly one argument",
        ),
        (
            "incident.type.endswith('a'",
            27,
            "expected `)` after the argument of `.endswith(`, found end of input",
        ),
        (
            "incident.type.startswith('a') == true",
            15,
            "`.startswith(..)` is a test by itself; it cannot be compared",
        ),
        (
            "true == incident.type.startswith('a')",
            23,
            "`.startswith(..)` is a test by itself; it cannot be compared",
        ),
        (
            "(incident.severity > 1",
            23,
            "expected `and`, `or` or `)` closing the `(` at column 1, found end of input",
        ),
        (
            "incident.severity > 1)",
            22,
            "found `)` without a matching `(`",
        ),
        ("and true", 1, "expected a condition, found `and`"),
        ("true and or", 10, "expected a condition, found `or`"),
        (
            "incident.severity > 'x",
            21,
            "unterminated string: no closing '",
        ),
        (
            "incident.type == 'a\\qb'",
            20,
            "unknown escape `\\q` in a string; the escapes are \\\\, \\', \\\", \\n, \\t, \\r and \\u{HEX}",
        ),
        (
            "incident.type == '\\u{110000}'",
            19,
            "invalid `\\u` escape: write \\u{HEX} with 1 to 6 hex digits of a Unicode scalar value",
        ),
        (
            "incident.type == '\\u41'",
            19,
            "invalid `\\u` escape: write \\u{HEX} with 1 to 6 hex digits of a Unicode scalar value",
        ),
        (
            "incident.severity > 1e999",
            21,
            "the number 1e999 is too large",
        ),
        (
            "incident.context.usage_percent >= 95%",
            37,
            "unexpected `%` right after the number 95",
        ),
        (
            "incident.severity > - 1",
            21,
            "`-` can only start a negative number such as -5; conditions have no arithmetic",
        ),
        ("incident.severity @ 1", 19, "unexpected character `@`"),
        (
            "incident.severity > 1 & true",
            23,
            "`&` is not an operator; did you mean `and` (or `&&`)?",
        ),
        (
            "incident.severity > 1 | true",
            23,
            "`|` is not an operator; did you mean `or` (or `||`)?",
        ),
        (
            "incident.severity <> 1",
            19,
            "`<>` is not an operator; did you mean `!=`?",
        ),
        // Columns count chars, not bytes.
        (
            "'héé' == 'x' = 1",
            14,
            "`=` is not an operator; did you mean `==`?",
        ),
    ];
    let mut wrong = Vec::new();
    for &(source, column, message) in cases {
        let e = error(source);
        if (e.column, e.message.as_str()) != (column, message) {
            wrong.push(format!(
                "{source}\n  got:  {e}\n  want: column {column}: {message}"
            ));
        }
        assert_eq!(e.to_string(), format!("column {}: {}", e.column, e.message));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn nesting_depth_limit() {
    let nested = |depth: usize| format!("{}true{}", "(".repeat(depth), ")".repeat(depth));
    assert!(
        Condition::compile(&nested(MAX_DEPTH))
            .unwrap()
            .eval(&sample())
            .matched
    );
    let e = error(&nested(MAX_DEPTH + 1));
    assert_eq!(e.column, MAX_DEPTH + 1);
    assert_eq!(
        e.message,
        "the condition nests too deeply: at most 64 levels of parentheses and `not`"
    );

    let nots = |depth: usize| format!("{}true", "not ".repeat(depth));
    assert!(
        Condition::compile(&nots(MAX_DEPTH))
            .unwrap()
            .eval(&sample())
            .matched
    );
    assert_eq!(error(&nots(MAX_DEPTH + 1)).column, 4 * MAX_DEPTH + 1);

    // Mixed: each `not` and `(` counts.
    let mixed = "not (".repeat(MAX_DEPTH / 2) + "true" + &")".repeat(MAX_DEPTH / 2);
    assert!(Condition::compile(&mixed).is_ok());
    let mixed = "not (".repeat(MAX_DEPTH / 2) + "!true" + &")".repeat(MAX_DEPTH / 2);
    assert!(error(&mixed).message.contains("nests too deeply"));
    // A hostile depth far beyond the limit fails the same way, without exhausting the stack.
    assert!(
        error(&"(".repeat(60_000))
            .message
            .contains("nests too deeply")
    );
}

#[test]
fn source_length_limit() {
    // A long flat chain is fine (and/or are not nested), and evaluates without deep recursion.
    let clause = "incident.severity == 1 or ";
    let mut source = clause.repeat((MAX_SOURCE_BYTES - 4) / clause.len());
    source.push_str("true");
    assert!(source.len() <= MAX_SOURCE_BYTES);
    assert!(Condition::compile(&source).unwrap().eval(&sample()).matched);
    let too_long = " ".repeat(MAX_SOURCE_BYTES - 3) + "true";
    let e = error(&too_long);
    assert_eq!(e.column, 1);
    assert_eq!(
        e.message,
        format!(
            "the condition is {} bytes long; the limit is 65536",
            MAX_SOURCE_BYTES + 1
        )
    );
}

#[test]
fn display_prints_source_that_reparses_to_the_same_tree() {
    for source in [
        MEMORY_LEAK,
        CPU_SPIKE,
        "(true or false) and (false or true)",
        "true or (false or true)",
        "(true and false) and true",
        "not (true and false) or not not false",
        "incident.context['load-avg'].x[3]['it\\'s'] in [1, -2.5, 'a\\nb', true, null]",
        "incident.context.in.not not in []",
        "incident.context.x.matches('^a\\\\d') and incident.id.contains(1e300)",
        "1e-7 < incident.severity and 0.1 != incident.severity",
        "'\\u{7}' == incident.id",
    ] {
        let tree = parse(source).unwrap();
        let printed = tree.to_string();
        assert_eq!(
            parse(&printed).unwrap(),
            tree,
            "{source} printed as {printed}"
        );
    }
    assert_eq!(parse(MEMORY_LEAK).unwrap().to_string(), MEMORY_LEAK);
    assert_eq!(
        parse("incident.context['a b'][0].c == 8.5")
            .unwrap()
            .to_string(),
        "incident.context['a b'][0].c == 8.5"
    );
    assert_eq!(
        parse("!(true && false) || true").unwrap().to_string(),
        "not (true and false) or true"
    );
    assert_eq!(Expr::And(vec![]).to_string(), "true");
    assert_eq!(Expr::Or(vec![]).to_string(), "false");
}

#[test]
fn condition_is_send_sync_and_debug() {
    fn assert_send_sync<T: Send + Sync + std::fmt::Debug>() {}
    assert_send_sync::<Condition>();
    let condition = Condition::compile(MEMORY_LEAK).unwrap();
    assert!(format!("{condition:?}").contains("memory_leak"));
}

mod facts {
    use super::super::*;
    use serde_json::Map;

    /// Facts as a table, counting the calls (so a test sees what was asked).
    struct Table;

    impl Facts for Table {
        fn fact(&self, query: FactQuery<'_>) -> Option<f64> {
            match query {
                FactQuery::NodesAlive => Some(5.0),
                FactQuery::NodesWith("cpu_spike") => Some(2.0),
                FactQuery::NodesWith(_) => Some(0.0),
                FactQuery::FractionWith("cpu_spike") => Some(0.4),
                FactQuery::FractionWith(_) => Some(0.0),
                FactQuery::MaxSeverity("cpu_spike") => Some(7.0),
                FactQuery::MaxSeverity(_) => None,
                FactQuery::HistoryCount {
                    kind: "memory_leak",
                    window_ms: 600_000,
                } => Some(3.0),
                FactQuery::HistoryCount { .. } => Some(0.0),
                FactQuery::LastMatched(_) => None,
            }
        }
    }

    fn incident(kind: &str) -> Incident {
        Incident {
            id: "e1".into(),
            kind: kind.into(),
            severity: 5.0,
            timestamp: None,
            context: Map::new(),
        }
    }

    fn holds(source: &str) -> bool {
        Condition::compile(source)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
            .eval_with(&incident("cpu_spike"), &Table)
            .matched
    }

    #[test]
    fn mesh_and_history_facts_are_read_from_the_evaluator() {
        assert!(holds("mesh.nodes_alive == 5"));
        assert!(holds("mesh.fraction_with('cpu_spike') >= 0.3"));
        assert!(!holds("mesh.fraction_with('packet_loss') >= 0.3"));
        assert!(holds(
            "mesh.nodes_with('cpu_spike') == 2 and mesh.max_severity('cpu_spike') > 6"
        ));
        assert!(holds("history.count('memory_leak', '10m') >= 3"));
        assert!(!holds("history.count('memory_leak', '1h') >= 3"));
        // A fact with no value is missing: its comparisons are false, and it is reported.
        let condition = Condition::compile("history.last_matched('scale out') < 60").unwrap();
        let outcome = condition.eval_with(&incident("cpu_spike"), &Table);
        assert!(!outcome.matched);
        assert_eq!(
            condition.missing_fields(outcome).collect::<Vec<_>>(),
            ["history.last_matched('scale out')"]
        );
        // Without facts, every fact is missing.
        assert!(
            !Condition::compile("mesh.nodes_alive >= 1")
                .unwrap()
                .eval(&incident("x"))
                .matched
        );
        assert!(
            Condition::compile("mesh.nodes_alive >= 1")
                .unwrap()
                .uses_facts()
        );
        assert!(
            !Condition::compile("incident.severity >= 1")
                .unwrap()
                .uses_facts()
        );
    }

    #[test]
    fn facts_print_back_to_what_parses() {
        for source in [
            "mesh.nodes_alive >= 3",
            "mesh.nodes_with('cpu_spike') == 1",
            "mesh.fraction_with('a\\'b') > 0.5",
            "mesh.max_severity('x') >= 7",
            "history.count('memory_leak', '10m') >= 3",
            "history.last_matched('p q') < 600",
        ] {
            let tree = parse(source).unwrap();
            assert_eq!(parse(&tree.to_string()).unwrap(), tree, "{source}");
        }
    }

    #[test]
    fn bad_facts_say_what_is_wrong_and_where() {
        let error = |source: &str| Condition::compile(source).unwrap_err();
        for (source, column, text) in [
            ("mesh.nodes('x') > 1", 6, "unknown fact `mesh.nodes`"),
            ("mesh > 1", 1, "`mesh` is not a value by itself"),
            (
                "mesh.nodes_with() > 1",
                17,
                "`mesh.nodes_with(..)` to take one string argument",
            ),
            ("mesh.nodes_with(1) > 1", 17, "to take one string argument"),
            (
                "mesh.nodes_with('a', 'b') > 1",
                20,
                "takes exactly one string argument",
            ),
            ("mesh.nodes_alive() > 1", 17, "takes no arguments"),
            (
                "history.count('x') > 1",
                18,
                "takes exactly 2 string arguments",
            ),
            ("history.count('x', '10') > 1", 20, "has no unit"),
            ("history.count('x', '10w') > 1", 20, "unknown unit 'w'"),
            ("history.count('x', '0s') > 1", 20, "longer than 0"),
            ("history.count('x', '400d') > 1", 20, "at most 31 days"),
            ("mesh.nodes_alive.x > 1", 17, "is a number"),
            ("history.first('x') > 1", 9, "history has count"),
        ] {
            let e = error(source);
            assert!(
                e.column == column && e.message.contains(text),
                "{source}: got column {}: {}",
                e.column,
                e.message
            );
        }
    }

    #[test]
    fn explain_names_the_clause_that_decided_and_the_values_read() {
        let condition = Condition::compile(
            "incident.type == 'cpu_spike' and mesh.fraction_with('cpu_spike') >= 0.5 and incident.context.load > 1",
        )
        .unwrap();
        let explanation = condition.explain(&incident("cpu_spike"), &Table);
        assert!(!explanation.matched);
        assert_eq!(
            explanation.decided_by.as_deref(),
            Some("mesh.fraction_with('cpu_spike') >= 0.5")
        );
        // The third test never ran (the `and` stopped), so its field is not missing.
        assert_eq!(explanation.clauses.len(), 2);
        assert!(explanation.clauses[0].result);
        let fact = &explanation.clauses[1].values[0];
        assert_eq!(fact.name, "mesh.fraction_with('cpu_spike')");
        assert_eq!(fact.value, Some(serde_json::json!(0.4)));
        assert!(fact.fact);
        assert!(explanation.missing.is_empty());

        let missing = Condition::compile("incident.context.load > 1 or incident.severity > 4")
            .unwrap()
            .explain(&incident("cpu_spike"), &Table);
        assert!(missing.matched);
        assert_eq!(missing.decided_by.as_deref(), Some("incident.severity > 4"));
        assert_eq!(missing.missing, ["incident.context.load"]);
        assert_eq!(missing.clauses[0].values[0].value, None);
    }
}
