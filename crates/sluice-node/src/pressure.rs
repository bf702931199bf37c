//! The node's back-pressure monitor: sets and lifts the refusal of the node's
//! [`sluice_wal::Pressure`] from what it measures every [`PressureConfig::interval`].
//!
//! * **Disk**: the free bytes (available to this process) of every watched directory — the
//!   local log, the node's data, local segment storage. Below `min_free_bytes` on any of them,
//!   appends are refused (`RESOURCE_EXHAUSTED`, retryable) before the disk fills: a full disk
//!   would fail appends in the middle of a write and stop checkpoints and flushes too. They are
//!   accepted again once every directory has `min_free_bytes` plus a tenth (at least 1 MiB)
//!   free, so a disk hovering at the mark does not flap.
//! * **Memory**: write-ahead buffers + growing segments + appends in flight, over
//!   `memory_cap_bytes`, refuses appends until they are under nine tenths of it. (Appends also
//!   wait, then fail, when in-flight bytes alone would pass their own cap; see
//!   [`sluice_wal::pressure`].)
//!
//! Reads, flushes and checkpoints go on while appends are refused: flushing growing segments
//! and truncating the log is what frees memory and disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_wal::Pressure;
use tokio_util::sync::CancellationToken;

/// What the monitor watches.
#[derive(Clone, Debug)]
pub struct PressureConfig {
    /// Directories whose file systems must keep `min_free_bytes` free.
    pub dirs: Vec<PathBuf>,
    /// Free bytes below which appends are refused (0: no disk check).
    pub min_free_bytes: u64,
    /// Write-ahead buffers + growing segments + in-flight appends above which appends are
    /// refused (0: no cap).
    pub memory_cap_bytes: u64,
    /// How often to measure.
    pub interval: Duration,
}

/// Free bytes available to unprivileged writers on the file system of `dir`.
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

fn hysteresis(limit: u64) -> u64 {
    (limit / 10).max(1 << 20)
}

/// Runs the monitor until `cancel` fires or `resident` returns `None` (what it measures is
/// gone). `resident` measures write-ahead buffers + growing segments (in-flight bytes are added
/// from `pressure`).
pub async fn monitor(
    pressure: Arc<Pressure>,
    config: PressureConfig,
    resident: impl Fn() -> Option<u64>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut disk_low, mut memory_high) = (false, false);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(resident) = resident() else {
            return;
        };
        let mut reason = None;
        if config.min_free_bytes > 0 {
            let need = if disk_low {
                config.min_free_bytes + hysteresis(config.min_free_bytes)
            } else {
                config.min_free_bytes
            };
            let mut low = None;
            let mut budget: Option<(u64, String)> = None;
            for dir in &config.dirs {
                match free_bytes(dir) {
                    Ok(free) => {
                        metrics::gauge!("sluice_node_disk_free_bytes", "dir" => dir.display().to_string())
                            .set(free as f64);
                        let left = free.saturating_sub(config.min_free_bytes);
                        if budget.as_ref().is_none_or(|(b, _)| left < *b) {
                            budget = Some((
                                left,
                                format!(
                                    "the disk of {} reached node.min_free_disk_bytes {} ({free} bytes were free at the last check)",
                                    dir.display(),
                                    config.min_free_bytes
                                ),
                            ));
                        }
                        if free < need && low.is_none() {
                            low = Some(format!(
                                "{free} bytes free on the disk of {}, below node.min_free_disk_bytes {}",
                                dir.display(),
                                config.min_free_bytes
                            ));
                        }
                    }
                    Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "statvfs failed"),
                }
            }
            if low.is_some() != disk_low {
                disk_low = low.is_some();
                match &low {
                    Some(r) => tracing::warn!(reason = %r, "refusing appends: disk low"),
                    None => tracing::info!("disk space is back; accepting appends"),
                }
            }
            reason = low;
            if let Some((bytes, why)) = budget {
                pressure.set_disk_budget(bytes, why);
            }
        }
        if config.memory_cap_bytes > 0 {
            let used = resident.saturating_add(pressure.in_flight_bytes());
            metrics::gauge!("sluice_node_memory_accounted_bytes").set(used as f64);
            let high = if memory_high {
                used > config.memory_cap_bytes / 10 * 9
            } else {
                used > config.memory_cap_bytes
            };
            if high != memory_high {
                memory_high = high;
                if high {
                    tracing::warn!(
                        used,
                        cap = config.memory_cap_bytes,
                        "refusing appends: memory over its cap"
                    );
                } else {
                    tracing::info!(used, "memory back under its cap; accepting appends");
                }
            }
            if high && reason.is_none() {
                reason = Some(format!(
                    "{used} bytes in write-ahead buffers, growing segments and appends in flight, over node.memory_cap_bytes {}",
                    config.memory_cap_bytes
                ));
            }
        }
        metrics::gauge!("sluice_node_refusing_appends").set(f64::from(u8::from(reason.is_some())));
        pressure.refuse(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_over_the_cap_refuses_until_under_nine_tenths() {
        let pressure = Pressure::unlimited();
        let used = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(monitor(
            pressure.clone(),
            PressureConfig {
                dirs: vec![],
                min_free_bytes: 0,
                memory_cap_bytes: 1000,
                interval: Duration::from_millis(10),
            },
            {
                let used = used.clone();
                move || Some(used.load(std::sync::atomic::Ordering::Relaxed))
            },
            cancel.clone(),
        ));
        let settle = || tokio::time::sleep(Duration::from_millis(30));
        settle().await;
        assert!(pressure.refusal().is_none());
        used.store(1001, std::sync::atomic::Ordering::Relaxed);
        settle().await;
        let reason = pressure.refusal().expect("refusing over the cap");
        assert!(reason.contains("node.memory_cap_bytes 1000"), "{reason}");
        used.store(950, std::sync::atomic::Ordering::Relaxed);
        settle().await;
        assert!(pressure.refusal().is_some(), "lifted above nine tenths");
        used.store(899, std::sync::atomic::Ordering::Relaxed);
        settle().await;
        assert!(pressure.refusal().is_none());
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_disk_below_the_mark_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let pressure = Pressure::unlimited();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(monitor(
            pressure.clone(),
            PressureConfig {
                dirs: vec![dir.path().to_owned()],
                // More than the disk has: refused at once.
                min_free_bytes: free.saturating_mul(2).max(1 << 40),
                memory_cap_bytes: 0,
                interval: Duration::from_millis(10),
            },
            || Some(0),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let reason = pressure.refusal().expect("refusing");
        assert!(
            reason.contains(&dir.path().display().to_string()),
            "{reason}"
        );
        cancel.cancel();
        task.await.unwrap();
    }
}
