//! Child processes of the tests (psql, pgbench, the pgwarden binary, chromium, `ss`,
//! `ip`, the driver scripts): every run has a time limit, so a client that hangs fails
//! its test, with what it printed, instead of stalling CI.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// For a short client run: one psql script, a `pgbench -i`, a look at `ss`.
pub const SHORT_RUN: Duration = Duration::from_secs(60);

/// For a run that loads the proxy for seconds (`pgbench -T`, `pgbench -t` with many
/// clients) or starts clusters of its own (`pgwarden demo`).
pub const LONG_RUN: Duration = Duration::from_secs(300);

pub trait OutputWithin {
    /// Runs the command as `Command::output` does (stdin closed, stdout and stderr
    /// collected). One that runs longer than `limit` is killed and fails the test,
    /// naming the program and showing its output so far.
    fn output_within(&mut self, limit: Duration) -> Output;

    /// As [`OutputWithin::output_within`], but a program that cannot be started (not
    /// installed) is an error for the caller to judge.
    fn try_output_within(&mut self, limit: Duration) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: Duration) -> Output {
        self.try_output_within(limit)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program_name(self)))
    }

    fn try_output_within(&mut self, limit: Duration) -> std::io::Result<Output> {
        let what = program_name(self);
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = drain(&mut child, true);
        let stderr = drain(&mut child, false);
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for a child") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
        match status {
            Some(status) => Ok(Output {
                status,
                stdout,
                stderr,
            }),
            None => panic!(
                "{what} hung: killed after {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        }
    }
}

fn program_name(command: &Command) -> String {
    command.get_program().to_string_lossy().into_owned()
}

/// Reads one of the child's pipes to its end on a thread of its own, so a child that
/// fills one pipe cannot block on it while the other is read.
fn drain(child: &mut Child, stdout: bool) -> std::thread::JoinHandle<Vec<u8>> {
    let mut pipe: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().unwrap())
    } else {
        Box::new(child.stderr.take().unwrap())
    };
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}
