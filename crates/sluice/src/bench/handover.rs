//! `sluice bench move`: how long producers go without an acknowledgement while their pchannel
//! is handed over (`MovePChannel`), against the same measure over equal windows without a move
//! (the noise floor) and over a SIGKILL of the owner (a failover), in one run on one cluster:
//! a `sluice coord` and two `sluice node` processes of this binary on the etcd at `--etcd`,
//! sharing a local log directory, with one pchannel that every producer writes to.
//!
//! The measure is the longest stretch without any acknowledgement in the second after the move
//! was asked for (after the SIGKILL: the five seconds after), over all producers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parking_lot::Mutex;
use sluice_client::access::RemoteAccess;
use sluice_client::topology::CoordinatorTopology;
use sluice_client::{Client, ClientConfig, TopologySource};
use sluice_proto::v1;
use sluice_types::{CollectionId, PChannel};

use super::{COLLECTION, command_line, create_collection, insert};

/// Settings of `sluice bench move`.
pub(crate) struct MoveParams<'a> {
    /// Directory for the processes' data, log and output.
    pub dir: &'a Path,
    /// The etcd endpoint the cluster uses.
    pub etcd: &'a str,
    /// Closed-loop producers.
    pub producers: usize,
    /// Moves (and as many windows without one).
    pub moves: usize,
    /// Payload bytes per insert.
    pub record_size: usize,
}

/// The cluster's processes, SIGKILLed when dropped.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    /// Starts `sluice ARGS` (this binary), output into `{dir}/{name}.out`.
    fn spawn(&mut self, dir: &Path, name: &str, args: &[&str], root: &str) -> anyhow::Result<()> {
        let out = std::fs::File::create(dir.join(format!("{name}.out")))?;
        let child = Command::new(std::env::current_exe().context("this binary")?)
            .args(args)
            .env("SLUICE_META__ROOT", root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.0.push((name.to_owned(), child));
        Ok(())
    }

    fn kill(&mut self, name: &str) {
        if let Some((_, child)) = self.0.iter_mut().find(|(n, _)| n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The longest stretch in `[from, to]` without an acknowledgement.
fn longest_gap(acks: &Mutex<Vec<Instant>>, from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = acks
        .lock()
        .iter()
        .copied()
        .filter(|t| *t > from && *t < to)
        .collect();
    times.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

fn summary(gaps: &mut [Duration]) -> (f64, f64) {
    gaps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match gaps.len() {
        0 => (0.0, 0.0),
        n => (ms(gaps[n / 2]), ms(gaps[n - 1])),
    }
}

/// `sluice bench move` (see the module docs).
pub(crate) async fn handover(params: MoveParams<'_>) -> anyhow::Result<()> {
    if params.producers == 0 || params.moves == 0 {
        bail!("--producers and --moves must be at least 1");
    }
    let root = format!(
        "bench/move/{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let dir = params.dir;
    let log_dir: PathBuf = dir.join("log");
    let coord_addr = format!("127.0.0.1:{}", free_port()?);
    let coord_url = format!("http://{coord_addr}");
    let mut procs = Processes(Vec::new());
    procs.spawn(
        dir,
        "coord",
        &[
            "coord",
            "--meta-backend",
            "etcd",
            "--etcd",
            params.etcd,
            "--listen",
            &coord_addr,
            "--pchannels",
            "1",
        ],
        &root,
    )?;
    let start_node = |procs: &mut Processes, id: u64| -> anyhow::Result<()> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let data = dir.join(format!("node-{id}"));
        procs.spawn(
            dir,
            &format!("node-{id}"),
            &[
                "node",
                "--meta-backend",
                "etcd",
                "--etcd",
                params.etcd,
                "--listen",
                &listen,
                "--data-dir",
                data.to_str().context("utf-8 path")?,
                "--log-dir",
                log_dir.to_str().context("utf-8 path")?,
                "--node-id",
                &id.to_string(),
                "--lease-ttl-ms",
                "2000",
                "--coord",
                &coord_url,
            ],
            &root,
        )
    };
    start_node(&mut procs, 1)?;
    start_node(&mut procs, 2)?;

    let topology = Arc::new(CoordinatorTopology::connect(&coord_url)?);
    let pchannel = PChannel::new("sluice-dml_0")?;
    let owner =
        |t: &sluice_client::Topology| t.channels.get(pchannel.as_str()).map(|a| a.node_id.0);
    let mut rx = topology.subscribe();
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|t| owner(t).is_some()))
        .await
        .context("the cluster did not assign its pchannel within 60 s (see the .out files)")??;
    let client = Client::new(
        topology.clone(),
        Arc::new(RemoteAccess::new()),
        ClientConfig {
            timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        },
    );
    let vc = pchannel.vchannel(CollectionId(COLLECTION), 0)?;
    client.append(create_collection(&vc)?).await?;

    let acks = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let payload: Arc<[u8]> = vec![0x5a; params.record_size].into();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..params.producers {
        let (client, vc, payload) = (client.clone(), vc.clone(), payload.clone());
        let (acks, stop) = (acks.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.append(insert(&vc, &payload, 0)?).await?;
                acks.lock().push(Instant::now());
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut coordinator = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&coord_url).map_err(anyhow::Error::msg)?,
    );
    let window = Duration::from_secs(1);
    let (mut quiet, mut moved, mut answer) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..params.moves {
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        quiet.push(longest_gap(&acks, t0, Instant::now()));

        let from = owner(&topology.subscribe().borrow()).context("pchannel not assigned")?;
        let to = if from == 1 { 2 } else { 1 };
        let t1 = Instant::now();
        coordinator
            .move_p_channel(v1::MovePChannelRequest {
                pchannel: pchannel.as_str().to_owned(),
                node_id: to,
            })
            .await
            .context("MovePChannel")?;
        answer.push(t1.elapsed());
        tokio::time::sleep_until((t1 + window).into()).await;
        moved.push(longest_gap(&acks, t1, Instant::now()));
    }
    // Last, a failover: the owner is SIGKILLed (its lease lapses after 2 s).
    let victim = owner(&topology.subscribe().borrow()).context("pchannel not assigned")?;
    let t2 = Instant::now();
    procs.kill(&format!("node-{victim}"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let failover = longest_gap(&acks, t2, Instant::now());
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r.context("producer task")??;
    }

    println!("$ {}", command_line());
    println!(
        "pchannel handover under load: {} closed-loop producer(s) of {} B inserts on one pchannel; \
         coord + 2 nodes on {}, local log; longest time without any acknowledgement",
        params.producers, params.record_size, params.etcd
    );
    let (q50, qmax) = summary(&mut quiet);
    let (m50, mmax) = summary(&mut moved);
    let (a50, amax) = summary(&mut answer);
    println!(
        "{:<34} {:>6} {:>11} {:>11}",
        "", "rounds", "median ms", "max ms"
    );
    println!(
        "{:<34} {:>6} {:>11.1} {:>11.1}",
        "no move (1 s windows)", params.moves, q50, qmax
    );
    println!(
        "{:<34} {:>6} {:>11.1} {:>11.1}",
        "graceful move (1 s after asking)", params.moves, m50, mmax
    );
    println!(
        "{:<34} {:>6} {:>11.1} {:>11.1}",
        "  MovePChannel answered after", params.moves, a50, amax
    );
    let f = failover.as_secs_f64() * 1e3;
    println!(
        "{:<34} {:>6} {:>11.1} {:>11.1}",
        "SIGKILL failover (lease TTL 2 s)", 1, f, f
    );
    println!(
        "graceful move: longest gap {mmax:.1} ms ({} the 500 ms target); {} appends acknowledged",
        if mmax <= 500.0 { "within" } else { "OVER" },
        acks.lock().len()
    );
    Ok(())
}
