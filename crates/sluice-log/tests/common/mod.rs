//! Helpers shared by the tests that run part of themselves in a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Re-runs this test binary as a child that executes only the (ignored) test `name`, with
/// `envs` set. Returns the child, its stdout lines as they arrive, and the thread reading them
/// (it ends when the child's stdout closes).
pub(crate) fn spawn_child_test(
    name: &str,
    envs: &[(&str, String)],
) -> (Child, mpsc::Receiver<String>, JoinHandle<()>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--nocapture",
        "--include-ignored",
        "--test-threads=1",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx, reader)
}
