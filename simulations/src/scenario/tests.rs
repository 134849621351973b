//! Scenario files: references checked, counts bounded, workloads named by field.

use super::*;

#[test]
fn a_bad_reference_names_its_field() {
    let text = r#"
        name = "x"
        engine = "fast"
        nodes = 10
        seed = 1
        duration_sec = 5
        [[faults]]
        at_sec = 1
        kind = "kill"
        nodes = [3, 12]
    "#;
    let err = format!("{:#}", Scenario::parse(text).unwrap_err());
    assert!(err.contains("faults[0].nodes"), "{err}");
    assert!(err.contains("node 12 does not exist"), "{err}");
}

#[test]
fn a_bad_workload_names_its_field() {
    let base = "name = \"x\"\nengine = \"fast\"\nnodes = 4\nseed = 1\nduration_sec = 5\n";
    let cases = [
        (
            "[[incidents]]\ntype = \"a\"\nper_sec = 0\n",
            "incidents[0].per_sec: 0",
        ),
        (
            "[[incidents]]\ntype = \"a\"\nper_sec = 1\nfrom_sec = 4\nto_sec = 3\n",
            "incidents[0].from_sec: 4 to 3 s",
        ),
        (
            "[[incidents]]\ntype = \"a\"\nper_sec = 1\nnodes = [4]\n",
            "node 4 does not exist",
        ),
        (
            "[[writes]]\nat_sec = 1\nnode = 0\n[writes.policy]\nname = \"p\"\n",
            "writes[0].policy",
        ),
        (
            "[[faults]]\nat_sec = 1\nkind = \"kill_actor\"\nnodes = [1]\n",
            "takes no `nodes`",
        ),
    ];
    for (extra, expected) in cases {
        let err = format!(
            "{:#}",
            Scenario::parse(&format!("{base}{extra}")).unwrap_err()
        );
        assert!(err.contains(expected), "{extra}: {err}");
    }
}

#[test]
fn counts_are_bounded() {
    let mut text =
        String::from("name = \"x\"\nengine = \"fast\"\nnodes = 2\nseed = 1\nduration_sec = 5\n");
    for _ in 0..=MAX_EVENTS {
        text.push_str("[[writes]]\nat_sec = 1\nnode = 0\n");
    }
    let err = format!("{:#}", Scenario::parse(&text).unwrap_err());
    assert!(err.contains("1001 writes (at most 1000 each)"), "{err}");
}

#[test]
fn ranges_and_joins() {
    let text = r#"
        name = "x"
        engine = "fast"
        nodes = 4
        seed = 1
        duration_sec = 5
        [[faults]]
        at_sec = 1
        kind = "join"
        count = 2
        [[faults]]
        at_sec = 2
        kind = "partition"
        groups = ["0..3", [3, 5]]
        [[writes]]
        at_sec = 3
        node = 5
    "#;
    let scenario = Scenario::parse(text).unwrap();
    assert_eq!(scenario.max_nodes(), 6);
    assert_eq!(
        NodeSet::Text("0..3".into()).resolve(6).unwrap(),
        vec![0, 1, 2]
    );
    assert!(Scenario::parse(&text.replace("count = 2", "count = 1")).is_err());
    assert!(Scenario::parse(&text.replace("at_sec = 2", "at_sec = 0.5")).is_err());
}
