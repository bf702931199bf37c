//! Runs the real `sluice` binary: `log-smoke` twice on one data directory, so the second run
//! must read back and verify what the first one acknowledged, at a higher term.

use std::process::Command;

fn smoke(dir: &std::path::Path, records: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["log-smoke", "--data-dir"])
        .arg(dir)
        .args(["--records", &records.to_string(), "--concurrency", "16"])
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice log-smoke failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn log_smoke_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = smoke(dir.path(), 500);
    assert!(first.contains("at term 1"), "{first}");
    assert!(
        first.contains("verified 500 records (500 from this run, 0 from earlier runs)"),
        "{first}"
    );
    let second = smoke(dir.path(), 300);
    assert!(second.contains("at term 2"), "{second}");
    assert!(
        second.contains("verified 800 records (300 from this run, 500 from earlier runs)"),
        "{second}"
    );
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["log-smoke", "--records", "many"])
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'many'"), "{err}");
}

#[test]
fn bad_pchannel_name_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["log-smoke", "--pchannel", "../escape", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid pchannel name"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
