//! Runs the real `sluice bench grpc` with tiny settings: it starts a standalone server in the
//! process, appends through an in-process client and through loopback gRPC, and prints one
//! table row per path and producer count, each with a non-zero rate.

use std::process::Command;

/// The numbers of the row for `producers` and `path`: rec/s, MB/s, p50 ms, p99 ms,
/// CPU µs/rec, cores.
fn row(stdout: &str, producers: usize, path: &str) -> Vec<f64> {
    let line = stdout
        .lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(&producers.to_string()) && words.next() == Some(path)
        })
        .unwrap_or_else(|| panic!("no {path} row for {producers} producers in:\n{stdout}"));
    line.split_whitespace()
        .skip(2)
        .take(6)
        .map(|w| {
            w.parse()
                .unwrap_or_else(|_| panic!("bad number {w:?} in {line:?}"))
        })
        .collect()
}

/// Runs `sluice bench <args>` in a fresh directory and returns its standard output, failing
/// the test if it fails.
fn bench(what: &str, args: &[&str]) -> String {
    bench_in(tempfile::tempdir().unwrap().path(), what, args)
}

/// [`bench`] in `dir`.
fn bench_in(dir: &std::path::Path, what: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", what, "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice bench {what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The best rate (second column) of the row of `path` in a bench's table; positive.
fn best_rate(stdout: &str, path: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(path))
        .unwrap_or_else(|| panic!("no {path} row:\n{stdout}"));
    let best: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(best > 0.0, "{line}");
    best
}

#[test]
fn bench_grpc_prints_rows_with_nonzero_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = bench_in(
        dir.path(),
        "grpc",
        &[
            "--producers",
            "1,4",
            "--seconds",
            "0.2",
            "--record-size",
            "256",
        ],
    );
    assert!(
        stdout.contains("bench grpc --dir") && stdout.contains("--seconds 0.2"),
        "the table names its command line:\n{stdout}"
    );
    for producers in [1, 4] {
        for path in ["in-process", "grpc"] {
            let v = row(&stdout, producers, path);
            assert_eq!(v.len(), 6, "{path} row for {producers}: {v:?}");
            let (rate, mbps, p50, p99, cpu) = (v[0], v[1], v[2], v[3], v[4]);
            assert!(
                rate > 0.0,
                "{path} with {producers} producers: {rate} rec/s"
            );
            // 256 B per record: MB/s follows from rec/s (both are rounded when printed).
            assert!(
                (mbps - rate * 256.0 / 1e6).abs() < 0.01,
                "{path}: {mbps} MB/s at {rate} rec/s"
            );
            assert!(
                p99 > 0.0 && p50 <= p99,
                "{path}: p50 {p50} ms, p99 {p99} ms"
            );
            assert!(cpu > 0.0, "{path}: {cpu} CPU µs per record");
        }
    }
    // The benchmark's temporary directory is removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_grpc_bad_settings_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, message) in [
        ("--seconds", "-1", "--seconds must be above 0"),
        ("--seconds", "NaN", "--seconds must be above 0"),
        ("--producers", "0", "--producers needs one or more counts"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["bench", "grpc", "--dir"])
            .arg(dir.path())
            .arg(format!("{flag}={value}"))
            .output()
            .expect("run sluice");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(err.contains(message), "{flag} {value}: {err}");
        assert!(!err.contains("panicked"), "{flag} {value}: {err}");
    }
}

#[test]
fn bench_recovery_replays_only_the_tail_with_a_snapshot_and_everything_without() {
    let stdout = bench("recovery", &["--counts", "2000,6000", "--tail", "300"]);
    for count in [2000u64, 6000] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&count.to_string()))
            .unwrap_or_else(|| panic!("no row for {count}:\n{stdout}"));
        let nums: Vec<f64> = line
            .split_whitespace()
            .filter(|w| *w != "|")
            .map(|w| w.parse().unwrap())
            .collect();
        let (with_replayed, without_replayed) = (nums[3], nums[5]);
        assert!(
            (300.0..320.0).contains(&with_replayed),
            "with a snapshot only the tail is replayed: {line}"
        );
        assert!(
            without_replayed >= count as f64,
            "without one everything is: {line}"
        );
    }
    assert!(stdout.contains("ratio 6000 vs 2000 messages"), "{stdout}");
}

#[test]
fn bench_flush_compares_the_flusher_with_arrow_writer() {
    let stdout = bench(
        "flush",
        &[
            "--rows",
            "3000",
            "--batch-rows",
            "500",
            "--dim",
            "8",
            "--rounds",
            "2",
        ],
    );
    for path in ["ArrowWriter", "flusher"] {
        best_rate(&stdout, path);
    }
    assert!(stdout.contains("flusher / ArrowWriter = "), "{stdout}");
}

#[test]
fn bench_compact_compares_compaction_with_reading_filtering_and_writing() {
    let stdout = bench(
        "compact",
        &[
            "--rows",
            "2000",
            "--dim",
            "8",
            "--removed",
            "0.25",
            "--rounds",
            "2",
        ],
    );
    assert!(stdout.contains("500 rows deleted"), "{stdout}");
    for path in ["read+filter+write", "compaction"] {
        best_rate(&stdout, path);
    }
    let ratio = stdout
        .lines()
        .find(|l| l.starts_with("compaction / read+filter+write = "))
        .unwrap_or_else(|| panic!("no ratio:\n{stdout}"));
    // Both files' sizes are reported (which is smaller depends on how well the rows left
    // compress: the synthetic vectors repeat).
    let sizes: Vec<u64> = ratio
        .rsplit("file ")
        .next()
        .unwrap()
        .split(" -> ")
        .map(|s| s.trim_end_matches(" bytes").parse().unwrap())
        .collect();
    assert!(sizes.len() == 2 && sizes.iter().all(|&b| b > 0), "{ratio}");
    // Bad input is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "compact", "--dir"])
        .arg(dir.path())
        .args(["--removed", "0"])
        .output()
        .expect("run sluice");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--removed"));
}

#[test]
fn bench_search_reports_recall_and_both_paths_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "search", "--dir"])
        .arg(dir.path())
        .args([
            "--rows",
            "4000",
            "--dim",
            "16",
            "--nq",
            "50",
            "--seconds",
            "0.3",
            "--rounds",
            "1",
            "--json",
        ])
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "sluice bench search failed:\n{stdout}\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    let num = |k: &str| {
        json[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {json}"))
    };
    assert_eq!(num("rows"), 4000.0);
    for k in [
        "insert_rows_per_s",
        "search_qps_1",
        "search_qps_8",
        "in_process_qps_best",
        "usearch_raw_qps_best",
        "sparse_qps_best",
        "sparse_scan_qps_best",
        "text_qps_best",
        "text_scan_qps_best",
    ] {
        assert!(num(k) > 0.0, "{k}: {json}");
    }
    for k in [
        "recall_at_10",
        "in_process_recall_at_10",
        "usearch_raw_recall_at_10",
    ] {
        assert!(num(k) > 0.9 && num(k) <= 1.0, "{k}: {json}");
    }
    assert!(
        num("p50_ms_1") > 0.0 && num("p50_ms_1") <= num("p99_ms_1"),
        "{json}"
    );
    assert!(
        stderr.contains("sluice / usearch"),
        "the table goes to stderr:\n{stderr}"
    );
}

/// `sluice bench move` with two moves: it starts a cluster of its own on the test etcd and
/// prints the three rows (no move, graceful move, failover) and how many appends it saw.
#[test]
fn bench_move_measures_handovers_against_quiet_windows_and_a_failover() {
    let Ok(etcd) = std::env::var("SLUICE_TEST_ETCD") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "SLUICE_TEST_ETCD is not set but CI=true"
        );
        eprintln!("note: SLUICE_TEST_ETCD is not set; skipping bench move");
        return;
    };
    let stdout = bench(
        "move",
        &["--etcd", &etcd, "--moves", "2", "--producers", "2"],
    );
    let numbers = |label: &str| -> Vec<f64> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} row in:\n{stdout}"));
        line[label.len()..]
            .split_whitespace()
            .map(|w| {
                w.parse()
                    .unwrap_or_else(|_| panic!("bad number {w:?} in {line:?}"))
            })
            .collect()
    };
    for label in [
        "no move (1 s windows)",
        "graceful move (1 s after asking)",
        "SIGKILL failover (lease TTL 2 s)",
    ] {
        let v = numbers(label);
        assert_eq!(v.len(), 3, "{label}: {v:?}");
        assert!(
            v[1] > 0.0 && v[1] <= v[2],
            "{label}: median {} max {}",
            v[1],
            v[2]
        );
    }
    // A failover waits out the 2 s lease; a gap that short means nothing was measured.
    assert!(
        numbers("SIGKILL failover (lease TTL 2 s)")[1] >= 1000.0,
        "{stdout}"
    );
    let acked: u64 = stdout
        .lines()
        .find(|l| l.starts_with("graceful move: longest gap"))
        .and_then(|l| l.split("; ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no acknowledged count in:\n{stdout}"));
    assert!(acked > 0, "{stdout}");
}
