//! The conformance suite against the `object` backend, on a local directory (always) and on the
//! S3-compatible server named by `SLUICE_TEST_S3` (skipped with a note when unset, failing when
//! unset in CI).

mod object_support;

mod local_dir {
    sluice_log::conformance_tests!(|| async { super::object_support::local_backend() });
}

/// Runs the listed suite tests on S3. The list mirrors `sluice_log::conformance_tests!`; the
/// macro cannot skip a test, and a test that has no server must skip (or fail in CI).
macro_rules! s3_suite {
    ($($name:ident,)*) => {
        mod s3 {
            $(
                #[test]
                fn $name() {
                    let Some(endpoint) = super::object_support::s3_endpoint() else {
                        return;
                    };
                    sluice_log::testkit::run(
                        || async move { super::object_support::s3_backend(&endpoint) },
                        sluice_log::testkit::$name,
                    );
                }
            )*
        }
    };
}

s3_suite!(
    multi_pchannel_isolation,
    term_loop_on_one_pchannel,
    fast_close_of_many_readers,
    latest_yields_only_new_records,
    read_only_rejects_writes,
    truncate_then_reopen,
    enqueued_records_keep_their_order,
    append_after_fence_is_rejected,
    lower_term_writer_racing_higher_term_open_loses_nothing,
    closed_handle_rejects_and_ends_readers,
);
