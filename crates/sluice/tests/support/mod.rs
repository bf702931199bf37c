//! Running real `sluice` processes from tests.
//!
//! * [`Proc`]: a server process (`standalone`, `coord`, `node`) started from the test binary's
//!   `sluice` (`CARGO_BIN_EXE_sluice`). [`Proc::spawn`] returns once the process printed its
//!   "listening on ADDR" line and yields that address. Its stderr goes to a file; when the test
//!   panics, dropping the `Proc` prints the file's tail. Dropping it always SIGKILLs and reaps
//!   the process, so no test leaves a server behind.
//! * [`run_cli`]: runs a client command (`produce`, `consume`, ...) to completion within a bound,
//!   killing it if the bound passes.
//! * [`etcd_endpoint`]: the etcd of `SLUICE_TEST_ETCD`; unset means skip with a note, or fail
//!   when `CI=true`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// A TCP port free on 127.0.0.1 now (for a process that must be told its address up front).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// The `sluice` binary built for this test run.
pub(crate) fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// The etcd endpoint from `SLUICE_TEST_ETCD`; `None` (with a note) when unset, unless `CI=true`,
/// where it is a failure.
pub(crate) fn etcd_endpoint(test: &str) -> Option<String> {
    service_endpoint("SLUICE_TEST_ETCD", test)
}

/// The endpoint of a test service from the environment variable `var`; `None` (with a note)
/// when unset, unless `CI=true`, where it is a failure.
pub(crate) fn service_endpoint(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{var} is not set but CI=true: {test} must run");
            }
            eprintln!("note: {var} is not set; skipping {test}");
            None
        }
    }
}

/// A meta-store key root no other test run uses.
pub(crate) fn unique_root(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("e2e/{test}/{nanos}-{}", std::process::id())
}

/// A running server process.
pub(crate) struct Proc {
    /// A name for messages (`node-2`, `coord`, ...).
    pub name: String,
    /// The address it listens on (`host:port`), from its "listening on" line.
    pub addr: String,
    child: Child,
    stderr_path: PathBuf,
    /// Every stdout line after the "listening" one.
    stdout_rx: mpsc::Receiver<String>,
}

/// Why a process did not come up.
#[derive(Debug)]
pub(crate) struct SpawnError {
    /// What happened, with the tail of the process's stderr.
    pub message: String,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Proc {
    /// Starts `sluice ARGS` with `envs`, stderr into `{log_dir}/{name}.stderr` (appended, so a
    /// restarted process keeps its predecessor's log), and waits up to `timeout` for its
    /// "listening on ADDR" stdout line.
    pub(crate) fn spawn(
        name: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        log_dir: &Path,
        timeout: Duration,
    ) -> Result<Proc, SpawnError> {
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .map_err(|e| SpawnError {
                message: format!("opening {}: {e}", stderr_path.display()),
            })?;
        let mut cmd = Command::new(sluice_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| SpawnError {
            message: format!("spawning {name}: {e}"),
        })?;
        let stdout = child.stdout.take().ok_or_else(|| SpawnError {
            message: format!("{name}: no stdout pipe"),
        })?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            SpawnError {
                message: format!("{name}: {why}\n{}", tail(&stderr_path, 30)),
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        return Ok(Proc {
                            name: name.to_owned(),
                            addr,
                            child,
                            stderr_path,
                            stdout_rx: rx,
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    return Err(fail(
                        &mut child,
                        format!("exited ({status:?}) before listening"),
                    ));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(
                    &mut child,
                    format!("exited ({status}) before listening"),
                ));
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    &mut child,
                    format!("printed no \"listening on\" line within {timeout:?}"),
                ));
            }
        }
    }

    /// `http://ADDR`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`.
    pub(crate) fn signal(&self, signal: Signal) {
        let pid = Pid::from_child(&self.child);
        kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("sending {signal:?} to {}: {e}", self.name));
    }

    /// SIGKILLs the process and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return None,
            }
        }
    }

    /// The stdout lines printed since the last call (after the "listening" line).
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout_rx.try_iter().collect()
    }

    /// The last `n` lines of its stderr.
    pub(crate) fn stderr_tail(&self, n: usize) -> String {
        tail(&self.stderr_path, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly on some kernels; SIGKILL works
        // on stopped processes on Linux, but continuing first costs nothing.
        let _ = kill_process(Pid::from_child(&self.child), Signal::CONT);
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} stderr (tail) ----\n{}",
                self.name,
                self.stderr_tail(40)
            );
        }
    }
}

/// The address in a "... listening on ADDR ..." line.
fn listening_addr(line: &str) -> Option<String> {
    let rest = line.split_once("listening on ")?.1;
    let addr = rest.split_whitespace().next()?;
    Some(addr.to_owned())
}

/// The last `n` lines of the file at `path`.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a finished client command printed.
#[derive(Debug)]
pub(crate) struct CliOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `sluice ARGS` with `envs` to completion; panics (with what it printed) if it takes
/// longer than `timeout`.
pub(crate) fn run_cli(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> CliOutput {
    run_cli_input(args, envs, None, timeout)
}

/// [`run_cli`] with `input` written to the command's stdin (then closed).
pub(crate) fn run_cli_input(
    args: &[&str],
    envs: &[(&str, &str)],
    input: Option<&str>,
    timeout: Duration,
) -> CliOutput {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning sluice {args:?}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to sluice {args:?}: {e}"));
    }
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    match status {
        Some(status) => CliOutput {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "sluice {args:?} did not finish within {timeout:?}\nstdout tail:\n{}\nstderr:\n{stderr}",
            stdout.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        ),
    }
}

/// A one-row Insert on `vchannel` (of the collection the vchannel names, partition 1) with
/// `payload`, tagged with the property `key` = `value`.
pub(crate) fn tagged_insert(
    vchannel: &sluice_types::VChannel,
    key: &str,
    value: &str,
    payload: Vec<u8>,
) -> sluice_types::MutableMessage {
    use sluice_types::message::{InsertHeader, PartitionSegmentAssignment};
    sluice_types::MutableMessage::builder(InsertHeader {
        collection_id: vchannel.collection().0,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: 1,
            rows: 1,
            binary_size: payload.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(vchannel)
    .property(key, value)
    .payload(payload)
    .build()
    .expect("a valid insert")
}

/// A `sluice-client` of the server at `endpoint` (topology from its coordinator, appends over
/// gRPC) that gives up an append after `timeout`.
pub(crate) fn client(endpoint: &str, timeout: Duration) -> sluice_client::Client {
    use std::sync::Arc;
    let topology =
        sluice_client::topology::CoordinatorTopology::connect(endpoint).expect("endpoint");
    sluice_client::Client::new(
        Arc::new(topology),
        Arc::new(sluice_client::access::RemoteAccess::new()),
        sluice_client::ClientConfig {
            timeout: Some(timeout),
            ..sluice_client::ClientConfig::default()
        },
    )
}
