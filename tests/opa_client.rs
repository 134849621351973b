//! End to end with an off-the-shelf OPA client: the Python library `opa-python-client`, unchanged,
//! drives the agent's OPA-compatible API through `tests/opa_client/check.py`.
//!
//! The library lives in a virtual environment under Cargo's target tmp dir, created once and reused
//! by later runs. This needs `python3` with the `venv` module, and PyPI the first time.

use test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Agent, Options};

const PACKAGE: &str = "opa-python-client";
const VERSION: &str = "3.0.0";
const HOW_TO_FIX: &str = "this test needs Python 3 with venv and pip (e.g. `apt-get install python3 \
     python3-venv python3-pip`) and access to PyPI to install opa-python-client==3.0.0";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/opa_client/check.py")
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|err| format!("{shown}: {err}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{shown} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether the venv's python has the library at the pinned version.
fn has_library(python: &Path) -> bool {
    let check = format!(
        "import importlib.metadata as m, opa_client; assert m.version({PACKAGE:?}) == {VERSION:?}"
    );
    python.exists() && run(Command::new(python).arg("-c").arg(check)).is_ok()
}

/// The python of a venv that has the library: made on the first run, reused afterwards.
fn venv_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("opa-client-venv");
    let python = venv.join("bin").join("python");
    if has_library(&python) {
        return python;
    }
    let made = run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv))
    .and_then(|_| {
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
            ])
            .arg(format!("{PACKAGE}=={VERSION}")))
    });
    if let Err(err) = made {
        panic!(
            "cannot set up the Python venv at {}: {HOW_TO_FIX}\n{err}",
            venv.display()
        );
    }
    assert!(
        has_library(&python),
        "{PACKAGE}=={VERSION} is not importable after pip install in {}: {HOW_TO_FIX}",
        venv.display()
    );
    python
}

#[test]
fn an_off_the_shelf_opa_client_works_unchanged() {
    let python = venv_python();
    let agent = Agent::start(Options::default());

    let out = Command::new(&python)
        .arg(script())
        .arg(agent.addr.ip().to_string())
        .arg(agent.addr.port().to_string())
        .output()
        .expect("run check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "check.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- agent log\n{}",
        out.status,
        agent.log_text()
    );
}
