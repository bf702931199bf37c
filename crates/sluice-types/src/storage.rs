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

/// The object path of the ANN index of a segment's vector field `field`, next to its data file:
/// the index is built once (when the segment is first loaded) and loaded from there after.
pub fn segment_index_path(collection: i64, partition: i64, segment: i64, field: &str) -> String {
    format!("segments/{collection}/{partition}/{segment}/{field}.hnsw")
}

/// The object path of the delete file of `vchannel` at the flush point `flush_ts`.
pub fn delete_file_path(collection: i64, vchannel: &str, flush_ts: u64) -> String {
    format!("deletes/{collection}/{vchannel}/{flush_ts}.parquet")
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
    }
}
