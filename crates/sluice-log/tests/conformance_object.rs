//! The conformance suite against the `object` backend, on a local directory (always) and on the
//! S3-compatible server named by `SLUICE_TEST_S3` (skipped with a note when unset, failing when
//! unset in CI).

mod object_support;

mod local_dir {
    sluice_log::conformance_tests!(|| async { super::object_support::local_backend() });
}

mod s3 {
    use super::object_support::{s3_backend, s3_endpoint};
    sluice_log::conformance_tests!(
        when s3_endpoint() => |endpoint: String| async move { s3_backend(&endpoint) }
    );
}
