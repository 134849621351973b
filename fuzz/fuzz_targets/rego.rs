//! Rego modules through `RegoSet::build` (the agent's parse-cost and recursion checks, then
//! regorus) and, when a set builds, evaluation of a few paths under a short time limit.
//!
//! Input: `<module text> NUL <input JSON> NUL <data JSON> NUL <extra path>`; every part after the
//! module is optional. Evaluated: `data.fuzz.p`, `data.fuzz`, the module's own package and its
//! `allow` / `p` rules, the extra path, and a data-only path.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use agent_engine::rego::{ModuleSource, RegoSet, RegoSettings, data_path};

const TIME_LIMIT: Duration = Duration::from_millis(50);

/// `FUZZ_DEBUG=1`: print what each input built and evaluated to (for checking seeds).
static DEBUG: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_DEBUG").is_some());

/// `package a.b` -> `data.a.b` (a guess from the text; a wrong guess is just another path).
fn package_path(module: &str) -> Option<String> {
    let line = module
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("package "))?;
    let name: String = line
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '"' | '-'))
        .collect();
    (!name.is_empty()).then(|| format!("data.{name}"))
}

fuzz_target!(|bytes: &[u8]| {
    let mut parts = bytes.splitn(4, |&b| b == 0);
    let Some(Ok(text)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let input = parts
        .next()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(json).ok());
    let data = match parts
        .next()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(json).ok())
    {
        Some(object @ serde_json::Value::Object(_)) => object,
        _ => serde_json::json!({"limits": {"max": 3, "big-list": [1, 2]}}),
    };
    let extra = parts.next().and_then(|p| std::str::from_utf8(p).ok());

    let modules = [ModuleSource {
        id: "fuzz.rego".into(),
        text: text.to_owned(),
    }];
    let settings = RegoSettings {
        time_limit: TIME_LIMIT,
    };
    let set = match RegoSet::build(&modules, data, 1, settings) {
        Ok(set) => set,
        Err(err) => {
            let message = err.to_string();
            if *DEBUG {
                eprintln!("build: {message}");
            }
            return;
        }
    };
    assert_eq!(set.module_count(), 1);

    let mut paths = vec!["data.fuzz.p".to_owned(), "data.fuzz".to_owned()];
    if let Some(package) = package_path(text) {
        paths.push(format!("{package}.allow"));
        paths.push(format!("{package}.p"));
        paths.push(package);
    }
    paths.push(data_path("limits/big-list"));
    if let Some(extra) = extra {
        paths.push(extra.to_owned());
    }
    for path in &paths {
        let input = input.clone().map(regorus::Value::from);
        // Twice: the first evaluation of a path compiles its VM program, the second reuses it.
        let first = set.evaluate(path, input.clone());
        let second = set.evaluate(path, input);
        // (No comparison of the two: `time.now_ns()`, `rand.intn` ... differ between runs.)
        if *DEBUG {
            eprintln!("{path}: {first:?}");
        }
        for result in [first, second] {
            if let Err(err) = result {
                let _ = (err.kind(), err.to_string());
            }
        }
    }
});
