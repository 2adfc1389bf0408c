//! Real client drivers for the tests: a Python venv with `asyncpg` and `psycopg[binary]`
//! (PyPI) and a `node_modules` with `pg` (npm), installed once per machine under
//! `target/test-drivers/{py,node}` and shared by every test binary, and a way to run a
//! script with either, killed when it overruns its time.
//!
//! Installing is race-free across processes: each builds into a fresh temporary
//! directory beside the final one and renames it into place; a process that loses the
//! race uses the winner's. Within a process a `OnceLock` installs at most once.
//!
//! Scripts get their URLs from the environment the test passes (by convention
//! `PGW_URL` for the proxy, `DIRECT_URL` for the primary) and can import helpers from
//! `pgw` (Python) or `./pgw.js` (node): `attempt` runs one driver
//! call with its own timeout and returns `{"ok": value}`, `{"error": "SQLSTATE"}` or
//! `{"hung": "<step> did not answer within N s"}`, and `emit` prints the JSON line that
//! [`json_line`] reads back, so a failing assertion shows what each step did.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::command::OutputWithin;

/// Pinned, so a driver release cannot change what the tests see. Changing a version
/// changes the install directory, so the new versions are installed on next use.
const PYTHON_PACKAGES: &[&str] = &["asyncpg==0.32.0", "psycopg[binary]==3.3.9"];
const NODE_PACKAGES: &[&str] = &["pg@8.23.1"];
const DRIVERS_VERSION: &str = "asyncpg-0.32.0_psycopg-3.3.9_pg-8.23.1";

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-drivers")
        .join(DRIVERS_VERSION)
}

/// The venv's python, installing the venv on first use.
pub fn python() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        install("py", |dir| {
            let python3 =
                std::env::var("PGWARDEN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
            run_step(
                Command::new(&python3).args(["-m", "venv"]).arg(dir),
                &format!(
                    "creating a venv with `{python3} -m venv` (the driver tests need python3 \
                     with the venv module, e.g. Debian's python3-venv)"
                ),
            );
            run_step(
                Command::new(dir.join("bin/python"))
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--timeout=60",
                    ])
                    .args(PYTHON_PACKAGES),
                &format!("pip install {PYTHON_PACKAGES:?} (needs PyPI reachable)"),
            );
            run_step(
                Command::new(dir.join("bin/python")).args(["-c", "import asyncpg, psycopg"]),
                "importing asyncpg and psycopg in the new venv",
            );
        })
        .join("bin/python")
    })
    .clone()
}

/// The `node_modules` directory with node-postgres, installing it on first use.
pub fn node_modules() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES
        .get_or_init(|| {
            install("node", |dir| {
                run_step(
                    Command::new("npm")
                        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                        .arg("--prefix")
                        .arg(dir)
                        .args(NODE_PACKAGES),
                    &format!(
                        "npm install {NODE_PACKAGES:?} (needs node, npm and the npm registry)"
                    ),
                );
            })
            .join("node_modules")
        })
        .clone()
}

/// Returns `target/test-drivers/<name>`, building it with `build` (given an empty
/// temporary directory) if it is not there yet.
fn install(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let parent = drivers_dir();
    let target = parent.join(name);
    if target.is_dir() {
        return target;
    }
    std::fs::create_dir_all(&parent).expect("create target/test-drivers");
    remove_stale_builds(&parent);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let temporary =
        TemporaryDir(parent.join(format!(".{name}-building-{}-{nanos}", std::process::id())));
    build(&temporary.0);
    if std::fs::rename(&temporary.0, &target).is_err() {
        // Another process won the race: its directory is complete, use it.
        assert!(target.is_dir(), "installing {} failed", target.display());
    }
    target
}

/// A build directory, removed unless it was renamed into place (also on panic).
struct TemporaryDir(PathBuf);

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes builds left by processes killed more than an hour ago.
fn remove_stale_builds(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old && entry.file_name().to_string_lossy().contains("-building-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An install step (venv, pip, npm) from the registries: generous, but not forever.
const INSTALL_LIMIT: Duration = Duration::from_secs(900);

fn run_step(command: &mut Command, what: &str) {
    let out = command.output_within(INSTALL_LIMIT);
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs a Python script with the venv's python; `PGW_URL` and the like come from `env`.
/// Returns stdout; panics if the script fails or runs longer than `timeout`.
pub fn run_python(script: &str, env: &[(&str, String)], timeout: Duration) -> String {
    let dir = tempfile::tempdir().expect("script directory");
    std::fs::write(dir.path().join("pgw.py"), PYTHON_HELPERS).unwrap();
    std::fs::write(dir.path().join("script.py"), script).unwrap();
    let mut command = Command::new(python());
    command
        .arg("-u")
        .arg(dir.path().join("script.py"))
        .env("PYTHONPATH", dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_script(command, env, timeout, "python")
}

/// Runs a node script with node-postgres on `NODE_PATH`; otherwise like [`run_python`].
pub fn run_node(script: &str, env: &[(&str, String)], timeout: Duration) -> String {
    let dir = tempfile::tempdir().expect("script directory");
    std::fs::write(dir.path().join("pgw.js"), NODE_HELPERS).unwrap();
    std::fs::write(dir.path().join("script.js"), script).unwrap();
    let mut command = Command::new("node");
    command
        .arg(dir.path().join("script.js"))
        .env("NODE_PATH", node_modules());
    run_script(command, env, timeout, "node")
}

/// pgjdbc as the distribution packages it (`libpostgresql-jdbc-java`, which `.ci/run`
/// installs), or the jar named by `PGJDBC_JAR`.
pub fn pgjdbc_jar() -> PathBuf {
    let jar = std::env::var_os("PGJDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/postgresql.jar"));
    assert!(
        jar.exists(),
        "pgjdbc not found at {}: apt-get install libpostgresql-jdbc-java default-jdk-headless (or set PGJDBC_JAR)",
        jar.display()
    );
    jar
}

/// Compiles a Java program (public class `class`) against pgjdbc and runs it with
/// `args`; otherwise like [`run_python`].
pub fn run_java(source: &str, class: &str, args: &[String], timeout: Duration) -> String {
    let dir = tempfile::tempdir().expect("java directory");
    let file = dir.path().join(format!("{class}.java"));
    std::fs::write(&file, source).unwrap();
    let classpath = format!("{}:{}", pgjdbc_jar().display(), dir.path().display());
    let mut javac = Command::new("javac");
    javac
        .arg("-cp")
        .arg(&classpath)
        .arg("-d")
        .arg(dir.path())
        .arg(&file);
    run_script(javac, &[], Duration::from_secs(120), "javac");
    let mut java = Command::new("java");
    java.arg("-cp").arg(&classpath).arg(class).args(args);
    run_script(java, &[], timeout, "java")
}

fn run_script(
    mut command: Command,
    env: &[(&str, String)],
    timeout: Duration,
    what: &str,
) -> String {
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output_within(timeout);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    if !output.status.success() {
        panic!(
            "{what} script failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            output.status
        );
    }
    stdout.into_owned()
}

/// The last line of `stdout` that is a JSON object (what a script's `emit` printed).
pub fn json_line(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v.is_object())
        .unwrap_or_else(|| panic!("no JSON line in the script's output:\n{stdout}"))
}

const PYTHON_HELPERS: &str = r#"
"""Helpers for driver scripts: every driver call gets its own timeout."""
import asyncio, json, os, sys, threading, traceback


def plain(value):
    """Driver results as JSON: records and tuples become lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Record":
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def failure(e):
    code = getattr(e, "sqlstate", None)
    return {"error": code} if code else {"error": f"{type(e).__name__}: {e}"}


async def attempt(awaitable, step, timeout=5):
    """Awaits one driver call: {"ok": result}, {"error": SQLSTATE} or {"hung": step}."""
    try:
        return {"ok": plain(await asyncio.wait_for(awaitable, timeout))}
    except asyncio.TimeoutError:
        return {"hung": f"{step} did not answer within {timeout} s"}
    except Exception as e:
        return failure(e)


def attempt_sync(fn, step, timeout=5):
    """Runs one blocking driver call in a thread: same answers as attempt()."""
    box = {}

    def run():
        try:
            box["ok"] = plain(fn())
        except Exception as e:
            box.update(failure(e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return {"hung": f"{step} did not answer within {timeout} s"}
    return box


def emit(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


def main(fn):
    """Runs fn (sync or async), then exits at once: a wedged connection cannot hang exit."""
    try:
        result = fn()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
"#;

const NODE_HELPERS: &str = r#"
// Helpers for driver scripts: every driver call gets its own timeout.
function plain(value) {
  return JSON.parse(JSON.stringify(value === undefined ? null : value));
}

async function attempt(promise, step, ms = 5000) {
  let timer;
  const hung = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ hung: `${step} did not answer within ${ms / 1000} s` }), ms);
  });
  try {
    return await Promise.race([promise.then((v) => ({ ok: plain(v) })), hung]);
  } catch (e) {
    return e.code ? { error: e.code } : { error: String(e) };
  } finally {
    clearTimeout(timer);
  }
}

function emit(fields) {
  const sorted = Object.fromEntries(Object.entries(fields).sort());
  process.stdout.write(JSON.stringify(sorted) + "\n");
}

function main(fn) {
  fn().then(
    () => process.exit(0),
    (e) => { console.error(e); process.exit(1); },
  );
}

module.exports = { attempt, emit, main };
"#;
