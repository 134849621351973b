//! The Rego set: building, evaluating, and what it refuses.

use super::*;

fn settings() -> RegoSettings {
    RegoSettings {
        time_limit: Duration::from_millis(200),
    }
}

fn module(id: &str, text: &str) -> ModuleSource {
    ModuleSource {
        id: id.into(),
        text: text.into(),
    }
}

#[test]
fn evaluates_rules_packages_and_data() {
    let set = RegoSet::build(
        &[module(
            "ex.rego",
            "package ex\n\nallow if input.user == data.admins[_]\n\nname := \"ex\"\n",
        )],
        serde_json::json!({"admins": ["ana"]}),
        7,
        settings(),
    )
    .unwrap();
    let input = |user: &str| Some(regorus::Value::from(serde_json::json!({"user": user})));
    assert_eq!(
        set.evaluate("data.ex.allow", input("ana")).unwrap(),
        Some(regorus::Value::from(true))
    );
    assert_eq!(
        set.evaluate("data.ex.allow", input("bob")).unwrap(),
        None,
        "undefined"
    );
    let package = set.evaluate("data.ex", input("ana")).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&package).unwrap(),
        serde_json::json!({"allow": true, "name": "ex"})
    );
    let admins = set.evaluate("data.admins", None).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&admins).unwrap(),
        serde_json::json!(["ana"])
    );
    assert_eq!(set.evaluate("data.nothing.here", None).unwrap(), None);
    assert_eq!(set.revision(), 7);
}

#[test]
fn rules_run_on_the_vm_and_other_paths_on_the_interpreter() {
    let set = RegoSet::build(
        &[module(
            "ex.rego",
            "package ex\n\nallow if input.n > data.limit\n",
        )],
        serde_json::json!({"limit": 2}),
        1,
        settings(),
    )
    .unwrap();
    let n = |n: i64| Some(regorus::Value::from(serde_json::json!({"n": n})));
    assert_eq!(
        set.evaluate("data.ex.allow", n(3)).unwrap(),
        Some(regorus::Value::from(true))
    );
    assert_eq!(set.evaluate("data.ex.allow", n(1)).unwrap(), None);
    assert!(set.evaluate("data.ex", n(3)).unwrap().is_some());
    PROGRAMS.with(|cell| {
        let programs = cell.borrow();
        assert_eq!(programs.0, set.generation);
        assert!(
            programs.1["data.ex.allow"].is_some(),
            "the rule has a VM program"
        );
        assert!(
            programs.1["data.ex"].is_none(),
            "a package is not a rule: interpreter"
        );
    });
}

#[test]
fn parse_errors_carry_the_location() {
    let err = RegoSet::build(
        &[module(
            "bad.rego",
            "package bad\n\nallow if {\n  input.x ==\n}\n",
        )],
        serde_json::json!({}),
        1,
        settings(),
    )
    .err()
    .unwrap();
    assert_eq!(err.code, "rego_parse_error");
    assert_eq!(err.location.file, "bad.rego");
    assert!(err.location.row >= 4, "{err}");
    assert!(err.location.col > 0, "{err}");
    assert!(!err.message.contains("-->"), "{err}");
}

#[test]
fn a_runaway_evaluation_stops_at_the_time_limit() {
    let set = RegoSet::build(
        &[module(
            "slow.rego",
            "package slow\n\nspin := count([[x, y] | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000)])\n",
        )],
        serde_json::json!({}),
        1,
        RegoSettings {
            time_limit: Duration::from_millis(20),
        },
    )
    .unwrap();
    let err = set.evaluate("data.slow.spin", None).unwrap_err();
    assert_eq!(
        err,
        EvalError::TimeLimit {
            path: "data.slow.spin".into(),
            limit_ms: 20
        }
    );
}

fn refused(text: &str) -> CompileError {
    match RegoSet::build(
        &[module("m.rego", text)],
        serde_json::json!({}),
        1,
        settings(),
    ) {
        Ok(_) => panic!("compiled:\n{text}"),
        Err(err) => err,
    }
}

#[test]
fn recursion_is_refused_when_built() {
    for (text, rule) in [
        ("package rec1\np := q\nq := p\n", "data.rec1.p"),
        ("package rec2\nf(x) := f(x)\np := f(1)\n", "data.rec2.f"),
        (
            "package rec3\ns contains x if { some x in s }\n",
            "data.rec3.s",
        ),
        (
            "package rec4\nf(x) := g(x)\ng(x) := f(x)\np := f(1)\n",
            "data.rec4.f",
        ),
        (
            "package rec5\np := data.rec5.q\nq := data.rec5.p\n",
            "data.rec5.p",
        ),
        (
            "package rec6\nimport data.rec6 as me\np if me.q\nq if { some x in me.p }\n",
            "data.rec6.p",
        ),
        (
            "package rec7\np := x if { x := [y | y := q[_]] }\nq := [p]\n",
            "data.rec7.p",
        ),
        ("package rec8\np := data.rec8\n", "data.rec8.p"),
        // A comprehension's variable is local to it: the `q` after it is the rule.
        (
            "package rec9\np if { ys := [q | some q in input.xs]; count(ys) > 0; q }\nq if p\n",
            "data.rec9.p",
        ),
        (
            "package rec10\np := 1 if { x := 2; x > 1 } else := q\nq := p\n",
            "data.rec10.p",
        ),
    ] {
        let err = refused(text);
        assert_eq!(err.code, "rego_recursion_error", "{text}: {err}");
        assert!(err.message.contains(rule), "{text}: {err}");
        assert_eq!(err.location.file, "m.rego");
        assert!(err.location.row >= 2, "{err}");
    }
    // Across modules too.
    let err = RegoSet::build(
        &[
            module("a.rego", "package a\np := data.b.q\n"),
            module("b.rego", "package b\nq := data.a.p\n"),
        ],
        serde_json::json!({}),
        1,
        settings(),
    )
    .err()
    .unwrap();
    assert_eq!(err.code, "rego_recursion_error");
}

#[test]
fn locals_and_other_rules_are_not_recursion() {
    for text in [
        "package ok1\np := q\nq := 1\n",
        "package ok2\nf(x) := y if { y := x + 1 }\np := f(1)\n",
        "package ok3\nq := 1\np if { some x in input.items; x > q }\n",
        "package ok4\np contains x if { some x in input.a }\nr := count(p)\n",
        "package ok5\ndefault allow := false\nallow if input.user == \"a\"\n",
        "package ok6\nimport data.other.limits\np if input.n > limits.max\n",
        "package ok7\na.b := 1\na.c := a.b + 1\n",
    ] {
        if let Err(err) = RegoSet::build(
            &[module("m.rego", text)],
            serde_json::json!({}),
            1,
            settings(),
        ) {
            panic!("{text}: {err}");
        }
    }
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let text = format!(
        "package nest\np := {}1{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let err = refused(&text);
    assert_eq!(err.code, "rego_parse_error");
    assert!(err.message.contains("nest deeper"), "{err}");
    assert!(err.message.contains("data document"), "{err}");
    assert_eq!(err.location.row, 2);
}

#[test]
fn pure_data_is_read_without_evaluation() {
    let set = RegoSet::build(
        &[module(
            "ex.rego",
            "package ex\n\nallow if input.n > data.limits.n\n",
        )],
        serde_json::json!({"limits": {"n": 2, "big-list": [1, 2]}, "other": 1}),
        1,
        settings(),
    )
    .unwrap();
    assert_eq!(
        set.read_data(&path_components(&data_path("limits/big-list")).unwrap()),
        Some(Some(regorus::Value::from(serde_json::json!([1, 2]))))
    );
    assert_eq!(
        set.read_data(&path_components("data.limits.absent").unwrap()),
        Some(None)
    );
    assert_eq!(
        set.read_data(&path_components("data.ex.allow").unwrap()),
        None,
        "a rule: evaluated"
    );
    assert_eq!(
        set.read_data(&path_components("data").unwrap()),
        None,
        "above a package: evaluated"
    );
    assert_eq!(
        path_components(r#"data.a["b-c"].d"#),
        Some(vec!["data".into(), "a".into(), "b-c".into(), "d".into()])
    );
    assert_eq!(path_components("data.a[x]"), None);
    // Found by fuzzing: a query path regorus would parse for ever.
    let nested = format!("data.neural{}hive", "[".repeat(40));
    assert!(matches!(
        set.evaluate(&nested, None),
        Err(EvalError::InvalidPath { .. })
    ));
    // Data far too large to evaluate within the time limit is still read whole.
    let big: Vec<serde_json::Value> = (0..200_000).map(|i| serde_json::json!({"i": i})).collect();
    let set = RegoSet::build(
        &[],
        serde_json::json!({"docs": {"big": big}}),
        1,
        RegoSettings {
            time_limit: Duration::from_millis(1),
        },
    )
    .unwrap();
    let value = set.evaluate("data.docs.big", None).unwrap().unwrap();
    assert_eq!(value.as_array().unwrap().len(), 200_000);
}

#[test]
fn data_paths_quote_what_is_not_an_identifier() {
    assert_eq!(
        data_path("neuralhive/orchestrator/resource_limits"),
        "data.neuralhive.orchestrator.resource_limits"
    );
    assert_eq!(data_path("a/b-c/"), "data.a[\"b-c\"]");
    assert_eq!(data_path(""), "data");
}
