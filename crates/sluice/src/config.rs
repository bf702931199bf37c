//! The configuration tree: defaults, then a TOML file (`--config`), then `SLUICE_*`
//! environment variables (nested keys joined with `__`, e.g. `SLUICE_META__BACKEND=etcd`), then
//! command-line flags. Unknown keys and bad values are errors that name the key.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything a `sluice` process can be configured with.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Where standalone keeps everything (meta store, WAL); a node keeps its WAL here unless
    /// `log.dir` says otherwise.
    pub data_dir: PathBuf,
    /// The gRPC address to listen on (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// The address other processes use to reach this one (default: the bound listen address).
    pub advertise: Option<String>,
    /// The metadata store.
    pub meta: MetaSection,
    /// The log backend.
    pub log: LogSection,
    /// The pchannels the coordinator manages.
    pub pchannels: PChannelsSection,
    /// This node.
    pub node: NodeSection,
    /// The coordinator.
    pub coord: CoordSection,
    /// The WAL.
    pub wal: WalSection,
    /// The recovery storage: where flushed segments go, and log truncation.
    pub storage: StorageSection,
    /// The query delegators and their search indexes (needs `storage.enabled`).
    pub query: QuerySection,
    /// Where this process serves Prometheus metrics (`host:port`, HTTP `GET /metrics`); unset:
    /// none.
    pub metrics_listen: Option<String>,
    /// Where this process exports its tracing spans over OTLP/gRPC (`http://host:4317`); needs
    /// a binary built with the `otlp` feature. Unset: none.
    pub otlp_endpoint: Option<String>,
    /// Where the Milvus-compatible API is served (`host:port`, what pymilvus connects to).
    /// Unset: `127.0.0.1:19530` for `standalone` when that port is free, none for the other
    /// commands; empty: none.
    pub milvus_listen: Option<String>,
    /// Whether the Milvus API authenticates and authorizes every call (Milvus's
    /// `common.security.authorizationEnabled`): a call carries the base64 of `user:password`
    /// as `authorization` metadata (pymilvus `token="user:password"`), the user must exist with
    /// that password (`root`, password `Milvus` until changed, always does) and hold a role
    /// granting the call's privilege. The Milvus listener then checks no `auth.token`.
    /// Default false: users, roles and grants are kept but not checked.
    pub milvus_authorization: bool,
    /// TLS of every gRPC connection this process serves or makes.
    pub tls: TlsSection,
    /// The bearer token of every gRPC call.
    pub auth: AuthSection,
}

/// TLS (rustls) of gRPC. With `cert` + `key` this process serves over TLS; with `ca` every
/// connection it makes to other Sluice processes is TLS, verified against `ca`. Paths are PEM
/// files, read at start-up. Default: all unset (plaintext).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// The certificate chain this process serves with (PEM). Default: unset.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM). Default: unset.
    pub key: Option<PathBuf>,
    /// The CA that verifies the servers this process connects to, and, with `client_auth`, the
    /// clients that connect to it (PEM). Default: unset.
    pub ca: Option<PathBuf>,
    /// Require a client certificate signed by `ca` on every connection (mTLS). Default false.
    pub client_auth: bool,
    /// The certificate chain this process presents when it connects to other Sluice processes
    /// (needed when they set `client_auth`; PEM). Default: unset.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM). Default: unset.
    pub client_key: Option<PathBuf>,
    /// The name servers' certificates must carry. Default: the host of each address.
    pub server_name: Option<String>,
}

/// Authentication of gRPC calls.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// A shared bearer token: every call to this process (but health checks) must carry
    /// `authorization: Bearer <token>` (or, as Milvus clients send it, the token in base64) or
    /// is answered UNAUTHENTICATED, and this process sends it on every call it makes.
    /// Printable ASCII without spaces; best set through
    /// `SLUICE_AUTH__TOKEN`. Default: unset (no check).
    pub token: Option<Secret>,
}

/// A secret setting (token, S3 secret key): never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// A string; numbers and booleans too, as their text (an environment variable such as
    /// `SLUICE_AUTH__TOKEN=12345` reaches serde as a number).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The query side: delegators, HNSW indexes of sealed segments, read consistency.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QuerySection {
    /// Serve Search / Query / Get from delegators fed by this node's WALs. Default true.
    pub enabled: bool,
    /// The metric sealed segments' HNSW graphs are built for: "L2", "IP" or "COSINE". Default L2.
    /// A search with another metric compares exactly. A collection's `index.metric`,
    /// `index.hnsw.m` and `index.hnsw.ef_construction` properties take the place of this and
    /// of `hnsw_m` and `hnsw_ef_construction` for it (the Milvus API's CreateIndex sets them).
    pub index_metric: String,
    /// HNSW links per node (M). Default 16.
    pub hnsw_m: usize,
    /// HNSW candidate list while building (efConstruction). Default 128.
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list while searching (ef). Default 64.
    pub hnsw_ef_search: usize,
    /// Sealed segments with fewer rows are searched exactly. Default 2048.
    pub index_min_rows: usize,
    /// How long a read waits for its shards to reach its guarantee timestamp by default (ms).
    /// Default 10000.
    pub read_timeout_ms: u64,
    /// How stale a BOUNDED read may be (ms). Default 5000.
    pub bounded_staleness_ms: u64,
}

impl Default for QuerySection {
    fn default() -> QuerySection {
        QuerySection {
            enabled: true,
            index_metric: "L2".into(),
            hnsw_m: 16,
            hnsw_ef_construction: 128,
            hnsw_ef_search: 64,
            index_min_rows: 2048,
            read_timeout_ms: 10_000,
            bounded_staleness_ms: 5_000,
        }
    }
}

impl QuerySection {
    /// The node's query configuration.
    pub(crate) fn query_config(&self) -> anyhow::Result<sluice_node::query::QueryConfig> {
        let metric: sluice_query::Metric = self
            .index_metric
            .parse::<sluice_types::index::IndexMetric>()
            .map_err(|e| anyhow::anyhow!("query.index_metric: {e}"))?
            .into();
        if self.hnsw_m < 2 || self.hnsw_ef_construction == 0 || self.hnsw_ef_search == 0 {
            bail!("query.hnsw_m must be at least 2 and the hnsw_ef_* values positive");
        }
        if self.read_timeout_ms == 0 {
            bail!("query.read_timeout_ms must be positive");
        }
        Ok(sluice_node::query::QueryConfig {
            index: sluice_query::IndexParams {
                metric,
                connectivity: self.hnsw_m,
                expansion_add: self.hnsw_ef_construction,
                expansion_search: self.hnsw_ef_search,
                min_rows: self.index_min_rows,
            },
            read_timeout: Config::ms(self.read_timeout_ms),
            bounded_staleness: Config::ms(self.bounded_staleness_ms),
        })
    }
}

/// The recovery storage.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageSection {
    /// Flush growing segments to Parquet and truncate the log. Default true. When false, data
    /// stays in the log, which is never truncated.
    pub enabled: bool,
    /// The storage directory when `s3_endpoint` is not set (default `{data_dir}/storage`).
    pub dir: Option<PathBuf>,
    /// S3: the endpoint (`http://host:port`); unset or empty = the directory `dir`.
    pub s3_endpoint: Option<String>,
    /// S3: the bucket (must exist).
    pub s3_bucket: String,
    /// S3: the region.
    pub s3_region: String,
    /// S3: the access key id. Default: unset — `AWS_ACCESS_KEY_ID` from the environment; no
    /// built-in credential.
    pub s3_access_key_id: String,
    /// S3: the secret access key. Default: unset — `AWS_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: Secret,
    /// The key prefix segments and delete files live under (see `proto/sluice/v1/storage.proto`
    /// for the layout below it).
    pub prefix: String,
    /// How long a log record is kept after neither the flusher nor recovery needs it (ms).
    /// Default 600000.
    pub retention_ms: u64,
    /// How often truncation runs (ms). Default 10000.
    pub truncate_interval_ms: u64,
    /// How often the flush checkpoint is saved when it moved (ms). Default 2000.
    pub checkpoint_interval_ms: u64,
    /// The largest Insert or Delete body accepted (bytes). Default 64 MiB.
    pub max_body_bytes: usize,
    /// How often each WAL's sealed segments are looked at for compaction on its own (ms; 0:
    /// only when asked, `sluice ctl compact`). Default 60000.
    pub compaction_interval_ms: u64,
    /// The smallest share (0 to 1) of a segment's rows removed by deletes or the TTL that
    /// makes compaction on its own rewrite it. Default 0.2.
    pub compaction_min_removed_ratio: f64,
    /// How far behind now compaction on its own works (ms): a read pinned to a snapshot
    /// younger than this sees every row it saw. Default 600000.
    pub compaction_retention_ms: u64,
    /// How long files a compaction replaced stay for readers still reading them (ms).
    /// Default 60000.
    pub compaction_sweep_after_ms: u64,
    /// How often each node deletes the storage's objects no manifest names — what a crash
    /// left, or a failed sweep (ms; 0: never). Default 3600000.
    pub gc_interval_ms: u64,
    /// How old such an object must be to go (ms): longer than any flush, compaction or read of
    /// one file takes. Default 3600000.
    pub gc_grace_ms: u64,
}

impl StorageSection {
    /// Compaction as the node runs it.
    pub(crate) fn compaction_config(&self) -> sluice_node::compactor::CompactionConfig {
        sluice_node::compactor::CompactionConfig {
            interval: std::time::Duration::from_millis(self.compaction_interval_ms),
            min_removed_ratio: self.compaction_min_removed_ratio,
            retention: std::time::Duration::from_millis(self.compaction_retention_ms),
            sweep_after: std::time::Duration::from_millis(self.compaction_sweep_after_ms),
            gc_interval: std::time::Duration::from_millis(self.gc_interval_ms),
            gc_grace: std::time::Duration::from_millis(self.gc_grace_ms),
        }
    }
}

impl Default for StorageSection {
    fn default() -> StorageSection {
        StorageSection {
            enabled: true,
            dir: None,
            s3_endpoint: None,
            s3_bucket: "sluice".into(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Secret::default(),
            prefix: "storage".into(),
            retention_ms: 600_000,
            truncate_interval_ms: 10_000,
            checkpoint_interval_ms: 2_000,
            max_body_bytes: 64 << 20,
            compaction_interval_ms: 60_000,
            compaction_min_removed_ratio: 0.2,
            compaction_retention_ms: 600_000,
            compaction_sweep_after_ms: 60_000,
            gc_interval_ms: 3_600_000,
            gc_grace_ms: 3_600_000,
        }
    }
}

/// Which metadata store. An unknown name is a configuration error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MetaBackend {
    /// One redb file under the data dir (single process).
    Embedded,
    /// An etcd cluster (needs a binary built with the `etcd` feature).
    Etcd,
}

/// Which log backend. An unknown name is a configuration error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogBackend {
    /// Segment files in `log.dir`.
    Local,
    /// Blocks in an object store (S3 when `s3_endpoint` is set, else `log.dir`).
    Object,
    /// A topic per pchannel on a Kafka cluster (needs the `kafka` feature).
    Kafka,
}

/// The metadata store as the meta crate opens it: what one factory
/// ([`crate::server::meta_store`]) turns into a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MetaBackendConfig {
    /// The embedded store in this file.
    Embedded {
        /// The redb file.
        path: PathBuf,
    },
    /// etcd at these endpoints.
    Etcd {
        /// `http://host:port` each.
        endpoints: Vec<String>,
    },
}

/// The log backend as the log crate's own configuration: what one factory
/// ([`crate::server::log_provider`]) turns into a provider.
#[derive(Clone, Debug)]
pub(crate) enum LogBackendConfig {
    /// The local log.
    Local(sluice_log::local::LocalConfig),
    /// The object log.
    Object(sluice_log::object::ObjectConfig),
    /// The Kafka log.
    #[cfg(feature = "kafka")]
    Kafka(sluice_log::kafka::KafkaConfig),
}

/// The metadata store.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MetaSection {
    /// `embedded` (one file under the data dir, single process; the default) or `etcd`.
    pub backend: MetaBackend,
    /// etcd endpoints (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Key root, so several clusters can share one etcd.
    pub root: String,
}

/// The log backend.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogSection {
    /// `local` (segment files in `dir`; nodes of a cluster share the directory and fence each
    /// other through it), `object` (zero-disk: blocks in an object store — S3 when
    /// `s3_endpoint` is set, else the directory `dir`) or `kafka` (a topic per pchannel on the
    /// cluster at `kafka_bootstrap`; fencing by transactional producer epochs). Default `local`.
    pub backend: LogBackend,
    /// The log directory (default `{data_dir}/wal`).
    pub dir: Option<PathBuf>,
    /// `local`: bytes per segment file (the unit truncation removes). Default 64 MiB.
    pub local_segment_bytes: u64,
    /// `object` on S3: the endpoint (`http://host:port`; empty = a local directory).
    pub s3_endpoint: Option<String>,
    /// `object` on S3: the bucket (must exist).
    pub s3_bucket: String,
    /// `object` on S3: the region.
    pub s3_region: String,
    /// `object` on S3: the access key id. Default: unset — `AWS_ACCESS_KEY_ID` from the
    /// environment; no built-in credential.
    pub s3_access_key_id: String,
    /// `object` on S3: the secret access key. Default: unset — `AWS_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: Secret,
    /// `object`: the key prefix under which every pchannel's blocks live.
    pub prefix: String,
    /// `kafka`: the bootstrap servers (`host:port[,host:port...]`).
    pub kafka_bootstrap: Option<String>,
    /// `kafka`: the prefix of every topic and transactional id.
    pub kafka_prefix: String,
    /// `kafka`: readers see only committed records. Turn off only on a broker whose last stable
    /// offset can get stuck (Tansu 0.6.0, see `docs/kafka.md`).
    pub kafka_read_committed: bool,
    /// `kafka`: how to reach the brokers: `plaintext` (default), `ssl`, `sasl_plaintext` or
    /// `sasl_ssl` (librdkafka's `security.protocol`).
    pub kafka_security_protocol: Option<String>,
    /// `kafka` over SASL: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub kafka_sasl_mechanism: Option<String>,
    /// `kafka` over SASL: the user name. No default.
    pub kafka_sasl_username: String,
    /// `kafka` over SASL: the password (`SLUICE_LOG__KAFKA_SASL_PASSWORD`). No default; never
    /// logged.
    pub kafka_sasl_password: Secret,
    /// `kafka` over TLS: a PEM file of the CA certificates to trust (default: the system's).
    pub kafka_ssl_ca_location: Option<PathBuf>,
}

/// The pchannels.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PChannelsSection {
    /// Explicit names; when empty, `count` names `{prefix}_{i}`.
    pub names: Vec<String>,
    /// How many pchannels.
    pub count: u32,
    /// Name prefix.
    pub prefix: String,
}

/// This node.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NodeSection {
    /// The node id (unique in the cluster).
    pub id: u64,
    /// Registration lease TTL in ms: the coordinator moves this node's pchannels this long after
    /// it dies.
    pub lease_ttl_ms: u64,
    /// On SIGTERM (or Ctrl-C) the node first has the coordinator move its WALs (query worker:
    /// its segments and replicas) to others, and stops once none is left or after this long
    /// (ms). Default 30000.
    pub drain_timeout_ms: u64,
    /// Appends are refused (RESOURCE_EXHAUSTED, retryable) while the disk of the log, data or
    /// local storage directory has fewer free bytes than this, and accepted again once it has
    /// a tenth more (0: no check). Default 256 MiB.
    pub min_free_disk_bytes: u64,
    /// Appends are refused while write-ahead buffers + growing segments + appends in flight
    /// hold more bytes than this, until under nine tenths of it (0: no cap). Default 4 GiB.
    pub memory_cap_bytes: u64,
    /// Appends wait (then fail, RESOURCE_EXHAUSTED) while this many bytes of appends are in
    /// flight on the node (0: no cap). Default 256 MiB.
    pub max_in_flight_bytes: u64,
}

/// The coordinator.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CoordSection {
    /// Where nodes and clients reach the coordinator (`http://host:port`).
    pub endpoint: String,
    /// Leader lease TTL in ms.
    pub election_ttl_ms: u64,
    /// Assignment rounds run at least this often (ms).
    pub trigger_interval_ms: u64,
    /// Bound on one Remove call to a node (ms).
    pub call_timeout_ms: u64,
    /// Bound on one Assign call to a node, WAL recovery included (ms).
    pub assign_timeout_ms: u64,
    /// Whether placed pchannels may be moved to even out the load. Default true.
    pub balance_allow_rebalance: bool,
    /// At most this many pchannels are moved per round. Default 3.
    pub balance_max_steps: usize,
    /// A cost-only move is taken only when it lowers the cost by more than this. Default 0.01.
    pub balance_tolerance: f64,
    /// A pchannel is moved for balance only this long after its last assignment (ms).
    /// Default 300000.
    pub balance_min_rebalance_interval_ms: u64,
}

/// The WAL (defaults are the WAL crate's own).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WalSection {
    /// How often timeticks are synchronised (ms). Default 200.
    pub timetick_interval_ms: u64,
    /// Timestamps fetched from the oracle at once. Default 1000.
    pub tso_batch: u32,
    /// How long an append waits for timestamps while the coordinator's oracle is unavailable
    /// (restart, failover, meta store away) before failing retryably (ms; 0: fail at once).
    /// Default 10000.
    pub oracle_patience_ms: u64,
    /// Keepalive of a transaction whose BeginTxn asks for 0 (ms). Default 10000.
    pub txn_default_keepalive_ms: u64,
    /// How long a graceful close waits for open transactions (ms). Default 3000.
    pub close_txn_wait_ms: u64,
    /// The longest pause between retries of a failed log append (ms). Default 5000.
    pub append_retry_max_ms: u64,
    /// Bytes the write-ahead buffer keeps for tailing readers. Default 64 MiB.
    pub buffer_capacity_bytes: usize,
    /// How long the write-ahead buffer keeps an entry at most (ms). Default 30000.
    pub buffer_keepalive_ms: u64,
    /// Bytes at which a growing segment seals, before jitter. Default 120 MiB.
    pub segment_max_bytes: u64,
    /// Each segment's limit is `segment_max_bytes × U[1 − jitter, 1]`. Default 0.1.
    pub segment_size_jitter: f64,
    /// A segment idle this long seals, if it holds `segment_min_idle_seal_bytes` (ms).
    /// Default 600000.
    pub segment_max_idle_ms: u64,
    /// Smallest segment the idle policy seals. Default 16 MiB.
    pub segment_min_idle_seal_bytes: u64,
    /// A segment this old seals whatever its size (ms): bounds the log the flusher and the
    /// query delegators read again after a failover. Default 1800000.
    pub segment_max_age_ms: u64,
    /// Growing bytes on the node above which the largest segments seal. Default 4 GiB.
    pub node_growing_high_bytes: u64,
    /// ... until the node's growing bytes are below this. Default 2 GiB.
    pub node_growing_low_bytes: u64,
    /// How often the time and memory seal policies run (ms). Default 10000.
    pub segment_check_interval_ms: u64,
    /// How often the recovery snapshot is saved to the meta store, when anything changed
    /// (ms). Default 5000.
    pub checkpoint_interval_ms: u64,
    /// Save the recovery snapshot early after this many messages. Default 20000.
    pub checkpoint_dirty_messages: u64,
    /// When the log no longer holds the snapshot's checkpoint, open anyway from the oldest
    /// retained record (what the missing records changed is lost). Default false: the open
    /// fails with an error that names this setting.
    pub replay_past_missing_checkpoint: bool,
    /// Exactly-once appends: numbered appends remembered per idempotent producer. Default 256;
    /// at least 128 (`PRODUCER_WINDOW`, how far a producer's appends in flight may spread).
    pub producer_window: usize,
    /// Exactly-once appends: a producer idle this long is forgotten (ms). Default 3600000.
    pub producer_idle_expiry_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./sluice-data"),
            listen: "127.0.0.1:7730".into(),
            advertise: None,
            meta: MetaSection::default(),
            log: LogSection::default(),
            pchannels: PChannelsSection::default(),
            node: NodeSection::default(),
            coord: CoordSection::default(),
            wal: WalSection::default(),
            storage: StorageSection::default(),
            query: QuerySection::default(),
            metrics_listen: None,
            otlp_endpoint: None,
            milvus_listen: None,
            milvus_authorization: false,
            tls: TlsSection::default(),
            auth: AuthSection::default(),
        }
    }
}

impl Default for MetaSection {
    fn default() -> MetaSection {
        MetaSection {
            backend: MetaBackend::Embedded,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            root: "sluice".into(),
        }
    }
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            backend: LogBackend::Local,
            dir: None,
            local_segment_bytes: 64 << 20,
            s3_endpoint: None,
            s3_bucket: "sluice".into(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Secret::default(),
            prefix: "wal".into(),
            kafka_bootstrap: None,
            kafka_prefix: "sluice-".into(),
            kafka_read_committed: true,
            kafka_security_protocol: None,
            kafka_sasl_mechanism: None,
            kafka_sasl_username: String::new(),
            kafka_sasl_password: Secret::default(),
            kafka_ssl_ca_location: None,
        }
    }
}

impl Default for PChannelsSection {
    fn default() -> PChannelsSection {
        PChannelsSection {
            names: Vec::new(),
            count: 4,
            prefix: "sluice-dml".into(),
        }
    }
}

impl Default for NodeSection {
    fn default() -> NodeSection {
        NodeSection {
            id: 1,
            lease_ttl_ms: 10_000,
            drain_timeout_ms: 30_000,
            min_free_disk_bytes: 256 << 20,
            memory_cap_bytes: 4 << 30,
            max_in_flight_bytes: 256 << 20,
        }
    }
}

impl Default for CoordSection {
    fn default() -> CoordSection {
        let balance = sluice_coord::balancer::BalanceConfig::default();
        CoordSection {
            endpoint: "http://127.0.0.1:7730".into(),
            election_ttl_ms: 10_000,
            trigger_interval_ms: 60_000,
            call_timeout_ms: 5_000,
            assign_timeout_ms: 30_000,
            balance_allow_rebalance: balance.allow_rebalance,
            balance_max_steps: balance.max_steps,
            balance_tolerance: balance.tolerance,
            balance_min_rebalance_interval_ms: ms_of(balance.min_rebalance_interval),
        }
    }
}

impl Default for WalSection {
    /// The WAL crate's defaults.
    fn default() -> WalSection {
        let w = sluice_wal::WalConfig::default();
        WalSection {
            timetick_interval_ms: ms_of(w.timetick_interval),
            tso_batch: w.tso_batch,
            oracle_patience_ms: ms_of(w.oracle_patience),
            txn_default_keepalive_ms: ms_of(w.txn_default_keepalive),
            close_txn_wait_ms: ms_of(w.close_txn_wait),
            append_retry_max_ms: ms_of(w.append_retry_max),
            buffer_capacity_bytes: w.wab.capacity_bytes,
            buffer_keepalive_ms: ms_of(w.wab.keepalive),
            segment_max_bytes: w.segments.max_segment_bytes,
            segment_size_jitter: w.segments.size_jitter,
            segment_max_idle_ms: ms_of(w.segments.max_idle),
            segment_min_idle_seal_bytes: w.segments.min_idle_seal_bytes,
            segment_max_age_ms: ms_of(w.segments.max_age),
            node_growing_high_bytes: w.segments.node_growing_high,
            node_growing_low_bytes: w.segments.node_growing_low,
            segment_check_interval_ms: ms_of(w.segments.check_interval),
            checkpoint_interval_ms: ms_of(w.checkpoint_interval),
            checkpoint_dirty_messages: w.checkpoint_dirty_messages,
            replay_past_missing_checkpoint: w.replay_past_missing_checkpoint,
            producer_window: w.producers.window,
            producer_idle_expiry_ms: ms_of(w.producers.idle_expiry),
        }
    }
}

fn ms_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl WalSection {
    /// The WAL crate's configuration. Every field is named, so a setting the WAL gains
    /// does not compile until it is reachable from here.
    pub(crate) fn wal_config(&self) -> sluice_wal::WalConfig {
        let ms = Config::ms;
        sluice_wal::WalConfig {
            timetick_interval: ms(self.timetick_interval_ms),
            tso_batch: self.tso_batch,
            oracle_patience: ms(self.oracle_patience_ms),
            txn_default_keepalive: ms(self.txn_default_keepalive_ms),
            close_txn_wait: ms(self.close_txn_wait_ms),
            append_retry_max: ms(self.append_retry_max_ms),
            wab: sluice_wal::wab::WabConfig {
                capacity_bytes: self.buffer_capacity_bytes,
                keepalive: ms(self.buffer_keepalive_ms),
            },
            segments: sluice_wal::shard::SegmentConfig {
                max_segment_bytes: self.segment_max_bytes,
                size_jitter: self.segment_size_jitter,
                max_idle: ms(self.segment_max_idle_ms),
                min_idle_seal_bytes: self.segment_min_idle_seal_bytes,
                max_age: ms(self.segment_max_age_ms),
                node_growing_high: self.node_growing_high_bytes,
                node_growing_low: self.node_growing_low_bytes,
                check_interval: ms(self.segment_check_interval_ms),
            },
            checkpoint_interval: ms(self.checkpoint_interval_ms),
            checkpoint_dirty_messages: self.checkpoint_dirty_messages.max(1),
            replay_past_missing_checkpoint: self.replay_past_missing_checkpoint,
            producers: sluice_wal::producer::ProducerConfig {
                window: self.producer_window,
                idle_expiry: ms(self.producer_idle_expiry_ms),
            },
        }
    }
}

impl CoordSection {
    /// The balancer's configuration.
    pub(crate) fn balance_config(&self) -> sluice_coord::balancer::BalanceConfig {
        sluice_coord::balancer::BalanceConfig {
            allow_rebalance: self.balance_allow_rebalance,
            max_steps: self.balance_max_steps,
            tolerance: self.balance_tolerance,
            min_rebalance_interval: Config::ms(self.balance_min_rebalance_interval_ms),
        }
    }
}

/// S3 credentials of `section`: its own settings, else `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` from the environment. There is no built-in default: none at all is
/// an error naming both ways.
/// The librdkafka settings for TLS and SASL, checked: a mechanism, user name and password go
/// together, and only with a `sasl_*` protocol.
fn kafka_client_settings(log: &LogSection) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let protocol = log
        .kafka_security_protocol
        .as_deref()
        .unwrap_or("plaintext");
    let sasl = match protocol {
        "plaintext" | "ssl" => false,
        "sasl_plaintext" | "sasl_ssl" => true,
        other => bail!(
            "log.kafka_security_protocol must be plaintext, ssl, sasl_plaintext or sasl_ssl, \
             not {other:?}"
        ),
    };
    out.push(("security.protocol".to_owned(), protocol.to_owned()));
    let password = log.kafka_sasl_password.expose();
    let given = log.kafka_sasl_mechanism.is_some()
        || !log.kafka_sasl_username.is_empty()
        || !password.is_empty();
    if sasl {
        let mechanism = log.kafka_sasl_mechanism.as_deref().unwrap_or("PLAIN");
        if !matches!(mechanism, "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
            bail!(
                "log.kafka_sasl_mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not \
                 {mechanism:?}"
            );
        }
        if log.kafka_sasl_username.is_empty() || password.is_empty() {
            bail!(
                "log.kafka_security_protocol = {protocol:?} needs log.kafka_sasl_username and \
                 log.kafka_sasl_password (e.g. SLUICE_LOG__KAFKA_SASL_PASSWORD)"
            );
        }
        out.push(("sasl.mechanism".to_owned(), mechanism.to_owned()));
        out.push(("sasl.username".to_owned(), log.kafka_sasl_username.clone()));
        out.push(("sasl.password".to_owned(), password.to_owned()));
    } else if given {
        bail!(
            "log.kafka_sasl_* settings need log.kafka_security_protocol = \"sasl_plaintext\" or \
             \"sasl_ssl\""
        );
    }
    if let Some(ca) = &log.kafka_ssl_ca_location {
        if !protocol.ends_with("ssl") {
            bail!("log.kafka_ssl_ca_location needs log.kafka_security_protocol ssl or sasl_ssl");
        }
        let ca = ca
            .to_str()
            .context("log.kafka_ssl_ca_location must be a UTF-8 path")?;
        out.push(("ssl.ca.location".to_owned(), ca.to_owned()));
    }
    Ok(out)
}

fn s3_credentials(section: &str, id: &str, secret: &Secret) -> anyhow::Result<(String, String)> {
    if !id.is_empty() || !secret.expose().is_empty() {
        if id.is_empty() || secret.expose().is_empty() {
            bail!("{section}.s3_access_key_id and {section}.s3_secret_access_key go together");
        }
        return Ok((id.to_owned(), secret.expose().to_owned()));
    }
    match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(id), Ok(secret)) if !id.is_empty() && !secret.is_empty() => Ok((id, secret)),
        _ => bail!(
            "S3 needs credentials: set {section}.s3_access_key_id and \
             {section}.s3_secret_access_key (e.g. SLUICE_{up}__S3_ACCESS_KEY_ID and \
             SLUICE_{up}__S3_SECRET_ACCESS_KEY), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            up = section.to_ascii_uppercase()
        ),
    }
}

/// The contents of the PEM file `path`, set by `key` (named in the error).
fn read_pem(key: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: reading {}", path.display()))
}

/// The top-level keys, for telling configuration variables from other `SLUICE_*` ones.
const TOP_LEVEL_KEYS: [&str; 17] = [
    "data_dir",
    "listen",
    "advertise",
    "meta",
    "log",
    "pchannels",
    "node",
    "coord",
    "wal",
    "storage",
    "query",
    "metrics_listen",
    "otlp_endpoint",
    "milvus_listen",
    "milvus_authorization",
    "tls",
    "auth",
];

impl Config {
    /// Defaults ← `file` ← `SLUICE_*` environment ← `overrides` (flags, as a partial tree).
    pub(crate) fn load(
        file: Option<&std::path::Path>,
        overrides: Figment,
    ) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let figment = figment
            .merge(
                Env::prefixed("SLUICE_")
                    .split("__")
                    // Only keys of this tree: other `SLUICE_*` variables (test settings, say)
                    // are not configuration.
                    .filter(|key| {
                        let top = key.as_str().split('.').next().unwrap_or_default();
                        TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
                    }),
            )
            .merge(overrides);
        let config: Config = figment.extract().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let ratio = self.storage.compaction_min_removed_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            bail!("storage.compaction_min_removed_ratio is {ratio}: a share from 0 to 1");
        }
        let s = &self.storage;
        if s.gc_interval_ms > 0 && s.gc_grace_ms < s.compaction_sweep_after_ms {
            bail!(
                "storage.gc_grace_ms ({}) is shorter than storage.compaction_sweep_after_ms ({}): \
                 garbage collection would delete replaced files readers may still read",
                s.gc_grace_ms,
                s.compaction_sweep_after_ms
            );
        }
        match self.meta.backend {
            MetaBackend::Embedded => {}
            MetaBackend::Etcd if cfg!(not(feature = "etcd")) => bail!(
                "meta.backend = \"etcd\" needs a sluice binary built with the etcd feature \
                 (cargo build --release -p sluice --features etcd; it needs protoc)"
            ),
            MetaBackend::Etcd if self.meta.endpoints.is_empty() => {
                bail!("meta.backend = \"etcd\" needs meta.endpoints")
            }
            MetaBackend::Etcd => {}
        }
        match self.log.backend {
            LogBackend::Local | LogBackend::Object => {}
            LogBackend::Kafka if cfg!(not(feature = "kafka")) => {
                bail!("log.backend = \"kafka\" needs a sluice binary built with the kafka feature")
            }
            LogBackend::Kafka
                if self
                    .log
                    .kafka_bootstrap
                    .as_deref()
                    .is_none_or(str::is_empty) =>
            {
                bail!("log.backend = \"kafka\" needs log.kafka_bootstrap")
            }
            LogBackend::Kafka => {
                kafka_client_settings(&self.log)?;
            }
        }
        if cfg!(not(feature = "otlp"))
            && self.otlp_endpoint.as_deref().is_some_and(|e| !e.is_empty())
        {
            bail!(
                "otlp_endpoint needs a sluice binary built with the otlp feature \
                 (cargo build --release -p sluice --features otlp)"
            );
        }
        if self.pchannels.names.is_empty() && self.pchannels.count == 0 {
            bail!("pchannels.count must be at least 1 (or list pchannels.names)");
        }
        for (key, ms) in [
            ("node.lease_ttl_ms", self.node.lease_ttl_ms),
            ("coord.election_ttl_ms", self.coord.election_ttl_ms),
            ("coord.trigger_interval_ms", self.coord.trigger_interval_ms),
            ("coord.call_timeout_ms", self.coord.call_timeout_ms),
            ("coord.assign_timeout_ms", self.coord.assign_timeout_ms),
            ("wal.timetick_interval_ms", self.wal.timetick_interval_ms),
            (
                "wal.txn_default_keepalive_ms",
                self.wal.txn_default_keepalive_ms,
            ),
            ("wal.append_retry_max_ms", self.wal.append_retry_max_ms),
            ("wal.buffer_keepalive_ms", self.wal.buffer_keepalive_ms),
            (
                "wal.segment_check_interval_ms",
                self.wal.segment_check_interval_ms,
            ),
            (
                "wal.checkpoint_interval_ms",
                self.wal.checkpoint_interval_ms,
            ),
            ("wal.segment_max_age_ms", self.wal.segment_max_age_ms),
            (
                "storage.truncate_interval_ms",
                self.storage.truncate_interval_ms,
            ),
            (
                "storage.checkpoint_interval_ms",
                self.storage.checkpoint_interval_ms,
            ),
        ] {
            if ms == 0 {
                bail!("{key} must be positive");
            }
        }
        if self.node.lease_ttl_ms < 1000 {
            bail!("node.lease_ttl_ms must be at least 1000 (leases are kept in whole seconds)");
        }
        let w = &self.wal;
        if w.tso_batch == 0 || w.buffer_capacity_bytes == 0 || w.segment_max_bytes == 0 {
            bail!(
                "wal.tso_batch, wal.buffer_capacity_bytes and wal.segment_max_bytes must be positive"
            );
        }
        if (w.producer_window as u64) < sluice_types::PRODUCER_WINDOW {
            bail!(
                "wal.producer_window must be at least {} (clients keep that many numbered appends \
                 in flight per producer), not {}",
                sluice_types::PRODUCER_WINDOW,
                w.producer_window
            );
        }
        if !(0.0..1.0).contains(&w.segment_size_jitter) {
            bail!(
                "wal.segment_size_jitter must be in [0, 1), not {}",
                w.segment_size_jitter
            );
        }
        if w.node_growing_low_bytes > w.node_growing_high_bytes {
            bail!("wal.node_growing_low_bytes must not exceed wal.node_growing_high_bytes");
        }
        if self.coord.balance_tolerance.is_nan() || self.coord.balance_tolerance < 0.0 {
            bail!("coord.balance_tolerance must be a number ≥ 0");
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            bail!("tls.cert and tls.key go together");
        }
        if t.client_cert.is_some() != t.client_key.is_some() {
            bail!("tls.client_cert and tls.client_key go together");
        }
        if t.client_auth && (t.cert.is_none() || t.ca.is_none()) {
            bail!(
                "tls.client_auth needs tls.cert and tls.key (the server's) and tls.ca (which \
                 signs the clients' certificates)"
            );
        }
        if t.client_cert.is_some() && t.ca.is_none() {
            bail!("tls.client_cert is presented over TLS: set tls.ca too");
        }
        Ok(())
    }

    /// How this process serves: TLS from `tls.cert`/`tls.key` (client certificates signed by
    /// `tls.ca` required with `tls.client_auth`), the token from `auth.token`. Reads the files.
    pub(crate) fn server_security(&self) -> anyhow::Result<sluice_proto::security::ServerSecurity> {
        let t = &self.tls;
        let identity = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => {
                Some((read_pem("tls.cert", cert)?, read_pem("tls.key", key)?))
            }
            _ => None,
        };
        let client_ca = match (&t.ca, t.client_auth) {
            (Some(ca), true) => Some(read_pem("tls.ca", ca)?),
            _ => None,
        };
        Ok(sluice_proto::security::ServerSecurity {
            identity,
            client_ca,
            token: self.auth.token.as_ref().map(|t| t.expose().to_owned()),
        })
    }

    /// How this process connects to other Sluice processes: TLS verified against `tls.ca`,
    /// presenting `tls.client_cert`/`tls.client_key`, and sending `auth.token`.
    pub(crate) fn channel_security(&self) -> anyhow::Result<sluice_proto::Security> {
        let t = &self.tls;
        let mut security = sluice_proto::Security::none();
        if let Some(ca) = &t.ca {
            let identity = match (&t.client_cert, &t.client_key) {
                (Some(cert), Some(key)) => Some((
                    read_pem("tls.client_cert", cert)?,
                    read_pem("tls.client_key", key)?,
                )),
                _ => None,
            };
            security = security
                .with_tls(
                    &read_pem("tls.ca", ca)?,
                    identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                    t.server_name.as_deref(),
                )
                .context("tls")?;
        }
        if let Some(token) = &self.auth.token {
            security = security.with_token(token.expose()).context("auth.token")?;
        }
        Ok(security)
    }

    /// The metadata store this configuration names.
    pub(crate) fn meta_backend(&self) -> MetaBackendConfig {
        match self.meta.backend {
            MetaBackend::Embedded => MetaBackendConfig::Embedded {
                path: self.data_dir.join("meta.redb"),
            },
            MetaBackend::Etcd => MetaBackendConfig::Etcd {
                endpoints: self.meta.endpoints.clone(),
            },
        }
    }

    /// The log backend this configuration names, as the log crate's configuration.
    pub(crate) fn log_backend(&self) -> anyhow::Result<LogBackendConfig> {
        use sluice_log::object::{ObjectConfig, ObjectStoreConfig, S3Config};
        let log = &self.log;
        Ok(match log.backend {
            LogBackend::Local => LogBackendConfig::Local(sluice_log::local::LocalConfig {
                segment_size: log.local_segment_bytes,
                ..sluice_log::local::LocalConfig::new(self.log_dir())
            }),
            LogBackend::Object => {
                let store = match log.s3_endpoint.as_deref().filter(|e| !e.is_empty()) {
                    Some(endpoint) => {
                        let (access_key_id, secret_access_key) = s3_credentials(
                            "log",
                            &log.s3_access_key_id,
                            &log.s3_secret_access_key,
                        )?;
                        ObjectStoreConfig::S3(S3Config {
                            endpoint: Some(endpoint.to_owned()),
                            bucket: log.s3_bucket.clone(),
                            region: log.s3_region.clone(),
                            access_key_id,
                            secret_access_key,
                            allow_http: endpoint.starts_with("http://"),
                        })
                    }
                    None => ObjectStoreConfig::LocalDir(self.log_dir()),
                };
                LogBackendConfig::Object(ObjectConfig {
                    prefix: log.prefix.clone(),
                    ..ObjectConfig::new(store)
                })
            }
            #[cfg(feature = "kafka")]
            LogBackend::Kafka => {
                // `validate` checked that it is set.
                let bootstrap = log.kafka_bootstrap.clone().unwrap_or_default();
                LogBackendConfig::Kafka(sluice_log::kafka::KafkaConfig {
                    prefix: log.kafka_prefix.clone(),
                    read_committed: log.kafka_read_committed,
                    client_settings: kafka_client_settings(log)?,
                    ..sluice_log::kafka::KafkaConfig::new(bootstrap)
                })
            }
            #[cfg(not(feature = "kafka"))]
            LogBackend::Kafka => {
                bail!("log.backend = \"kafka\" needs a sluice binary built with the kafka feature")
            }
        })
    }

    /// The storage root as an object store (`None` when storage is off).
    pub(crate) fn storage_store(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<dyn object_store::ObjectStore>>> {
        use sluice_log::object::{ObjectStoreConfig, S3Config};
        let st = &self.storage;
        if !st.enabled {
            return Ok(None);
        }
        let config = match st.s3_endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(endpoint) => {
                let (access_key_id, secret_access_key) =
                    s3_credentials("storage", &st.s3_access_key_id, &st.s3_secret_access_key)?;
                ObjectStoreConfig::S3(S3Config {
                    endpoint: Some(endpoint.to_owned()),
                    bucket: st.s3_bucket.clone(),
                    region: st.s3_region.clone(),
                    access_key_id,
                    secret_access_key,
                    allow_http: endpoint.starts_with("http://"),
                })
            }
            None => {
                let dir = st
                    .dir
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("storage"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                ObjectStoreConfig::LocalDir(dir)
            }
        };
        let store = sluice_log::object::build_store(&config).context("opening the storage")?;
        let prefix = st.prefix.trim_matches('/');
        Ok(Some(if prefix.is_empty() {
            store
        } else {
            std::sync::Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        }))
    }

    /// The log directory.
    pub(crate) fn log_dir(&self) -> PathBuf {
        self.log
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("wal"))
    }

    /// A duration from a millisecond setting.
    pub(crate) fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
// figment's `Jail` closures return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn every_section_can_be_set_from_the_environment() {
        // The environment filter names every top-level key of the configuration.
        let tree = figment::Figment::from(Serialized::defaults(Config::default()));
        let dict = tree
            .find_value("")
            .ok()
            .and_then(|v| v.into_dict())
            .unwrap_or_default();
        let mut keys: Vec<&str> = dict.keys().map(String::as_str).collect();
        let mut known: Vec<&str> = TOP_LEVEL_KEYS.to_vec();
        keys.sort_unstable();
        known.sort_unstable();
        assert_eq!(keys, known);
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_STORAGE__S3_ENDPOINT", "http://127.0.0.1:9");
            jail.set_env("SLUICE_STORAGE__RETENTION_MS", "5");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.storage.s3_endpoint.as_deref(), Some("http://127.0.0.1:9"));
            assert_eq!(c.storage.retention_ms, 5);
            Ok(())
        });
    }

    #[test]
    fn wal_and_balancer_settings_reach_their_crates() {
        figment::Jail::expect_with(|jail| {
            // Defaults are the crates' own.
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            let w = c.wal.wal_config();
            let d = sluice_wal::WalConfig::default();
            assert_eq!(
                (w.timetick_interval, w.tso_batch, w.wab.capacity_bytes),
                (d.timetick_interval, d.tso_batch, d.wab.capacity_bytes)
            );
            assert_eq!(w.segments.max_segment_bytes, d.segments.max_segment_bytes);
            jail.create_file(
                "w.toml",
                "[wal]\nsegment_max_bytes = 1048576\nbuffer_capacity_bytes = 4096\n\
                 [coord]\nbalance_max_steps = 7\n",
            )?;
            jail.set_env("SLUICE_WAL__TXN_DEFAULT_KEEPALIVE_MS", "1500");
            let c = Config::load(Some(std::path::Path::new("w.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            let w = c.wal.wal_config();
            assert_eq!(w.segments.max_segment_bytes, 1 << 20);
            assert_eq!(w.wab.capacity_bytes, 4096);
            assert_eq!(w.txn_default_keepalive, Duration::from_millis(1500));
            assert_eq!(c.coord.balance_config().max_steps, 7);
            jail.create_file("j.toml", "[wal]\nsegment_size_jitter = 1.5\n")?;
            let e = Config::load(Some(std::path::Path::new("j.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("segment_size_jitter"), "{e:#}");
            Ok(())
        });
    }

    #[test]
    fn backends_map_onto_their_crates_configs() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_LOG__BACKEND", "object");
            jail.set_env("SLUICE_LOG__S3_ENDPOINT", "http://127.0.0.1:9");
            jail.set_env("SLUICE_LOG__S3_ACCESS_KEY_ID", "id");
            jail.set_env("SLUICE_LOG__S3_SECRET_ACCESS_KEY", "secret");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert!(matches!(
                c.log_backend().map_err(|e| e.to_string())?,
                LogBackendConfig::Object(_)
            ));
            assert_eq!(
                c.meta_backend(),
                MetaBackendConfig::Embedded {
                    path: c.data_dir.join("meta.redb")
                }
            );
            Ok(())
        });
    }

    #[test]
    fn s3_credentials_come_from_the_configuration_or_the_environment_only() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_LOG__BACKEND", "object");
            jail.set_env("SLUICE_LOG__S3_ENDPOINT", "http://127.0.0.1:9");
            jail.set_env("SLUICE_STORAGE__S3_ENDPOINT", "http://127.0.0.1:9");
            // `Jail` restores the environment afterwards; these may be set outside.
            jail.set_env("AWS_ACCESS_KEY_ID", "");
            jail.set_env("AWS_SECRET_ACCESS_KEY", "");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            let e = c.log_backend().unwrap_err().to_string();
            assert!(e.contains("log.s3_access_key_id"), "{e}");
            let e = c.storage_store().unwrap_err().to_string();
            assert!(e.contains("storage.s3_access_key_id"), "{e}");
            // The log's S3 keys and the Debug output of its settings, as loaded now.
            let log_keys = || -> Result<((String, String), String), String> {
                let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
                let LogBackendConfig::Object(o) = c.log_backend().map_err(|e| e.to_string())?
                else {
                    panic!("object");
                };
                let sluice_log::object::ObjectStoreConfig::S3(s3) = &o.store else {
                    panic!("s3");
                };
                let keys = (s3.access_key_id.clone(), s3.secret_access_key.clone());
                Ok((keys, format!("{o:?} {c:?}")))
            };
            jail.set_env("AWS_ACCESS_KEY_ID", "env-id");
            jail.set_env("AWS_SECRET_ACCESS_KEY", "env-secret");
            let (keys, debug) = log_keys()?;
            assert_eq!(keys, ("env-id".into(), "env-secret".into()));
            assert!(!debug.contains("env-secret"));
            jail.set_env("SLUICE_LOG__S3_ACCESS_KEY_ID", "cfg-id");
            jail.set_env("SLUICE_LOG__S3_SECRET_ACCESS_KEY", "cfg-secret");
            let (keys, debug) = log_keys()?;
            assert_eq!(keys, ("cfg-id".into(), "cfg-secret".into()));
            assert!(!debug.contains("cfg-secret"), "Debug hides the secret");
            Ok(())
        });
    }

    #[test]
    fn tls_and_token_settings_load_and_stay_out_of_debug_output() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nca = \"ca.pem\"\nclient_auth = true\n",
            )?;
            jail.set_env("SLUICE_AUTH__TOKEN", "t0ken-from-env");
            let c = Config::load(Some(std::path::Path::new("t.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            assert!(c.tls.client_auth);
            assert_eq!(c.tls.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
            assert_eq!(
                c.auth.token.as_ref().map(Secret::expose),
                Some("t0ken-from-env")
            );
            let shown = format!("{c:?}");
            assert!(!shown.contains("t0ken"), "{shown}");
            // The files are read when the process starts: a missing one is named.
            let e = format!("{:#}", c.server_security().unwrap_err());
            assert!(e.contains("tls.cert") && e.contains("s.pem"), "{e}");
            // A numeric token from the environment is still a token.
            jail.set_env("SLUICE_AUTH__TOKEN", "12345");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.auth.token.as_ref().map(Secret::expose), Some("12345"));
            // Half a pair, or mTLS without a CA, is an error at start.
            jail.create_file("half.toml", "[tls]\ncert = \"s.pem\"\n")?;
            let e =
                Config::load(Some(std::path::Path::new("half.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("tls.key"), "{e:#}");
            jail.create_file(
                "noca.toml",
                "[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_auth = true\n",
            )?;
            let e =
                Config::load(Some(std::path::Path::new("noca.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("tls.ca"), "{e:#}");
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "sluice.toml",
                "listen = \"127.0.0.1:9000\"\n[pchannels]\ncount = 8\n",
            )?;
            jail.set_env("SLUICE_PCHANNELS__COUNT", "2");
            jail.set_env("SLUICE_TEST_ETCD", "http://elsewhere:1");
            let flags = Figment::from(Serialized::default("listen", "127.0.0.1:9100"));
            let c = Config::load(Some(std::path::Path::new("sluice.toml")), flags)
                .map_err(|e| e.to_string())?;
            assert_eq!(c.listen, "127.0.0.1:9100", "flags win");
            assert_eq!(c.pchannels.count, 2, "env beats the file");
            assert_eq!(
                c.meta.backend,
                MetaBackend::Embedded,
                "defaults fill the rest"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[meta]\nbackend = \"zookeeper\"\n")?;
            let e =
                Config::load(Some(std::path::Path::new("bad.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("meta.backend"), "{e:#}");
            jail.create_file("typo.toml", "listn = \"x\"\n")?;
            let e =
                Config::load(Some(std::path::Path::new("typo.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("listn"), "{e:#}");
            let e = Config::load(Some(std::path::Path::new("missing.toml")), Figment::new())
                .unwrap_err();
            assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
            // Garbage collection must not delete what a compaction's sweep still waits on.
            jail.create_file("gc.toml", "[storage]\ngc_grace_ms = 1000\n")?;
            let e =
                Config::load(Some(std::path::Path::new("gc.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("storage.gc_grace_ms"), "{e:#}");
            jail.create_file(
                "gc.toml",
                "[storage]\ngc_grace_ms = 1000\ngc_interval_ms = 0\n",
            )?;
            Config::load(Some(std::path::Path::new("gc.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn kafka_backend_needs_its_bootstrap_servers() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("k.toml", "[log]\nbackend = \"kafka\"\n")?;
            let e = Config::load(Some(std::path::Path::new("k.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("log.kafka_bootstrap"), "{e:#}");
            jail.set_env("SLUICE_LOG__KAFKA_BOOTSTRAP", "127.0.0.1:9092");
            jail.set_env("SLUICE_LOG__KAFKA_READ_COMMITTED", "false");
            let c = Config::load(Some(std::path::Path::new("k.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.log.kafka_bootstrap.as_deref(), Some("127.0.0.1:9092"));
            assert!(!c.log.kafka_read_committed);
            assert_eq!(c.log.kafka_prefix, "sluice-", "the default prefix");
            // TLS and SASL: checked, passed on to librdkafka, the password never shown.
            jail.set_env("SLUICE_LOG__KAFKA_SECURITY_PROTOCOL", "sasl_ssl");
            let e = Config::load(Some(std::path::Path::new("k.toml")), Figment::new()).unwrap_err();
            assert!(
                format!("{e:#}").contains("log.kafka_sasl_password"),
                "{e:#}"
            );
            jail.set_env("SLUICE_LOG__KAFKA_SASL_MECHANISM", "SCRAM-SHA-512");
            jail.set_env("SLUICE_LOG__KAFKA_SASL_USERNAME", "sluice");
            jail.set_env("SLUICE_LOG__KAFKA_SASL_PASSWORD", "hunter2-kafka");
            jail.set_env("SLUICE_LOG__KAFKA_SSL_CA_LOCATION", "/etc/kafka/ca.pem");
            let c = Config::load(Some(std::path::Path::new("k.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            let settings = kafka_client_settings(&c.log).map_err(|e| e.to_string())?;
            for (k, v) in [
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "sluice"),
                ("sasl.password", "hunter2-kafka"),
                ("ssl.ca.location", "/etc/kafka/ca.pem"),
            ] {
                assert!(
                    settings.contains(&(k.to_owned(), v.to_owned())),
                    "{k}={v} missing"
                );
            }
            assert!(
                !format!("{c:?}").contains("hunter2"),
                "the password is never shown"
            );
            jail.set_env("SLUICE_LOG__KAFKA_SASL_MECHANISM", "GSSAPI");
            let e = Config::load(Some(std::path::Path::new("k.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("GSSAPI"), "{e:#}");
            jail.set_env("SLUICE_LOG__KAFKA_SASL_MECHANISM", "PLAIN");
            jail.set_env("SLUICE_LOG__KAFKA_SECURITY_PROTOCOL", "plaintext");
            let e = Config::load(Some(std::path::Path::new("k.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("sasl_plaintext"), "{e:#}");
            jail.set_env("SLUICE_LOG__KAFKA_SECURITY_PROTOCOL", "kerberos");
            let e = Config::load(Some(std::path::Path::new("k.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("kerberos"), "{e:#}");
            jail.create_file("p.toml", "[log]\nbackend = \"pulsar\"\n")?;
            let e = Config::load(Some(std::path::Path::new("p.toml")), Figment::new()).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains("pulsar") && e.contains("kafka"), "{e}");
            Ok(())
        });
    }
}
