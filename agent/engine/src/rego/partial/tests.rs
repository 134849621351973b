//! Partial evaluation: inlining, the known/unknown split, always and never true, OR of bodies,
//! each refused construct with its location, and the UCAST and SQL translations.

use std::time::Duration;

use serde_json::json;

use super::ucast::{self, Dialect, Target, Variant};
use super::*;
use crate::rego::{ModuleSource, RegoSet, RegoSettings};

fn set(modules: &[(&str, &str)], data: serde_json::Value) -> RegoSet {
    RegoSet::build(
        &modules
            .iter()
            .map(|(id, text)| ModuleSource {
                id: (*id).into(),
                text: (*text).into(),
            })
            .collect::<Vec<_>>(),
        data,
        1,
        RegoSettings {
            time_limit: Duration::from_millis(500),
        },
    )
    .unwrap()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The residual queries as text, one string per query.
fn texts(residuals: &Residuals) -> Option<Vec<String>> {
    residuals.queries.as_ref().map(|queries| {
        queries
            .iter()
            .map(|q| {
                q.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .collect()
    })
}

#[test]
fn comparisons_with_known_parts_substituted() {
    let set = set(
        &[(
            "f.rego",
            "package filters\n\ninclude if input.fruits.colour == input.colour\n",
        )],
        json!({}),
    );
    let out = set
        .partial(
            CompileQuery::Rule("filters/include"),
            Some(regorus::Value::from(json!({"colour": "red"}))),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    assert_eq!(
        texts(&out).unwrap(),
        vec![r#"eq(input.fruits.colour, "red")"#]
    );
}

const FILTERS: &str = r#"package filters

include if input.fruits.colour == input.colour

include if {
	input.fruits.price < data.limits.max
	input.fruits.name in {"apple", "pear"}
}
"#;

fn fruits(colour: &str) -> Option<regorus::Value> {
    Some(regorus::Value::from(json!({"colour": colour})))
}

fn filters() -> RegoSet {
    set(&[("filters.rego", FILTERS)], json!({"limits": {"max": 5}}))
}

#[test]
fn bodies_of_a_rule_are_or_and_known_values_are_substituted() {
    let out = filters()
        .partial(
            CompileQuery::Rule("filters/include"),
            fruits("red"),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    assert_eq!(
        texts(&out).unwrap(),
        vec![
            r#"eq(input.fruits.colour, "red")"#,
            r#"lt(input.fruits.price, 5); internal.member_2(input.fruits.name, ["apple","pear"])"#,
        ]
    );
    // The same as a query text.
    let text = filters()
        .partial(
            CompileQuery::Text("data.filters.include == true"),
            fruits("red"),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    assert_eq!(texts(&text), texts(&out));
}

#[test]
fn opa_ast_json_shape() {
    let out = filters()
        .partial(
            CompileQuery::Rule("filters/include"),
            fruits("red"),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    let json = out.to_opa_json();
    assert_eq!(
        json["queries"][0][0],
        json!({"index": 0, "terms": [
            {"type": "ref", "value": [{"type": "var", "value": "eq"}]},
            {"type": "ref", "value": [
                {"type": "var", "value": "input"},
                {"type": "string", "value": "fruits"},
                {"type": "string", "value": "colour"},
            ]},
            {"type": "string", "value": "red"},
        ]})
    );
    assert_eq!(
        json["queries"][1][1]["terms"][0],
        json!({"type": "ref", "value": [
            {"type": "var", "value": "internal"},
            {"type": "string", "value": "member_2"},
        ]})
    );
    assert_eq!(json["queries"][1][1]["index"], json!(1));
    assert_eq!(
        json["queries"][1][1]["terms"][2],
        json!({"type": "set", "value": [
            {"type": "string", "value": "apple"},
            {"type": "string", "value": "pear"},
        ]})
    );
    assert_eq!(
        json["queries"][1][0]["terms"][2],
        json!({"type": "number", "value": 5})
    );
}

#[test]
fn always_and_never_true() {
    let set = set(&[], json!({}));
    let run = |query: &str, unknowns: Option<&[&str]>| {
        let unknowns = unknowns.map(strings);
        set.partial(CompileQuery::Text(query), None, unknowns.as_deref())
            .unwrap()
    };
    // OPA's table: unknowns default to input; no unknowns and no input is undefined.
    assert_eq!(
        texts(&run("input.x > 0", None)).unwrap(),
        vec!["gt(input.x, 0)"]
    );
    assert_eq!(
        texts(&run("input.x > 0", Some(&["input"]))).unwrap(),
        vec!["gt(input.x, 0)"]
    );
    assert_eq!(run("input.x > 0", Some(&[])).queries, None);
    let always = run("1 > 0", None);
    assert_eq!(always.queries, Some(vec![vec![]]));
    assert_eq!(always.to_opa_json(), json!({"queries": [[]]}));
    let never = run("1 < 0", None);
    assert_eq!(never.queries, None);
    assert_eq!(never.to_opa_json(), json!({}));
}

#[test]
fn a_known_body_decides_alone() {
    let set = set(
        &[(
            "f.rego",
            "package filters\n\ninclude if input.user == \"alice\"\n\ninclude if {\n\tinput.user == \"bob\"\n\tinput.fruits.owner == input.user\n}\n",
        )],
        json!({}),
    );
    let run = |user: &str| {
        set.partial(
            CompileQuery::Rule("filters/include"),
            Some(regorus::Value::from(json!({"user": user}))),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap()
    };
    assert_eq!(run("alice").queries, Some(vec![vec![]]), "always true");
    assert_eq!(
        texts(&run("bob")).unwrap(),
        vec![r#"eq(input.fruits.owner, "bob")"#]
    );
    assert_eq!(run("zed").queries, None, "never true");
}

const AUTHZ: &str = "package example.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user in data.example.admins\n";

#[test]
fn a_default_that_cannot_apply_is_inlined_past_and_one_that_could_is_refused() {
    let set = set(
        &[("example/authz.rego", AUTHZ)],
        json!({"example": {"admins": ["alice", "bob"]}}),
    );
    let out = set
        .partial(
            CompileQuery::Text("data.example.authz.allow == true"),
            None,
            None,
        )
        .unwrap();
    assert_eq!(
        texts(&out).unwrap(),
        vec![r#"internal.member_2(input.user, ["alice","bob"])"#]
    );
    // Known input, nothing unknown: evaluated whole.
    let known = |user: &str| {
        set.partial(
            CompileQuery::Text("data.example.authz.allow == true"),
            Some(regorus::Value::from(json!({"user": user}))),
            Some(&[]),
        )
        .unwrap()
    };
    assert_eq!(known("alice").queries, Some(vec![vec![]]));
    assert_eq!(known("zed").queries, None);
    // `allow == false` holds when no body does: the default decides, which needs negation.
    let err = set
        .partial(
            CompileQuery::Text("data.example.authz.allow == false"),
            None,
            None,
        )
        .unwrap_err();
    match err {
        PartialError::Unsupported {
            construct,
            location,
        } => {
            assert!(
                construct.contains("default value of `data.example.authz.allow`"),
                "{construct}"
            );
            assert_eq!(
                (location.file.as_str(), location.row, location.col),
                ("example/authz.rego", 5, 1)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rules_inline_into_rules_and_alternatives_multiply() {
    let set = set(
        &[(
            "f.rego",
            r#"package filters

tenancy if input.fruits.tenant == input.tenant

ripe if input.fruits.days > 3
ripe if input.fruits.colour == "red"

include if {
	tenancy
	ripe
}
"#,
        )],
        json!({}),
    );
    let out = set
        .partial(
            CompileQuery::Rule("filters/include"),
            Some(regorus::Value::from(json!({"tenant": 2}))),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    assert_eq!(
        texts(&out).unwrap(),
        vec![
            "eq(input.fruits.tenant, 2); gt(input.fruits.days, 3)",
            r#"eq(input.fruits.tenant, 2); eq(input.fruits.colour, "red")"#,
        ]
    );
}

#[test]
fn iteration_over_known_data_gives_a_query_per_solution() {
    let set = set(
        &[(
            "f.rego",
            "package filters\n\ninclude if {\n\tsome role in data.roles[input.user]\n\tinput.fruits.owner_role == role\n}\n",
        )],
        json!({"roles": {"alice": ["picker", "packer"]}}),
    );
    let out = set
        .partial(
            CompileQuery::Rule("filters/include"),
            Some(regorus::Value::from(json!({"user": "alice"}))),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    let mut got = texts(&out).unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![
            r#"eq(input.fruits.owner_role, "packer")"#,
            r#"eq(input.fruits.owner_role, "picker")"#,
        ]
    );
}

#[test]
fn not_unification_variables_and_builtins_on_known_arguments() {
    let set = set(
        &[(
            "f.rego",
            r#"package filters

include if {
	not input.fruits.name == "apple"
	f := input.fruits
	f.colour = upper(input.colour)
	startswith(input.fruits.name, concat("", ["b", "a"]))
}
"#,
        )],
        json!({}),
    );
    let out = set
        .partial(
            CompileQuery::Rule("filters/include"),
            fruits("red"),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    assert_eq!(
        texts(&out).unwrap(),
        vec![
            r#"not eq(input.fruits.name, "apple"); eq(input.fruits.colour, "RED"); startswith(input.fruits.name, "ba")"#
        ]
    );
    assert_eq!(out.to_opa_json()["queries"][0][0]["negated"], json!(true));
}

/// The construct and `row:col` of a refusal.
fn refused(set: &RegoSet, query: CompileQuery<'_>) -> (String, String) {
    match set
        .partial(query, fruits("red"), Some(&strings(&["input.fruits"])))
        .unwrap_err()
    {
        PartialError::Unsupported {
            construct,
            location,
        } => (
            construct,
            format!("{}:{}:{}", location.file, location.row, location.col),
        ),
        other => panic!("not refused as unsupported: {other:?}"),
    }
}

#[test]
fn refuses_what_it_cannot_answer_exactly_with_the_location() {
    let set = set(
        &[(
            "f.rego",
            r#"package filters

iter if input.fruits.tags[_] == "x"

call if upper(input.fruits.name) == "A"

not_rule if not ripe

ripe if input.fruits.days > 3

tags contains t if {
	t := input.fruits.tag
}

uses_tags if tags["x"]

with_else := 1 if input.fruits.a == 1 else := 2

uses_else if with_else == 1

every_fruit if every x in input.fruits.list { x > 1 }

fn(x) if input.fruits.name == x

uses_fn if fn("a")

some_in if some x in input.fruits.list
"#,
        )],
        json!({}),
    );
    let cases = [
        (
            "data.filters.iter",
            "iteration over an unknown collection",
            "f.rego:3:27",
        ),
        (
            "data.filters.call",
            "unknowns inside the call of `upper`",
            "f.rego:5:9",
        ),
        (
            "data.filters.not_rule",
            "`not` over a rule that depends on unknowns",
            "f.rego:7:13",
        ),
        (
            "data.filters.uses_tags",
            "the rule `data.filters.tags`",
            "f.rego:15:14",
        ),
        (
            "data.filters.uses_else",
            "`else` in the rule `data.filters.with_else`",
            "f.rego:17:",
        ),
        (
            "data.filters.every_fruit",
            "`every` over unknowns",
            "f.rego:21:",
        ),
        ("data.filters.uses_fn", "`fn`", "f.rego:25:"),
        (
            "data.filters.some_in",
            "iteration over an unknown collection",
            "f.rego:27:",
        ),
        (
            "input.fruits[x].a == 1",
            "iteration over an unknown collection",
            "<query>:1:14",
        ),
        (
            "input == {}",
            "holds the unknown `input.fruits` whole",
            "<query>:1:1",
        ),
    ];
    for (query, construct, at) in cases {
        let (got, location) = refused(&set, CompileQuery::Text(query));
        assert!(got.contains(construct), "{query}: {got}");
        assert!(location.starts_with(at), "{query}: {location} ({got})");
    }
}

#[test]
fn invalid_queries_and_unknowns() {
    let set = filters();
    assert!(matches!(
        set.partial(CompileQuery::Text("x := "), None, None),
        Err(PartialError::InvalidQuery { .. })
    ));
    assert!(matches!(
        set.partial(
            CompileQuery::Text("true"),
            None,
            Some(&strings(&["fruits"]))
        ),
        Err(PartialError::InvalidUnknown { .. })
    ));
    assert!(matches!(
        set.partial(
            CompileQuery::Text("true"),
            None,
            Some(&strings(&["data.filters"]))
        ),
        Err(PartialError::InvalidUnknown { .. })
    ));
    let deep = format!("x := {}1{}", "[".repeat(40), "]".repeat(40));
    assert!(matches!(
        set.partial(CompileQuery::Text(&deep), None, None),
        Err(PartialError::InvalidQuery { .. })
    ));
}

// ---- data filters ----

fn filter_residuals() -> Vec<Vec<Residual>> {
    filters()
        .partial(
            CompileQuery::Rule("filters/include"),
            fruits("red"),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap()
        .queries
        .unwrap()
}

#[test]
fn ucast_of_comparisons_and_membership() {
    let node = ucast::build(&filter_residuals(), Target::Ucast(Variant::All), None).unwrap();
    assert_eq!(
        ucast::to_json(node.as_ref()),
        json!({"type": "compound", "operator": "or", "value": [
            {"type": "field", "operator": "eq", "field": "fruits.colour", "value": "red"},
            {"type": "compound", "operator": "and", "value": [
                {"type": "field", "operator": "lt", "field": "fruits.price", "value": 5},
                {"type": "field", "operator": "in", "field": "fruits.name", "value": ["apple", "pear"]},
            ]},
        ]})
    );
    // Minimal UCAST has no `in`.
    let errors =
        ucast::build(&filter_residuals(), Target::Ucast(Variant::Minimal), None).unwrap_err();
    assert_eq!(errors[0].code, "pe_fragment_error");
    assert_eq!(
        errors[0].message,
        "invalid builtin `in`: unsupported for UCAST"
    );
    assert_eq!(errors[0].location.row, 7);
}

#[test]
fn sql_of_comparisons_and_membership_per_dialect() {
    let residuals = filter_residuals();
    let node = ucast::build(&residuals, Target::Sql(Dialect::Postgres), None).unwrap();
    assert_eq!(
        sql::where_clause(node.as_ref(), Dialect::Postgres),
        "WHERE (fruits.colour = E'red' OR (fruits.price < E'5' AND fruits.name IN (E'apple', E'pear')))"
    );
    assert_eq!(
        sql::where_clause(node.as_ref(), Dialect::MySql),
        "WHERE (fruits.colour = 'red' OR (fruits.price < '5' AND fruits.name IN ('apple', 'pear')))"
    );
    assert_eq!(
        sql::where_clause(node.as_ref(), Dialect::SqlServer),
        "WHERE (fruits.colour = N'red' OR (fruits.price < N'5' AND fruits.name IN (N'apple', N'pear')))"
    );
    // Mappings rename tables and columns.
    let mapped = ucast::build(
        &residuals,
        Target::Sql(Dialect::Sqlite),
        Some(&json!({"sqlite": {"fruits": {"$self": "f", "colour": "c"}}})),
    )
    .unwrap();
    assert_eq!(
        sql::where_clause(mapped.as_ref(), Dialect::Sqlite),
        "WHERE (f.c = 'red' OR (f.price < '5' AND f.name IN ('apple', 'pear')))"
    );
    assert_eq!(
        sql::where_clause(None, Dialect::Postgres),
        "",
        "always true"
    );
}

#[test]
fn filters_flip_negate_and_compare_columns_within_each_targets_limits() {
    let set = set(
        &[(
            "f.rego",
            r#"package filters

flipped if 10 <= input.fruits.price

negated if not input.fruits.name == "o'brien"

columns if input.fruits.price < input.fruits.max_price

missing if input.fruits.owner == null

bare if input.fruits.ripe

prefixed if startswith(input.fruits.name, "b_a")
"#,
        )],
        json!({}),
    );
    let build = |rule: &str, target: Target| {
        let residuals = set
            .partial(
                CompileQuery::Rule(rule),
                None,
                Some(&strings(&["input.fruits"])),
            )
            .unwrap()
            .queries
            .unwrap();
        ucast::build(&residuals, target, None)
    };
    let all = Target::Ucast(Variant::All);
    let pg = Target::Sql(Dialect::Postgres);
    let where_pg =
        |rule: &str| sql::where_clause(build(rule, pg).unwrap().as_ref(), Dialect::Postgres);
    assert_eq!(
        ucast::to_json(build("filters/flipped", all).unwrap().as_ref()),
        json!({"type": "field", "operator": "gte", "field": "fruits.price", "value": 10})
    );
    assert_eq!(where_pg("filters/flipped"), "WHERE fruits.price >= E'10'");
    assert_eq!(
        ucast::to_json(build("filters/negated", all).unwrap().as_ref()),
        json!({"type": "compound", "operator": "not", "value": [
            {"type": "field", "operator": "eq", "field": "fruits.name", "value": "o'brien"}
        ]})
    );
    assert_eq!(
        where_pg("filters/negated"),
        r"WHERE NOT fruits.name = E'o\'brien'"
    );
    assert_eq!(
        sql::where_clause(
            build("filters/negated", Target::Sql(Dialect::SqlServer))
                .unwrap()
                .as_ref(),
            Dialect::SqlServer
        ),
        "WHERE NOT fruits.name = N'o''brien'"
    );
    let linq = build("filters/negated", Target::Ucast(Variant::Linq)).unwrap_err();
    assert_eq!(
        linq[0].message,
        "\"not\" not permitted: unsupported feature \"not\" for UCAST (LINQ)"
    );
    assert_eq!(
        ucast::to_json(build("filters/columns", all).unwrap().as_ref()),
        json!({"type": "field", "operator": "lt", "field": "fruits.price", "value": {"field": "fruits.max_price"}})
    );
    assert_eq!(
        where_pg("filters/columns"),
        "WHERE fruits.price < fruits.max_price"
    );
    let prisma = build("filters/columns", Target::Ucast(Variant::Prisma)).unwrap_err();
    assert!(
        prisma[0].message.contains("\"field-ref\""),
        "{}",
        prisma[0].message
    );
    assert_eq!(where_pg("filters/missing"), "WHERE fruits.owner IS NULL");
    let bare = build("filters/bare", all).unwrap_err();
    assert_eq!(
        bare[0].message,
        "invalid statement \"input.fruits.ripe\": try `input.fruits.ripe != false`"
    );
    assert_eq!(
        where_pg("filters/prefixed"),
        r"WHERE fruits.name LIKE E'b\\_a%'"
    );
    let sqlite = build("filters/prefixed", Target::Sql(Dialect::Sqlite)).unwrap_err();
    assert_eq!(
        sqlite[0].message,
        "invalid builtin `startswith`: unsupported for SQL (sqlite)"
    );
}

#[test]
fn targets_from_media_types() {
    assert_eq!(
        Target::from_media_type("application/vnd.opa.ucast.all+json"),
        Some(Target::Ucast(Variant::All))
    );
    assert_eq!(
        Target::from_media_type("application/vnd.styra.sql.postgresql+json"),
        Some(Target::Sql(Dialect::Postgres))
    );
    assert_eq!(Target::from_media_type("application/json"), None);
    assert_eq!(
        Target::from_dialect("ucast+linq"),
        Some(Target::Ucast(Variant::Linq))
    );
}

#[test]
fn not_holds_when_its_known_operand_is_undefined_and_covers_every_value() {
    let set = set(
        &[(
            "f.rego",
            r#"package filters

missing if not input.fruits.name == input.missing

each if not input.fruits.name == data.banned[_]

one if not input.fruits.name == input.colour
"#,
        )],
        json!({"banned": ["rotten", "mouldy"]}),
    );
    let run = |rule: &str| {
        set.partial(
            CompileQuery::Rule(rule),
            fruits("red"),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap()
    };
    assert_eq!(
        run("filters/missing").queries,
        Some(vec![vec![]]),
        "not undefined holds"
    );
    assert_eq!(
        texts(&run("filters/each")).unwrap(),
        vec![r#"not eq(input.fruits.name, "rotten"); not eq(input.fruits.name, "mouldy")"#]
    );
    assert_eq!(
        texts(&run("filters/one")).unwrap(),
        vec![r#"not eq(input.fruits.name, "red")"#]
    );
}

#[test]
fn imports_resolve_to_their_paths() {
    let set = set(
        &[(
            "f.rego",
            "package filters\n\nimport input.fruits as f\n\ninclude if f.colour == \"red\"\n",
        )],
        json!({}),
    );
    let out = set
        .partial(
            CompileQuery::Rule("filters/include"),
            None,
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    assert_eq!(
        texts(&out).unwrap(),
        vec![r#"eq(input.fruits.colour, "red")"#]
    );
}
