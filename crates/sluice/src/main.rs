//! The `sluice` command: run Sluice (`standalone`, `coord`, `node`), talk to it (`produce`,
//! `consume`, `ctl`), measure it (`bench`), and `log-smoke`, which exercises the local log alone.
//!
//! Configuration comes from defaults, then `--config FILE` (TOML), then `SLUICE_*` environment
//! variables (nested keys joined with `__`, e.g. `SLUICE_META__BACKEND=etcd`), then flags.
//! Logging follows `RUST_LOG` (default `warn`), on stderr.

mod bench;
mod cli;
mod config;
mod local_access;
mod replica;
mod server;
mod telemetry;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{DeliverPolicy, LogError, LogHandle, LogProvider, OpenOptions, ReadOptions};
use sluice_types::message::InsertHeader;
use sluice_types::{MutableMessage, PChannel, Term, VChannel};

use crate::config::Config;

/// mimalloc instead of the system allocator: messages are allocated on one runtime thread and
/// freed on another (the log's writer, the write-ahead buffer), which glibc's per-thread arenas
/// handle poorly; `sluice bench wal` measured the difference.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before it gives it back to the OS, in milliseconds,
/// unless `MIMALLOC_PURGE_DELAY` says otherwise. mimalloc's own default (1 s) is shorter than a
/// growing segment takes to fill again after the last one was flushed, so under steady load the
/// memory of every growing segment, write-ahead buffer entry and encoded batch came from fresh
/// pages the kernel had to fault in and zero (`sluice bench grpc --seconds 24 --producers 64`:
/// 268k page faults, 647 of them 2 MiB huge pages; 39k–66k and 338–361 with 10 s). 10 s is
/// jemalloc's default decay for the same trade-off: freed memory stays resident up to that much
/// longer. The node's memory caps count live bytes and are not affected.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;
/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (the bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc 3's default for that option: the option is changed only if it reads so, which
/// also checks that the number above is the option meant.
const MI_DEFAULT_PURGE_DELAY: std::ffi::c_long = 1_000;

/// Sets the allocator's purge delay to [`PURGE_DELAY_MS`] (see there). Whether it did.
#[allow(unsafe_code)] // Calls into mimalloc's option API: no memory is touched.
fn tune_allocator() -> bool {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return false;
    }
    // SAFETY: mimalloc's option getters and setters take plain integers, may be called at any
    // time from any thread, and an option it does not know is ignored.
    unsafe {
        if libmimalloc_sys::mi_version() / 10_000 != 3
            || libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) != MI_DEFAULT_PURGE_DELAY
        {
            return false;
        }
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == PURGE_DELAY_MS
    }
}

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a WAL-centred streaming service",
    long_about = "Sluice: a WAL-centred streaming service.\n\nRun `sluice standalone` for a \
                  single-process server with everything under one data directory, or \
                  `sluice coord` plus several `sluice node` for a cluster (etcd for metadata, a \
                  shared log directory). Configuration: defaults < --config FILE (TOML) < \
                  SLUICE_* environment (nested keys joined by `__`) < flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Settings every server command takes (each overrides the config file and environment).
#[derive(Args, Clone, Debug, Default)]
struct ServerOpts {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (standalone: meta store and WAL; node: WAL unless --log-dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (`host:port`; port 0 picks a free one).
    #[arg(long)]
    listen: Option<String>,
    /// Address other processes use to reach this one (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Metadata store: `embedded` or `etcd`.
    #[arg(long)]
    meta_backend: Option<String>,
    /// etcd endpoints, comma separated (`http://host:port`).
    #[arg(long, value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Log directory (cluster nodes share one).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Node id (unique in the cluster).
    #[arg(long)]
    node_id: Option<u64>,
    /// Node registration lease TTL in milliseconds.
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// Coordinator endpoint (`http://host:port`) for nodes.
    #[arg(long)]
    coord: Option<String>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (`host:port`).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Export tracing spans over OTLP/gRPC to this collector (`http://host:4317`; needs the
    /// `otlp` feature).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Serve the Milvus-compatible API here (`host:port`; default 127.0.0.1:19530 for
    /// standalone when free; empty: none).
    #[arg(long)]
    milvus_listen: Option<String>,
    /// Authenticate and authorize every call of the Milvus API by its users and roles.
    #[arg(long)]
    milvus_authorization: bool,
    /// Number of pchannels the coordinator manages.
    #[arg(long)]
    pchannels: Option<u32>,
}

impl ServerOpts {
    fn load(&self) -> anyhow::Result<Config> {
        let mut f = Figment::new();
        macro_rules! set {
            ($key:literal, $v:expr) => {
                if let Some(v) = &$v {
                    f = f.merge(Serialized::default($key, v));
                }
            };
        }
        set!("data_dir", self.data_dir);
        set!("listen", self.listen);
        set!("advertise", self.advertise);
        set!("meta.backend", self.meta_backend);
        set!("meta.endpoints", self.etcd);
        set!("log.dir", self.log_dir);
        set!("node.id", self.node_id);
        set!("node.lease_ttl_ms", self.lease_ttl_ms);
        set!("coord.endpoint", self.coord);
        set!("pchannels.count", self.pchannels);
        set!("metrics_listen", self.metrics_listen);
        set!("otlp_endpoint", self.otlp_endpoint);
        set!("milvus_listen", self.milvus_listen);
        if self.milvus_authorization {
            f = f.merge(Serialized::default("milvus_authorization", true));
        }
        Config::load(self.config.as_deref(), f)
    }
}

/// What a read (search, query) names and how fresh it must be.
#[derive(Args, Clone, Debug)]
struct ReadOpts {
    /// The node to ask (any node answers for a whole collection; standalone: its address).
    #[arg(
        long,
        env = "SLUICE_COORD__ENDPOINT",
        default_value = "http://127.0.0.1:7730"
    )]
    node: String,
    /// The collection's name.
    #[arg(long)]
    collection: String,
    /// Only rows matching this expression, e.g. `age >= 18 and tag in ["a", "b"]`.
    #[arg(long, default_value = "")]
    filter: String,
    /// Fields to return besides the primary key (comma-separated).
    #[arg(long, default_value = "")]
    output_fields: String,
    /// strong, session, bounded or eventually.
    #[arg(long, default_value = "strong")]
    consistency: String,
    /// Read as of this timestamp (0: the newest the shards have applied).
    #[arg(long, default_value_t = 0)]
    mvcc_timestamp: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    #[command(flatten)]
    security: SecurityOpts,
}

impl ReadOpts {
    fn output_fields(&self) -> Vec<String> {
        self.output_fields
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn read_options(&self) -> anyhow::Result<sluice_proto::v1::ReadOptions> {
        Ok(sluice_proto::v1::ReadOptions {
            consistency: cli::consistency(&self.consistency)? as i32,
            mvcc_timestamp: self.mvcc_timestamp,
            timeout_ms: u32::try_from(self.timeout_secs * 1000).unwrap_or(u32::MAX),
            ..Default::default()
        })
    }
}

/// Where client commands find the coordinator.
#[derive(Args, Clone, Debug)]
struct ClientOpts {
    /// Coordinator endpoint.
    #[arg(
        long,
        env = "SLUICE_COORD__ENDPOINT",
        default_value = "http://127.0.0.1:7730"
    )]
    coord: String,
    /// Give up an operation after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    #[command(flatten)]
    security: SecurityOpts,
}

/// How client commands reach Sluice: TLS and the bearer token (servers take theirs from the
/// `[tls]` and `[auth]` configuration).
#[derive(Args, Clone, Default)]
struct SecurityOpts {
    /// Connect over TLS, verifying servers against this CA certificate (PEM file).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM file; servers with `tls.client_auth` require one).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM file).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of the address).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Send this bearer token with every call (servers with `auth.token` require it).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl std::fmt::Debug for SecurityOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityOpts")
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_server_name", &self.tls_server_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SecurityOpts {
    fn security(&self) -> anyhow::Result<sluice_proto::Security> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
        };
        let mut security = sluice_proto::Security::none();
        if let Some(ca) = &self.tls_ca {
            let identity = match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => {
                    Some((read("--tls-cert", cert)?, read("--tls-key", key)?))
                }
                _ => None,
            };
            security = security.with_tls(
                &read("--tls-ca", ca)?,
                identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                self.tls_server_name.as_deref(),
            )?;
        }
        if let Some(token) = &self.token {
            security = security
                .with_token(token)
                .context("--token / SLUICE_TOKEN")?;
        }
        Ok(security)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run coordinator + node + embedded meta store + local log in one process, everything under
    /// one data directory. Prints the address it listens on.
    Standalone(ServerOpts),
    /// Run a coordinator (leader-elected through the meta store; use etcd for a cluster).
    Coord(ServerOpts),
    /// Run a streaming node: registers in the meta store and serves the WALs the coordinator
    /// assigns it.
    Node(ServerOpts),
    /// Run a query worker: registers in the meta store and holds the sealed segments the
    /// coordinator places on it, answering the delegators' reads over them (more memory and CPU
    /// for search than the streaming nodes have).
    Querynode(ServerOpts),
    /// Append messages to a vchannel: `--count N` generated ones, or one per stdin line.
    Produce {
        #[command(flatten)]
        client: ClientOpts,
        /// Target vchannel (`{pchannel}_{collection}v{shard}`).
        #[arg(long)]
        vchannel: String,
        /// Send a CreateCollection for the vchannel's collection first.
        #[arg(long)]
        create_collection: bool,
        /// Generate this many messages instead of reading stdin.
        #[arg(long)]
        count: Option<usize>,
        /// Appends in flight.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Insert the rows of a JSON-lines file (one object per line, fields by name) or of a
    /// Parquet file (`.parquet`, columns named after the fields) into a collection of the
    /// catalog, routed to its shards by primary key.
    Insert {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name.
        #[arg(long)]
        collection: String,
        /// The JSON-lines or Parquet file.
        #[arg(long)]
        file: PathBuf,
        /// Rows per insert message.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// The partition the rows go to (the collection's default, first one, if not named).
        #[arg(long)]
        partition: Option<String>,
    },
    /// The rows nearest to one or more query vectors (prints one JSON object per hit).
    Search {
        #[command(flatten)]
        read: ReadOpts,
        /// A query vector: comma-separated floats, or for a sparse vector field a JSON object
        /// of index to weight, `{"3": 0.5, "17": 1.2}` (repeat for several queries).
        #[arg(long = "vector", required_unless_present = "texts")]
        vectors: Vec<String>,
        /// A text query of a BM25 function's output field, scored by BM25 (repeat for several
        /// queries).
        #[arg(long = "text", conflicts_with = "vectors")]
        texts: Vec<String>,
        /// The vector field (may be left out when the collection has one).
        #[arg(long, default_value = "")]
        field: String,
        /// Hits per query vector.
        #[arg(long, default_value_t = 10)]
        top_k: u32,
        /// L2, IP, COSINE or BM25 (default: the index's metric; BM25 for text queries).
        #[arg(long, default_value = "")]
        metric: String,
        /// Compare every row instead of using the HNSW indexes.
        #[arg(long)]
        exact: bool,
        /// HNSW candidate list size for this search (0: the server's `query.hnsw_ef_search`).
        #[arg(long, default_value_t = 0)]
        ef: u32,
    },
    /// The rows matching a filter, or the rows with given primary keys (one JSON object each).
    Query {
        #[command(flatten)]
        read: ReadOpts,
        /// At most this many rows (0: all), smallest keys first.
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Fetch these primary keys instead of filtering (comma-separated; integers for an
        /// INT64 key, strings for a VARCHAR one).
        #[arg(long, conflicts_with = "filter")]
        ids: Option<String>,
    },
    /// Read the inserts of a vchannel in timestamp order, surviving failovers.
    Consume {
        #[command(flatten)]
        client: ClientOpts,
        /// Source vchannel.
        #[arg(long)]
        vchannel: String,
        /// Start at the beginning of the log (default: only new messages).
        #[arg(long, conflicts_with = "start_from")]
        from_beginning: bool,
        /// Start at this message id (32 hex digits, as `produce` and `consume` print), inclusive.
        #[arg(long)]
        start_from: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        limit: Option<usize>,
        /// Stop when nothing arrives for this many milliseconds.
        #[arg(long)]
        idle_exit_ms: Option<u64>,
    },
    /// Inspect a running cluster.
    Ctl {
        #[command(subcommand)]
        what: CtlCommand,
    },
    /// Measure throughput and latency next to a baseline taken in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Exercise the local log end to end: append records concurrently at the next term, read the
    /// whole log back and verify every record, including those earlier runs wrote.
    LogSmoke {
        /// Data directory (created if missing); one subdirectory per pchannel.
        #[arg(long, default_value = "./sluice-data")]
        data_dir: PathBuf,
        /// Pchannel to write.
        #[arg(long, default_value = "sluice-dml_0")]
        pchannel: String,
        /// Records to append in this run.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Payload bytes per record.
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Seal and flush a collection's growing segments to Parquet (ManualFlush on every shard).
    Flush {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name.
        name: String,
    },
    /// Which node owns each pchannel, at which term.
    Topology {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The WALs one node holds.
    Status {
        /// The node's address (`host:port`).
        #[arg(long)]
        node: String,
        #[command(flatten)]
        security: SecurityOpts,
    },
    /// Create a collection in the catalog.
    CreateCollection {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name.
        #[arg(long)]
        name: String,
        /// A field: `name:type[:N][:pk][:auto][:nullable]`, type one of bool, int32, int64,
        /// float, double, varchar (N = max length), json, float_vector (N = dimension),
        /// sparse_float_vector. A varchar field with `:analyzer` is split into terms (the
        /// standard analyzer), and with `:match` too filters take `text_match(field, 'terms')`;
        /// a sparse_float_vector field with `:bm25=<that field>` is the output of a BM25
        /// function of it, searched with `search --text`. Repeat for each field, in order.
        #[arg(long = "field", required = true)]
        fields: Vec<String>,
        /// Shards (one vchannel each).
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Partition names (default: one, `_default`).
        #[arg(long = "partition")]
        partitions: Vec<String>,
    },
    /// The databases: `default`, then the others by name. A collection named `db.name` is
    /// `name` in database `db`.
    Databases {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Create a database.
    CreateDatabase {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name.
        name: String,
    },
    /// The users of the Milvus API's access control, with their roles.
    Users {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Set a user's password (`root`'s too) without the old one, read as one line from stdin,
    /// so that it shows in no process list or shell history.
    ResetPassword {
        #[command(flatten)]
        client: ClientOpts,
        /// The user.
        name: String,
    },
    /// Drop a database that has no collections (a missing one is no change).
    DropDatabase {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name.
        name: String,
    },
    /// The collections of the catalog.
    Collections {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// One collection: schema, partitions, vchannels.
    Describe {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name.
        name: String,
    },
    /// Load a collection for reads (a new one is loaded): delegators hold its rows again.
    Load {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name.
        name: String,
        /// Delegators per shard: N-1 replicas go to query workers (`sluice querynode`) and
        /// take their share of reads that are not STRONG.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
    },
    /// Drain a streaming node: the coordinator moves its pchannels to the other nodes (a
    /// handover) and gives it nothing new until `--undo`. The node keeps running.
    Drain {
        #[command(flatten)]
        client: ClientOpts,
        /// The node id.
        node: u64,
        /// Undrain: the node takes pchannels again.
        #[arg(long)]
        undo: bool,
    },
    /// Move a pchannel to a streaming node (a handover: its owner closes the WAL, the node
    /// opens it at a higher term; producers wait and go on). Prints the new term.
    Move {
        #[command(flatten)]
        client: ClientOpts,
        /// The pchannel, e.g. `sluice-dml_0` (`sluice ctl topology` lists them).
        pchannel: String,
        /// The node id to move it to.
        node: u64,
    },
    /// Release a collection: delegators drop its rows; reads answer COLLECTION_NOT_LOADED.
    Release {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name.
        name: String,
    },
    /// Drop a collection.
    DropCollection {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name.
        name: String,
    },
    /// Rename a collection; its id, data, partitions, aliases and load state stay.
    Rename {
        #[command(flatten)]
        client: ClientOpts,
        /// Its name (not an alias).
        name: String,
        /// Its name from now on: free of collections and aliases.
        new_name: String,
    },
    /// Add a field to a collection's schema: a nullable scalar field, which rows written before
    /// read as null.
    AddField {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name.
        collection: String,
        /// The field, `name:type[:N]:nullable` (type: bool, int32, int64, float, double,
        /// varchar, json; N: a varchar's max length).
        field: String,
    },
    /// Empty a collection: every row goes, growing and sealed; its schema, partitions,
    /// indexes, aliases and properties stay.
    Truncate {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name (or alias).
        collection: String,
    },
    /// Raise a VARCHAR field's max length (it only grows: rows written before stay valid).
    AlterField {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name (or alias).
        collection: String,
        /// The VARCHAR field.
        field: String,
        /// Its max length in bytes from now on (above the current one, at most 65535).
        #[arg(long)]
        max_length: u32,
    },
    /// Compact a collection: rewrite its sealed segments without the rows committed deletes
    /// and its TTL removed (flush first for recent deletes).
    Compact {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name (or alias).
        collection: String,
        /// Wait until every vchannel is compacted (up to the timeout) and print what was done.
        #[arg(long)]
        wait: bool,
    },
    /// Add a partition to a collection (an existing one of that name is no change).
    CreatePartition {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name.
        collection: String,
        /// The partition's name: [A-Za-z0-9_], not starting with a digit.
        partition: String,
    },
    /// Drop a partition of a collection and its rows (not its default, first partition).
    DropPartition {
        #[command(flatten)]
        client: ClientOpts,
        /// The collection's name.
        collection: String,
        /// The partition's name.
        partition: String,
    },
    /// The segments and delete files the recovery storage committed (their manifests).
    Segments {
        #[command(flatten)]
        client: ClientOpts,
        /// Only this collection.
        #[arg(long)]
        collection: Option<i64>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The full WAL (interceptors, timeticks, write-ahead buffer) against the raw local log it
    /// runs on: 1 KiB inserts, fsync on, closed loop at each producer count; then
    /// append→tailing-reader latency at half the WAL's rate.
    Wal {
        #[command(flatten)]
        opts: BenchOpts,
        /// Concurrent producers, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        producers: Vec<usize>,
    },
    /// Appends through gRPC against appends in process, same run: starts a standalone server
    /// in this process, then at each producer count a client reaching its WAL directly and a
    /// client going over loopback gRPC append inserts in a closed loop (fsync on); prints
    /// records/s, MB/s, per-append latency p50/p99 and the gRPC/in-process ratio.
    Grpc {
        #[command(flatten)]
        opts: BenchOpts,
        /// Concurrent producers, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        producers: Vec<usize>,
    },
    /// Longest time without an acknowledgement for producers whose pchannel is handed over
    /// (`MovePChannel`), against equal windows without a move and a SIGKILL failover, in one
    /// run: starts a coordinator and two nodes (this binary) on the etcd at `--etcd`.
    Move {
        #[command(flatten)]
        opts: BenchOpts,
        /// The etcd endpoint (a fresh key root is used).
        #[arg(long)]
        etcd: String,
        /// Closed-loop producers.
        #[arg(long, default_value_t = 4)]
        producers: usize,
        /// Moves to measure.
        #[arg(long, default_value_t = 10)]
        moves: usize,
    },
    /// Rows/s the flusher writes to Parquet (reading the log, decoding the inserts, writing the
    /// file, committing the manifest) against parquet's ArrowWriter writing the same batches
    /// to the same local object-store directory, in one run; prints the ratio.
    Flush {
        /// Directory to benchmark in (a temporary subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Rows per round.
        #[arg(long, default_value_t = 50_000)]
        rows: usize,
        /// Rows per insert.
        #[arg(long, default_value_t = 1000)]
        batch_rows: usize,
        /// Vector dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Rounds per side (the best and the median of each are compared).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Write the files to memory instead of a directory: takes the disk out of both sides.
        #[arg(long)]
        in_memory: bool,
    },
    /// Rows/s compaction rewrites a segment without its deleted rows (loading the deletes,
    /// reading the file, writing the new one with its row numbers, swapping the manifest)
    /// against reading, filtering and writing the same file with parquet and arrow, in one run;
    /// prints the ratio.
    Compact {
        /// Directory to benchmark in (a temporary subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Rows in the segment.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Vector dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Share of the rows deleted.
        #[arg(long, default_value_t = 0.5)]
        removed: f64,
        /// Rounds per side (the best and the median of each are compared).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Time to open a WAL (local log, embedded meta store) whose log holds each count of
    /// messages, with a recent recovery snapshot and replaying everything, in one run; prints
    /// the ratio of the largest count's open time to the smallest's.
    Recovery {
        /// Directory to benchmark in (a temporary subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Messages in the log, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        counts: Vec<u64>,
        /// Inserts written after the snapshot the reopen starts from.
        #[arg(long, default_value_t = 10_000)]
        tail: u64,
        /// Payload bytes per insert.
        #[arg(long, default_value_t = 64)]
        record_size: usize,
    },
    /// Vector search: in process through a shard against the raw usearch HNSW index (same
    /// vectors, same parameters, alternating rounds), then end to end through a standalone
    /// server in this process: insert rate, flush + index time, search QPS and p50/p99 at 1 and
    /// 8 clients over loopback gRPC, recall@10, insert→searchable latency.
    Search {
        /// Directory to benchmark in (a temporary subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Parquet file of the vectors (`id` int64 = row number, `tag` int64, `vec`
        /// fixed-size list of float32), as `scripts/bench_search.py` writes it. Default:
        /// generated (fixed-seed Gaussian clusters).
        #[arg(long, requires = "queries")]
        data: Option<PathBuf>,
        /// Parquet file of the query vectors (`vec`).
        #[arg(long, requires = "data")]
        queries: Option<PathBuf>,
        /// Parquet file of the exact top-10 ids per query (`ids`). Default: computed here.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Generated vectors.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Generated dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Generated queries.
        #[arg(long, default_value_t = 1000)]
        nq: usize,
        /// Seconds of searching per client count.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// In-process rounds per side.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// HNSW links per node.
        #[arg(long, default_value_t = 16)]
        hnsw_m: usize,
        /// HNSW candidate list while building.
        #[arg(long, default_value_t = 128)]
        ef_construction: usize,
        /// HNSW candidate list while searching.
        #[arg(long, default_value_t = 64)]
        ef_search: usize,
        /// Print one JSON object with the results on stdout (the table goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

/// Settings every benchmark takes.
#[derive(Args, Clone, Debug)]
struct BenchOpts {
    /// Directory to benchmark in (a temporary subdirectory is created and removed).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Payload bytes per insert.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

impl BenchOpts {
    /// A fresh temporary directory under `--dir`, removed when dropped.
    fn tempdir(&self) -> anyhow::Result<tempfile::TempDir> {
        bench_tempdir(&self.dir)
    }
}

/// A fresh temporary directory under `dir` (created if needed), removed when dropped.
fn bench_tempdir(dir: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix("sluice-bench-")
        .tempdir_in(dir)
        .context("creating the benchmark directory")
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn vchannel(name: &str) -> anyhow::Result<VChannel> {
    VChannel::new(name).with_context(|| format!("--vchannel {name:?}"))
}

/// The TLS and token flags of a client command (`None`: a server or a benchmark).
fn client_security(command: &Command) -> Option<&SecurityOpts> {
    match command {
        Command::Produce { client, .. }
        | Command::Insert { client, .. }
        | Command::Consume { client, .. }
        | Command::Ctl {
            what:
                CtlCommand::Flush { client, .. }
                | CtlCommand::Topology { client }
                | CtlCommand::CreateCollection { client, .. }
                | CtlCommand::Collections { client }
                | CtlCommand::Databases { client }
                | CtlCommand::CreateDatabase { client, .. }
                | CtlCommand::Users { client }
                | CtlCommand::ResetPassword { client, .. }
                | CtlCommand::DropDatabase { client, .. }
                | CtlCommand::Describe { client, .. }
                | CtlCommand::Load { client, .. }
                | CtlCommand::Drain { client, .. }
                | CtlCommand::Move { client, .. }
                | CtlCommand::Release { client, .. }
                | CtlCommand::DropCollection { client, .. }
                | CtlCommand::AddField { client, .. }
                | CtlCommand::AlterField { client, .. }
                | CtlCommand::Truncate { client, .. }
                | CtlCommand::Rename { client, .. }
                | CtlCommand::Compact { client, .. }
                | CtlCommand::CreatePartition { client, .. }
                | CtlCommand::DropPartition { client, .. }
                | CtlCommand::Segments { client, .. },
        } => Some(&client.security),
        Command::Search { read, .. } | Command::Query { read, .. } => Some(&read.security),
        Command::Ctl {
            what: CtlCommand::Status { security, .. },
        } => Some(security),
        Command::Standalone(_)
        | Command::Coord(_)
        | Command::Node(_)
        | Command::Querynode(_)
        | Command::Bench { .. }
        | Command::LogSmoke { .. } => None,
    }
}

/// Every channel this process makes to other Sluice processes — clients, node → coordinator,
/// node → node, delegator → query worker — uses `security`. Installed once, before any channel
/// exists: one process has one identity towards the others, and no caller can miss it.
fn secure_channels(security: sluice_proto::Security) -> anyhow::Result<()> {
    Ok(security.install()?)
}

/// A server command's role and configuration (`None` for the other commands).
fn server_config(command: &Command) -> anyhow::Result<Option<(&'static str, Config)>> {
    Ok(match command {
        Command::Standalone(opts) => Some(("standalone", opts.load()?)),
        Command::Coord(opts) => Some(("coord", opts.load()?)),
        Command::Node(opts) => Some(("node", opts.load()?)),
        Command::Querynode(opts) => Some(("querynode", opts.load()?)),
        _ => None,
    })
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tune_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let server = server_config(&cli.command)?;
    // Dropped before the runtime: the span exporter flushes on it.
    let _telemetry = {
        let _in_runtime = rt.enter();
        match &server {
            Some((role, config)) => telemetry::init(config.otlp_endpoint.as_deref(), role)?,
            None => telemetry::init(None, "client")?,
        }
    };
    if let Some(opts) = client_security(&cli.command) {
        secure_channels(opts.security()?)?;
    }
    let mut server = server.map(|(_, config)| config);
    let mut config = move || server.take().context("a server command's configuration");
    match cli.command {
        Command::Standalone(_) => {
            let config = config()?;
            secure_channels(config.channel_security()?)?;
            rt.block_on(async {
                server::serve_metrics(&config)?;
                server::standalone(config).await
            })
        }
        Command::Coord(_) => {
            let config = config()?;
            secure_channels(config.channel_security()?)?;
            rt.block_on(async {
                server::serve_metrics(&config)?;
                server::coord(config).await
            })
        }
        Command::Node(_) => {
            let config = config()?;
            secure_channels(config.channel_security()?)?;
            rt.block_on(async {
                server::serve_metrics(&config)?;
                server::node(config).await
            })
        }
        Command::Querynode(_) => {
            let config = config()?;
            secure_channels(config.channel_security()?)?;
            rt.block_on(async {
                server::serve_metrics(&config)?;
                server::querynode(config).await
            })
        }
        Command::Produce {
            client,
            vchannel: v,
            create_collection,
            count,
            concurrency,
        } => {
            let v = vchannel(&v)?;
            rt.block_on(async {
                let (c, _t) =
                    cli::connect(&client.coord, Duration::from_secs(client.timeout_secs))?;
                cli::produce(&c, &v, create_collection, count, concurrency).await
            })
        }
        Command::Consume {
            client,
            vchannel: v,
            from_beginning,
            start_from,
            limit,
            idle_exit_ms,
        } => {
            let v = vchannel(&v)?;
            let policy = match start_from {
                Some(id) => DeliverPolicy::StartFrom(
                    id.parse().with_context(|| format!("--start-from {id:?}"))?,
                ),
                None if from_beginning => DeliverPolicy::All,
                None => DeliverPolicy::Latest,
            };
            rt.block_on(async {
                let (c, _t) =
                    cli::connect(&client.coord, Duration::from_secs(client.timeout_secs))?;
                cli::consume(
                    &c,
                    &v,
                    policy,
                    limit,
                    idle_exit_ms.map(Duration::from_millis),
                )
                .await
            })
        }
        Command::Ctl {
            what: CtlCommand::Topology { client },
        } => rt.block_on(async {
            let (_c, t) = cli::connect(&client.coord, Duration::from_secs(client.timeout_secs))?;
            cli::topology(&t, Duration::from_secs(client.timeout_secs)).await
        }),
        Command::Ctl {
            what: CtlCommand::Status { node, .. },
        } => rt.block_on(cli::status(&node)),
        Command::Ctl {
            what:
                CtlCommand::CreateCollection {
                    client,
                    name,
                    fields,
                    shards,
                    partitions,
                },
        } => rt.block_on(async {
            let info = cli::create_collection(
                &client.coord,
                &name,
                &fields,
                shards,
                partitions,
                Duration::from_secs(client.timeout_secs),
            )
            .await?;
            cli::print_collection(&info);
            Ok(())
        }),
        Command::Ctl {
            what: CtlCommand::Collections { client },
        } => rt.block_on(cli::list_collections(
            &client.coord,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::Databases { client },
        } => rt.block_on(cli::list_databases(
            &client.coord,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::CreateDatabase { client, name },
        } => rt.block_on(cli::create_database(
            &client.coord,
            &name,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::Users { client },
        } => rt.block_on(cli::list_users(
            &client.coord,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::ResetPassword { client, name },
        } => rt.block_on(cli::reset_password(
            &client.coord,
            &name,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::DropDatabase { client, name },
        } => rt.block_on(cli::drop_database(
            &client.coord,
            &name,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::Describe { client, name },
        } => rt.block_on(cli::describe_collection(
            &client.coord,
            &name,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::DropCollection { client, name },
        } => rt.block_on(cli::drop_collection(
            &client.coord,
            &name,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::Compact {
                    client,
                    collection,
                    wait,
                },
        } => rt.block_on(cli::compact(
            &client.coord,
            &collection,
            wait,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::Rename {
                    client,
                    name,
                    new_name,
                },
        } => rt.block_on(cli::rename(
            &client.coord,
            &name,
            &new_name,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::AddField {
                    client,
                    collection,
                    field,
                },
        } => rt.block_on(cli::add_field(
            &client.coord,
            &collection,
            &field,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::Truncate { client, collection },
        } => rt.block_on(cli::truncate(
            &client.coord,
            &collection,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::AlterField {
                    client,
                    collection,
                    field,
                    max_length,
                },
        } => rt.block_on(cli::alter_field(
            &client.coord,
            &collection,
            &field,
            max_length,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::CreatePartition {
                    client,
                    collection,
                    partition,
                },
        } => rt.block_on(cli::partition(
            &client.coord,
            &collection,
            &partition,
            true,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::DropPartition {
                    client,
                    collection,
                    partition,
                },
        } => rt.block_on(cli::partition(
            &client.coord,
            &collection,
            &partition,
            false,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::Load {
                    client,
                    name,
                    replicas,
                },
        } => rt.block_on(cli::set_loaded(
            &client.coord,
            &name,
            Some(replicas),
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::Drain { client, node, undo },
        } => rt.block_on(cli::drain(
            &client.coord,
            node,
            undo,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what:
                CtlCommand::Move {
                    client,
                    pchannel,
                    node,
                },
        } => rt.block_on(cli::move_pchannel(
            &client.coord,
            &pchannel,
            node,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Ctl {
            what: CtlCommand::Release { client, name },
        } => rt.block_on(cli::set_loaded(
            &client.coord,
            &name,
            None,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Search {
            read,
            vectors,
            texts,
            field,
            top_k,
            metric,
            exact,
            ef,
        } => {
            let req = sluice_proto::v1::SearchRequest {
                collection: read.collection.clone(),
                vector_field: field,
                vectors: vectors
                    .iter()
                    .filter(|v| !cli::is_sparse_vector(v))
                    .map(|v| {
                        Ok(sluice_proto::v1::FloatVector {
                            values: cli::parse_vector(v)?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
                sparse_vectors: vectors
                    .iter()
                    .filter(|v| cli::is_sparse_vector(v))
                    .map(|v| cli::parse_sparse_vector(v).map(Into::into))
                    .collect::<anyhow::Result<_>>()?,
                text_queries: texts,
                bm25_k1: 0.0,
                bm25_b: None,
                top_k,
                metric: cli::metric(&metric)? as i32,
                filter: read.filter.clone(),
                output_fields: read.output_fields(),
                read: Some(read.read_options()?),
                exact,
                partition_ids: Vec::new(),
                ef,
                shards: Vec::new(),
            };
            rt.block_on(cli::search(
                &read.node,
                req,
                Duration::from_secs(read.timeout_secs),
            ))
        }
        Command::Query { read, limit, ids } => {
            let req = match ids {
                Some(ids) => {
                    let parts: Vec<&str> = ids.split(',').map(str::trim).collect();
                    let ints: Result<Vec<i64>, _> = parts.iter().map(|p| p.parse()).collect();
                    let keys = match ints {
                        Ok(values) => sluice_proto::v1::primary_keys::Keys::IntKeys(
                            sluice_proto::v1::Int64List { values },
                        ),
                        Err(_) => sluice_proto::v1::primary_keys::Keys::StrKeys(
                            sluice_proto::v1::StringList {
                                values: parts.iter().map(|p| (*p).to_owned()).collect(),
                            },
                        ),
                    };
                    cli::QueryOrGet::Get(sluice_proto::v1::GetRequest {
                        collection: read.collection.clone(),
                        keys: Some(sluice_proto::v1::PrimaryKeys { keys: Some(keys) }),
                        output_fields: read.output_fields(),
                        read: Some(read.read_options()?),
                        shards: Vec::new(),
                    })
                }
                None => cli::QueryOrGet::Query(sluice_proto::v1::QueryRequest {
                    collection: read.collection.clone(),
                    filter: read.filter.clone(),
                    output_fields: read.output_fields(),
                    limit,
                    read: Some(read.read_options()?),
                    partition_ids: Vec::new(),
                    shards: Vec::new(),
                }),
            };
            rt.block_on(cli::query(
                &read.node,
                req,
                Duration::from_secs(read.timeout_secs),
            ))
        }
        Command::Ctl {
            what: CtlCommand::Flush { client, name },
        } => rt.block_on(async {
            let timeout = Duration::from_secs(client.timeout_secs);
            let (c, _t) = cli::connect(&client.coord, timeout)?;
            for line in cli::flush(&c, &client.coord, &name, timeout).await? {
                println!("{line}");
            }
            Ok(())
        }),
        Command::Insert {
            client,
            collection,
            file,
            batch,
            partition,
        } => rt.block_on(async {
            let timeout = Duration::from_secs(client.timeout_secs);
            let (c, _t) = cli::connect(&client.coord, timeout)?;
            let target = cli::InsertTarget {
                collection: &collection,
                partition: partition.as_deref(),
            };
            let done = cli::insert_file(&c, &client.coord, target, &file, batch, timeout).await?;
            println!("{done}");
            Ok(())
        }),
        Command::Ctl {
            what: CtlCommand::Segments { client, collection },
        } => rt.block_on(cli::segments(
            &client.coord,
            collection,
            Duration::from_secs(client.timeout_secs),
        )),
        Command::Bench {
            what: BenchCommand::Wal { opts, producers },
        } => {
            let tmp = opts.tempdir()?;
            rt.block_on(bench::wal(bench::BenchParams {
                dir: tmp.path(),
                producers: &producers,
                record_size: opts.record_size,
                seconds: opts.seconds,
            }))
        }
        Command::Bench {
            what: BenchCommand::Grpc { opts, producers },
        } => {
            let tmp = opts.tempdir()?;
            rt.block_on(bench::grpc(bench::BenchParams {
                dir: tmp.path(),
                producers: &producers,
                record_size: opts.record_size,
                seconds: opts.seconds,
            }))
        }
        Command::Bench {
            what:
                BenchCommand::Recovery {
                    dir,
                    counts,
                    tail,
                    record_size,
                },
        } => {
            let opts = BenchOpts {
                dir,
                record_size,
                seconds: 0.0,
            };
            let tmp = opts.tempdir()?;
            rt.block_on(bench::recovery::run(bench::recovery::RecoveryParams {
                dir: tmp.path(),
                counts: &counts,
                tail,
                record_size,
            }))
        }
        Command::Bench {
            what:
                BenchCommand::Search {
                    dir,
                    data,
                    queries,
                    truth,
                    rows,
                    dim,
                    nq,
                    seconds,
                    rounds,
                    hnsw_m,
                    ef_construction,
                    ef_search,
                    json,
                },
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            rt.block_on(bench::search::search(bench::search::SearchBenchParams {
                dir,
                data,
                queries,
                truth,
                rows,
                dim,
                nq,
                seconds,
                rounds,
                json,
                index: sluice_query::IndexParams {
                    connectivity: hnsw_m,
                    expansion_add: ef_construction,
                    expansion_search: ef_search,
                    ..sluice_query::IndexParams::default()
                },
            }))
        }
        Command::Bench {
            what:
                BenchCommand::Move {
                    opts,
                    etcd,
                    producers,
                    moves,
                },
        } => {
            let tmp = opts.tempdir()?;
            rt.block_on(bench::handover::handover(bench::handover::MoveParams {
                dir: tmp.path(),
                etcd: &etcd,
                producers,
                moves,
                record_size: opts.record_size,
            }))
        }
        Command::Bench {
            what:
                BenchCommand::Flush {
                    dir,
                    rows,
                    batch_rows,
                    dim,
                    rounds,
                    in_memory,
                },
        } => {
            let tmp = bench_tempdir(&dir)?;
            rt.block_on(bench::flush::run(bench::flush::FlushParams {
                dir: tmp.path(),
                rows,
                batch_rows,
                dim,
                rounds,
                in_memory,
            }))
        }
        Command::Bench {
            what:
                BenchCommand::Compact {
                    dir,
                    rows,
                    dim,
                    removed,
                    rounds,
                },
        } => {
            let tmp = bench_tempdir(&dir)?;
            rt.block_on(bench::compact::run(bench::compact::CompactParams {
                dir: tmp.path(),
                rows,
                dim,
                removed,
                rounds,
            }))
        }
        Command::LogSmoke {
            data_dir,
            pchannel,
            records,
            concurrency,
            record_size,
        } => rt.block_on(log_smoke(
            data_dir,
            &pchannel,
            records,
            concurrency.max(1),
            record_size,
        )),
    }
}

/// The payload of record `seq` written at `term`: its own description repeated to `size` bytes,
/// so reading it back verifies every byte.
fn payload(term: Term, seq: usize, size: usize) -> Vec<u8> {
    let tag = format!("term={term} seq={seq};");
    tag.bytes().cycle().take(size.max(tag.len())).collect()
}

/// Opens read-write at a term above every earlier run's: one more than the highest term found
/// in the log (or than the term an earlier writer fenced with, if it wrote nothing).
async fn open_next_term(
    provider: &dyn LogProvider,
    pchannel: &PChannel,
) -> anyhow::Result<Arc<dyn LogHandle>> {
    let ro = provider
        .open(OpenOptions::read_only(pchannel.clone(), Term(0)))
        .await
        .context("opening the local log read-only")?;
    let mut stream = ro.read(ReadOptions::new(DeliverPolicy::All)).await?;
    let mut highest = Term(0);
    // The log holds only what earlier runs wrote; it is read to its end, which is where no
    // record arrives for a moment.
    while let Ok(Some(m)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await
    {
        let m = m?;
        if let Some(t) = m.property("term").or(m.property("marker"))
            && let Ok(t) = t.parse::<u64>()
        {
            highest = highest.max(Term(t));
        }
    }
    drop(stream);
    ro.close().await;
    let mut term = highest.next();
    for _ in 0..3 {
        match provider
            .open(OpenOptions::read_write(pchannel.clone(), term))
            .await
        {
            Ok(h) => return Ok(h),
            Err(LogError::Fenced { current, .. }) => term = current.next(),
            Err(e) => return Err(e).context("opening the local log"),
        }
    }
    bail!("could not find a free term for {pchannel}")
}

async fn log_smoke(
    data_dir: PathBuf,
    pchannel: &str,
    records: usize,
    concurrency: usize,
    record_size: usize,
) -> anyhow::Result<()> {
    let pchannel = PChannel::new(pchannel)?;
    let provider = LocalProvider::new(LocalConfig::new(&data_dir))?;
    let handle = open_next_term(&provider, &pchannel).await?;
    let term = handle.term();
    println!("opened {pchannel} in {} at term {term}", data_dir.display());

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let handle = handle.clone();
        tasks.spawn(async move {
            for seq in (w..records).step_by(concurrency) {
                let msg = MutableMessage::builder(InsertHeader::default())
                    .property("term", term.0.to_string())
                    .property("seq", seq.to_string())
                    .payload(payload(term, seq, record_size))
                    .build()?;
                handle.append(msg).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    println!(
        "appended {records} records of {record_size} B with {concurrency} appenders in {elapsed:.2?}: {:.0} records/s (fsync on)",
        records as f64 / elapsed.as_secs_f64()
    );

    // A marker record tells the reader where this run's log ends.
    let end_marker = MutableMessage::builder(InsertHeader::default())
        .property("marker", term.0.to_string())
        .build()?;
    let end_id = handle.append(end_marker).await?;

    // Read everything back, every term, and check each record against its own description.
    let mut stream = handle.read(ReadOptions::new(DeliverPolicy::All)).await?;
    let (mut total, mut this_run, mut last_id) = (0usize, 0usize, None);
    loop {
        let Some(m) = stream.next().await else {
            bail!("log ended after {total} records, before this run's end marker");
        };
        let m = m?;
        if last_id.is_some_and(|l| l >= m.id()) {
            bail!("ids out of order at {}", m.id());
        }
        last_id = Some(m.id());
        if m.id() == end_id {
            break;
        }
        if m.property("marker").is_some() {
            continue;
        }
        let t: u64 = m.property("term").context("record without term")?.parse()?;
        let seq: usize = m.property("seq").context("record without seq")?.parse()?;
        if m.payload().as_ref() != payload(Term(t), seq, m.payload().len()).as_slice() {
            bail!("record {} (term {t}, seq {seq}) is garbled", m.id());
        }
        if Term(t) == term {
            this_run += 1;
        }
        total += 1;
    }
    if this_run != records {
        bail!("read back {this_run} of the {records} records appended in this run");
    }
    println!(
        "read back and verified {total} records ({this_run} from this run, {} from earlier runs)",
        total - this_run
    );
    handle.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_keeps_freed_memory_for_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert!(super::tune_allocator(), "the purge delay was not set");
        #[allow(unsafe_code)]
        // SAFETY: as in `tune_allocator`.
        let now = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(now, super::PURGE_DELAY_MS);
    }
}
