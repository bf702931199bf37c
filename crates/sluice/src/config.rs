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
pub struct Config {
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
}

/// The metadata store.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaSection {
    /// `embedded` (one file under the data dir, single process) or `etcd`.
    pub backend: String,
    /// etcd endpoints (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Key root, so several clusters can share one etcd.
    pub root: String,
}

/// The log backend.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `local` (segment files in `dir`; nodes of a cluster share the directory and fence each
    /// other through it), `object` (zero-disk: blocks in an object store — S3 when
    /// `s3_endpoint` is set, else the directory `dir`) or `kafka` (a topic per pchannel on the
    /// cluster at `kafka_bootstrap`; fencing by transactional producer epochs).
    pub backend: String,
    /// The log directory (default `{data_dir}/wal`).
    pub dir: Option<PathBuf>,
    /// `object` on S3: the endpoint (`http://host:port`; empty = a local directory).
    pub s3_endpoint: Option<String>,
    /// `object` on S3: the bucket (must exist).
    pub s3_bucket: String,
    /// `object` on S3: the region.
    pub s3_region: String,
    /// `object` on S3: the access key id.
    pub s3_access_key_id: String,
    /// `object` on S3: the secret access key.
    pub s3_secret_access_key: String,
    /// `object`: the key prefix under which every pchannel's blocks live.
    pub prefix: String,
    /// `kafka`: the bootstrap servers (`host:port[,host:port...]`).
    pub kafka_bootstrap: Option<String>,
    /// `kafka`: the prefix of every topic and transactional id.
    pub kafka_prefix: String,
    /// `kafka`: readers see only committed records. Turn off only on a broker whose last stable
    /// offset can get stuck (Tansu 0.6.0, see `docs/kafka.md`).
    pub kafka_read_committed: bool,
}

/// The pchannels.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PChannelsSection {
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
pub struct NodeSection {
    /// The node id (unique in the cluster).
    pub id: u64,
    /// Registration lease TTL in ms: the coordinator moves this node's pchannels this long after
    /// it dies.
    pub lease_ttl_ms: u64,
}

/// The coordinator.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordSection {
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
}

/// The WAL.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalSection {
    /// How often timeticks are synchronised (ms).
    pub timetick_interval_ms: u64,
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
        }
    }
}

impl Default for MetaSection {
    fn default() -> MetaSection {
        MetaSection {
            backend: "embedded".into(),
            endpoints: vec!["http://127.0.0.1:2379".into()],
            root: "sluice".into(),
        }
    }
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            backend: "local".into(),
            dir: None,
            s3_endpoint: None,
            s3_bucket: "sluice".into(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: "test".into(),
            s3_secret_access_key: "test".into(),
            prefix: "wal".into(),
            kafka_bootstrap: None,
            kafka_prefix: "sluice-".into(),
            kafka_read_committed: true,
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
        }
    }
}

impl Default for CoordSection {
    fn default() -> CoordSection {
        CoordSection {
            endpoint: "http://127.0.0.1:7730".into(),
            election_ttl_ms: 10_000,
            trigger_interval_ms: 60_000,
            call_timeout_ms: 5_000,
            assign_timeout_ms: 30_000,
        }
    }
}

impl Default for WalSection {
    fn default() -> WalSection {
        WalSection {
            timetick_interval_ms: 200,
        }
    }
}

/// The top-level keys, for telling configuration variables from other `SLUICE_*` ones.
const TOP_LEVEL_KEYS: [&str; 9] = [
    "data_dir",
    "listen",
    "advertise",
    "meta",
    "log",
    "pchannels",
    "node",
    "coord",
    "wal",
];

impl Config {
    /// Defaults ← `file` ← `SLUICE_*` environment ← `overrides` (flags, as a partial tree).
    pub fn load(file: Option<&std::path::Path>, overrides: Figment) -> anyhow::Result<Config> {
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
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.meta.backend.as_str() {
            "embedded" => {}
            "etcd" if cfg!(not(feature = "etcd")) => bail!(
                "meta.backend = \"etcd\" needs a sluice binary built with the etcd feature \
                 (cargo build --release -p sluice --features etcd; it needs protoc)"
            ),
            "etcd" if !self.meta.endpoints.is_empty() => {}
            "etcd" => bail!("meta.backend = \"etcd\" needs meta.endpoints"),
            other => bail!("meta.backend must be \"embedded\" or \"etcd\", not {other:?}"),
        }
        match self.log.backend.as_str() {
            "local" | "object" => {}
            "kafka" if cfg!(not(feature = "kafka")) => {
                bail!("log.backend = \"kafka\" needs a sluice binary built with the kafka feature")
            }
            "kafka"
                if self
                    .log
                    .kafka_bootstrap
                    .as_deref()
                    .is_none_or(str::is_empty) =>
            {
                bail!("log.backend = \"kafka\" needs log.kafka_bootstrap")
            }
            "kafka" => {}
            other => bail!("log.backend must be \"local\", \"object\" or \"kafka\", not {other:?}"),
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
        ] {
            if ms == 0 {
                bail!("{key} must be positive");
            }
        }
        if self.node.lease_ttl_ms < 1000 {
            bail!("node.lease_ttl_ms must be at least 1000 (leases are kept in whole seconds)");
        }
        Ok(())
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.log
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("wal"))
    }

    /// A duration from a millisecond setting.
    pub fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
// figment's `Jail` closures return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

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
            assert_eq!(c.meta.backend, "embedded", "defaults fill the rest");
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
            jail.create_file("p.toml", "[log]\nbackend = \"pulsar\"\n")?;
            let e = Config::load(Some(std::path::Path::new("p.toml")), Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("\"kafka\""), "{e:#}");
            Ok(())
        });
    }
}
