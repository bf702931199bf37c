//! The conformance suite against the `kafka` backend, on the Kafka-protocol broker named by
//! `SLUICE_TEST_KAFKA` (skipped with a note when unset, failing when unset in CI).

mod kafka_support;

/// Runs the listed suite tests on the broker. The list mirrors `sluice_log::conformance_tests!`;
/// the macro cannot skip a test, and a test that has no broker must skip (or fail in CI).
macro_rules! kafka_suite {
    ($($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                let Some(broker) = kafka_support::kafka_broker() else {
                    return;
                };
                sluice_log::testkit::run(
                    || async move { kafka_support::backend(&broker) },
                    sluice_log::testkit::$name,
                );
            }
        )*
    };
}

kafka_suite!(
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
