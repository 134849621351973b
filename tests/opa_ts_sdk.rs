//! End to end with the OPA TypeScript SDK (`@styra/opa`, the SDK OPA's documentation points to),
//! unchanged: `tests/opa_ts_sdk/check.mjs` calls every method of its `OPAClient` against a real
//! agent: the decisions, and the data filters (`getFilters`, `getMultipleFilters`) compiled from
//! the filter policy loaded here.
//!
//! The package is installed with npm into Cargo's target tmp dir, once, and reused. This needs
//! Node.js 18 or newer and npm, and the npm registry the first time.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use test_support::{Agent, Options};

const PACKAGE: &str = "@styra/opa";
const VERSION: &str = "1.7.10";
const HOW_TO_FIX: &str = "this test needs Node.js (18 or newer) with npm (e.g. `apt-get install \
     nodejs npm`) and access to the npm registry to install @styra/opa@1.7.10";

const POLICY: &str = "package example.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user in data.example.admins\n";
/// Data filters, as OPA's data filtering documentation writes them (the line of `not_apple` is
/// checked).
const FILTERS: &str = r#"package filters

import rego.v1

include if input.fruits.colour == input.colour

include if {
	input.fruits.price < data.shop.budget
	input.fruits.name in {"apple", "pear"}
}

owned if {
	input.user != "nobody"
	input.fruits.owner == input.user
}

everything if input.user == "admin"

not_apple if not input.fruits.name == "apple"

tagged if input.fruits.tags[_] == "x"
"#;
const MAIN: &str =
    "package system\n\nimport rego.v1\n\nmain := {\"allow\": data.example.authz.allow}\n";

/// A directory with the SDK in its `node_modules`: made on the first run, reused afterwards.
fn sdk_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("opa-ts-sdk");
    let installed = dir.join("node_modules/@styra/opa/package.json");
    let has = std::fs::read_to_string(&installed)
        .is_ok_and(|text| text.contains(&format!("\"version\": \"{VERSION}\"")));
    if has {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("package.json"), "{\"private\": true}\n").unwrap();
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent"])
        .arg(format!("{PACKAGE}@{VERSION}"))
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run npm: {err}: {HOW_TO_FIX}"));
    assert!(
        out.status.success(),
        "npm install {PACKAGE}@{VERSION} failed: {HOW_TO_FIX}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn the_opa_typescript_sdk_works_unchanged() {
    let dir = sdk_dir();
    // The script runs from the package's directory, so that `import "@styra/opa"` finds it.
    let script = dir.join("check.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/opa_ts_sdk/check.mjs"),
        &script,
    )
    .unwrap();
    let agent = Agent::start(Options::default());
    assert_eq!(
        agent.put_text("/v1/policies/example/authz.rego", POLICY).0,
        200
    );
    assert_eq!(agent.put_text("/v1/policies/system/main.rego", MAIN).0, 200);
    assert_eq!(agent.put_text("/v1/policies/filters.rego", FILTERS).0, 200);
    assert_eq!(agent.put("/v1/data/shop", &json!({"budget": 5})).0, 204);
    assert_eq!(
        agent
            .put("/v1/data/example", &json!({"admins": ["alice"]}))
            .0,
        204
    );
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{}", agent.addr))
        .output()
        .unwrap_or_else(|err| panic!("cannot run node: {err}: {HOW_TO_FIX}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "check.mjs failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n--- agent log\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        agent.log_text()
    );
}
