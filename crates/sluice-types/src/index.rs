//! A collection's ANN index settings, kept in its catalog properties (`CollectionInfo.properties`
//! in `proto/sluice/v1/coord.proto`): the metric and HNSW parameters the graphs of its sealed
//! segments are built with. What a collection does not set comes from the node's configuration
//! (`query.index_metric`, `query.hnsw_m`, `query.hnsw_ef_construction`).
//!
//! The coordinator refuses properties these keys cannot be read from, so a node reading them
//! from the catalog only meets values that were valid when written.

use std::collections::HashMap;

/// The metric the graphs are built for: `L2`, `IP` or `COSINE` (any case).
pub const PROP_METRIC: &str = "index.metric";
/// HNSW links per node (`M`), 2 to [`MAX_M`].
pub const PROP_HNSW_M: &str = "index.hnsw.m";
/// HNSW candidate list while building (`efConstruction`), 1 to [`MAX_EF_CONSTRUCTION`].
pub const PROP_HNSW_EF_CONSTRUCTION: &str = "index.hnsw.ef_construction";

/// Largest `M` (Milvus's limit too).
pub const MAX_M: usize = 2048;
/// Largest `efConstruction`.
pub const MAX_EF_CONSTRUCTION: usize = 65_536;

/// How vectors are compared by an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMetric {
    /// Squared Euclidean distance.
    L2,
    /// Inner product.
    Ip,
    /// Cosine similarity.
    Cosine,
}

impl IndexMetric {
    /// Its name as a property value.
    pub fn name(self) -> &'static str {
        match self {
            IndexMetric::L2 => "L2",
            IndexMetric::Ip => "IP",
            IndexMetric::Cosine => "COSINE",
        }
    }
}

impl std::str::FromStr for IndexMetric {
    type Err = String;

    fn from_str(s: &str) -> Result<IndexMetric, String> {
        match s.to_ascii_uppercase().as_str() {
            "L2" => Ok(IndexMetric::L2),
            "IP" => Ok(IndexMetric::Ip),
            "COSINE" => Ok(IndexMetric::Cosine),
            _ => Err(format!("metric {s:?}: L2, IP or COSINE")),
        }
    }
}

/// What a collection sets; `None`: the node's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexSettings {
    /// [`PROP_METRIC`].
    pub metric: Option<IndexMetric>,
    /// [`PROP_HNSW_M`].
    pub m: Option<usize>,
    /// [`PROP_HNSW_EF_CONSTRUCTION`].
    pub ef_construction: Option<usize>,
}

fn number(
    props: &HashMap<String, String>,
    key: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<Option<usize>, String> {
    let Some(v) = props.get(key) else {
        return Ok(None);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(format!(
            "collection property {key:?} is {v:?}: a whole number from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

impl IndexSettings {
    /// The settings in `props`; a key present with a bad value is an error.
    pub fn from_properties(props: &HashMap<String, String>) -> Result<IndexSettings, String> {
        let metric = props
            .get(PROP_METRIC)
            .map(|v| {
                v.parse()
                    .map_err(|e| format!("collection property {PROP_METRIC:?}: {e}"))
            })
            .transpose()?;
        Ok(IndexSettings {
            metric,
            m: number(props, PROP_HNSW_M, 2..=MAX_M)?,
            ef_construction: number(props, PROP_HNSW_EF_CONSTRUCTION, 1..=MAX_EF_CONSTRUCTION)?,
        })
    }

    /// These settings as properties (the keys of those not set are absent).
    pub fn to_properties(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        if let Some(m) = self.metric {
            out.insert(PROP_METRIC.to_owned(), m.name().to_owned());
        }
        if let Some(m) = self.m {
            out.insert(PROP_HNSW_M.to_owned(), m.to_string());
        }
        if let Some(ef) = self.ef_construction {
            out.insert(PROP_HNSW_EF_CONSTRUCTION.to_owned(), ef.to_string());
        }
        out
    }

    /// Every key these settings may be kept under.
    pub const KEYS: [&'static str; 3] = [PROP_METRIC, PROP_HNSW_M, PROP_HNSW_EF_CONSTRUCTION];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn settings_are_read_from_properties_and_written_back_the_same() {
        let none = IndexSettings::from_properties(&props(&[("other", "x")])).unwrap();
        assert_eq!(none, IndexSettings::default());
        let p = props(&[
            (PROP_METRIC, "cosine"),
            (PROP_HNSW_M, "32"),
            (PROP_HNSW_EF_CONSTRUCTION, "200"),
        ]);
        let s = IndexSettings::from_properties(&p).unwrap();
        assert_eq!(
            s,
            IndexSettings {
                metric: Some(IndexMetric::Cosine),
                m: Some(32),
                ef_construction: Some(200),
            }
        );
        assert_eq!(
            IndexSettings::from_properties(&s.to_properties()).unwrap(),
            s
        );
        assert_eq!(s.to_properties()[PROP_METRIC], "COSINE");
    }

    #[test]
    fn a_bad_value_names_its_key_and_the_allowed_values() {
        for (k, v) in [
            (PROP_METRIC, "HAMMING"),
            (PROP_HNSW_M, "1"),
            (PROP_HNSW_M, "4096"),
            (PROP_HNSW_M, "sixteen"),
            (PROP_HNSW_EF_CONSTRUCTION, "0"),
            (PROP_HNSW_EF_CONSTRUCTION, "-5"),
            (PROP_HNSW_EF_CONSTRUCTION, "1000000"),
        ] {
            let e = IndexSettings::from_properties(&props(&[(k, v)])).unwrap_err();
            assert!(e.contains(k), "{e}");
        }
        assert_eq!(
            IndexSettings::from_properties(&props(&[(PROP_HNSW_M, "2048")]))
                .unwrap()
                .m,
            Some(2048)
        );
    }
}
