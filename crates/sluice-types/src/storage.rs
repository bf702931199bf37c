//! Where the recovery storage keeps what it commits: meta-store keys of segment and delete
//! manifests, and object paths of their files (the layout `proto/sluice/v1/storage.proto`
//! documents). The flusher writes them; the coordinator lists them; anyone can read them.

fn trim(root: &str) -> &str {
    root.trim_end_matches('/')
}

/// The prefix of every segment manifest under the meta root `root`.
pub fn segment_manifests_prefix(root: &str) -> String {
    format!("{}/segments/", trim(root))
}

/// The prefix of `collection`'s segment manifests.
pub fn collection_segments_prefix(root: &str, collection: i64) -> String {
    format!("{}{collection}/", segment_manifests_prefix(root))
}

/// The key of a segment's manifest.
pub fn segment_manifest_key(root: &str, collection: i64, segment: i64) -> String {
    format!("{}{segment}", collection_segments_prefix(root, collection))
}

/// The prefix of every delete manifest.
pub fn delete_manifests_prefix(root: &str) -> String {
    format!("{}/deletes/", trim(root))
}

/// The prefix of `collection`'s delete manifests.
pub fn collection_deletes_prefix(root: &str, collection: i64) -> String {
    format!("{}{collection}/", delete_manifests_prefix(root))
}

/// The key of the delete manifest of `vchannel` at the flush point `flush_ts`.
pub fn delete_manifest_key(root: &str, collection: i64, vchannel: &str, flush_ts: u64) -> String {
    format!(
        "{}{vchannel}/{flush_ts}",
        collection_deletes_prefix(root, collection)
    )
}

/// The object path (under the storage root) of a segment's data file.
pub fn segment_data_path(collection: i64, partition: i64, segment: i64) -> String {
    format!("segments/{collection}/{partition}/{segment}/data.parquet")
}

/// The object path (a directory) holding every file of a segment.
pub fn segment_dir(collection: i64, partition: i64, segment: i64) -> String {
    format!("segments/{collection}/{partition}/{segment}")
}

/// The object path of a segment's data file after a compaction at `at`.
pub fn compacted_data_path(collection: i64, partition: i64, segment: i64, at: u64) -> String {
    format!(
        "{}/data.c{at}.parquet",
        segment_dir(collection, partition, segment)
    )
}

/// The object path of the ANN index of a segment's vector field `field`, next to its data file:
/// the index is built once (when the segment is first loaded) and loaded from there after.
/// `version` is the manifest's compaction timestamp (0: never compacted).
pub fn segment_index_path(
    collection: i64,
    partition: i64,
    segment: i64,
    field: &str,
    version: u64,
) -> String {
    let dir = segment_dir(collection, partition, segment);
    match version {
        0 => format!("{dir}/{field}.hnsw"),
        v => format!("{dir}/{field}.c{v}.hnsw"),
    }
}

/// Whether the file named `name` in a segment's directory belongs to the version whose data
/// file is `data` and compaction timestamp `version`: the data file itself or one of its
/// indexes.
pub fn belongs_to_version(name: &str, data: &str, version: u64) -> bool {
    if data.rsplit('/').next() == Some(name) {
        return true;
    }
    let Some(stem) = name.strip_suffix(".hnsw") else {
        return false;
    };
    match stem.rsplit_once(".c") {
        Some((_, v)) if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => {
            v.parse() == Ok(version)
        }
        _ => version == 0,
    }
}

/// The object path (a directory) of `vchannel`'s delete files.
pub fn delete_dir(collection: i64, vchannel: &str) -> String {
    format!("deletes/{collection}/{vchannel}")
}

/// The object path of the delete file of `vchannel` at the flush point `flush_ts`.
pub fn delete_file_path(collection: i64, vchannel: &str, flush_ts: u64) -> String {
    format!("{}/{flush_ts}.parquet", delete_dir(collection, vchannel))
}

/// The object path of `vchannel`'s delete files up to the flush point `flush_ts`, merged at
/// `at`.
pub fn merged_delete_file_path(collection: i64, vchannel: &str, flush_ts: u64, at: u64) -> String {
    format!(
        "{}/{flush_ts}.m{at}.parquet",
        delete_dir(collection, vchannel)
    )
}

/// The flush point a delete file's name (`{flush_ts}.parquet` or `{flush_ts}.m{at}.parquet`)
/// belongs to; `None` for any other name.
pub fn delete_file_flush_ts(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".parquet")?;
    let ts = match stem.split_once(".m") {
        Some((ts, at)) if !at.is_empty() && at.bytes().all(|b| b.is_ascii_digit()) => ts,
        Some(_) => return None,
        None => stem,
    };
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ts.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_paths_follow_the_documented_layout() {
        assert_eq!(segment_manifest_key("/r/", 7, 42), "/r/segments/7/42");
        assert!(segment_manifest_key("r", 7, 42).starts_with(&collection_segments_prefix("r", 7)));
        assert_eq!(
            delete_manifest_key("r", 7, "p_7v0", 9),
            "r/deletes/7/p_7v0/9"
        );
        assert_eq!(segment_data_path(7, 1, 42), "segments/7/1/42/data.parquet");
        assert_eq!(delete_file_path(7, "p_7v0", 9), "deletes/7/p_7v0/9.parquet");
        assert_eq!(
            merged_delete_file_path(7, "p_7v0", 9, 12),
            "deletes/7/p_7v0/9.m12.parquet"
        );
        assert_eq!(delete_file_flush_ts("9.parquet"), Some(9));
        assert_eq!(delete_file_flush_ts("9.m12.parquet"), Some(9));
        for other in [
            "9.m.parquet",
            "x9.parquet",
            ".parquet",
            "9.mx.parquet",
            "9.hnsw",
            "9",
        ] {
            assert_eq!(delete_file_flush_ts(other), None, "{other}");
        }
        assert_eq!(
            segment_index_path(7, 1, 42, "v", 0),
            "segments/7/1/42/v.hnsw"
        );
        assert_eq!(
            segment_index_path(7, 1, 42, "v", 5),
            "segments/7/1/42/v.c5.hnsw"
        );
        let compacted = compacted_data_path(7, 1, 42, 5);
        assert_eq!(compacted, "segments/7/1/42/data.c5.parquet");
        assert!(belongs_to_version("data.c5.parquet", &compacted, 5));
        assert!(belongs_to_version("v.c5.hnsw", &compacted, 5));
        assert!(!belongs_to_version("v.hnsw", &compacted, 5));
        assert!(!belongs_to_version("data.parquet", &compacted, 5));
        assert!(!belongs_to_version("v.c4.hnsw", &compacted, 5));
        let flushed = segment_data_path(7, 1, 42);
        assert!(belongs_to_version("data.parquet", &flushed, 0));
        assert!(belongs_to_version("v.hnsw", &flushed, 0));
        // A field named like a version suffix is still that field's unversioned index.
        assert!(belongs_to_version("my.cat.hnsw", &flushed, 0));
        assert!(!belongs_to_version("v.c5.hnsw", &flushed, 0));
    }
}
