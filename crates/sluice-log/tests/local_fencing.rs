//! Fencing of the local backend between processes and between handles of one process, on the
//! scenarios every backend shares (`fencing_support`). Small segments make the writers roll
//! segments while they race.
//!
//! `child_fenced_appender` does nothing unless `SLUICE_FENCE_CHILD_DIR` is set; the parent test
//! runs this binary again as a child that writes at term 1 while the parent opens at term 2.

mod common;
mod fencing_support;

use std::path::Path;
use std::sync::Arc;

use sluice_log::local::{LocalConfig, LocalProvider};

use fencing_support::{pchannel, print_line, runtime};

const DIR_ENV: &str = "SLUICE_FENCE_CHILD_DIR";

fn provider(root: &Path) -> Arc<LocalProvider> {
    Arc::new(
        LocalProvider::new(LocalConfig {
            segment_size: 32 << 10,
            ..LocalConfig::new(root)
        })
        .unwrap(),
    )
}

#[test]
fn child_fenced_appender() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let outcome = runtime().block_on(fencing_support::child_fenced_appender(
        provider(Path::new(&dir)),
        pchannel(),
    ));
    print_line(&outcome);
    assert_eq!(outcome, "FENCED");
}

#[test]
fn higher_term_in_another_process_fences_the_writer() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    runtime().block_on(
        fencing_support::higher_term_in_another_process_fences_the_writer(
            provider(root.path()),
            pchannel(),
            "child_fenced_appender",
            &[(DIR_ENV, root.path().display().to_string())],
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_a_higher_term_open_lose_nothing_and_stay_fenced() {
    let root = tempfile::tempdir().unwrap();
    fencing_support::writers_racing_a_higher_term_open_lose_nothing_and_stay_fenced(
        provider(root.path()),
        pchannel(),
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_opens_leave_only_the_higher_term_writable() {
    let root = tempfile::tempdir().unwrap();
    // Two providers on one directory, as two node processes sharing it would have.
    fencing_support::racing_opens_leave_only_the_higher_term_writable(
        provider(root.path()),
        provider(root.path()),
        pchannel(),
        6,
    )
    .await;
}
