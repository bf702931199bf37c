use super::*;

fn key(k: &str, shared: bool) -> ResourceKey {
    ResourceKey {
        domain: 1,
        key: k.into(),
        shared,
    }
}

#[tokio::test]
async fn readers_share_writers_exclude_and_waiters_go_in_order() {
    let table = Arc::new(LockTable::default());
    let r1 = table.acquire(&[key("a", true)], false).await.unwrap();
    let r2 = table.acquire(&[key("a", true)], false).await.unwrap();
    assert!(matches!(
        table.acquire(&[key("a", false)], false).await,
        Err(CoordError::ResourceAcquired(_))
    ));
    // A writer queues; a later reader queues behind it instead of starving it.
    let t = table.clone();
    let writer = tokio::spawn(async move { t.acquire(&[key("a", false)], true).await });
    while table.state.lock().queue.is_empty() {
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        table.acquire(&[key("a", true)], false).await,
        Err(CoordError::ResourceAcquired(_))
    ));
    // Another key is independent.
    let other = table.acquire(&[key("b", false)], false).await.unwrap();
    drop((r1, r2));
    let w = writer.await.unwrap().unwrap();
    assert!(table.state.lock().queue.is_empty());
    drop((w, other));
    assert!(table.state.lock().held.is_empty());
}

#[tokio::test]
async fn a_waiter_that_gives_up_leaves_the_queue() {
    let table = Arc::new(LockTable::default());
    let held = table.acquire(&[key("a", false)], false).await.unwrap();
    let t = table.clone();
    let waiter = tokio::spawn(async move { t.acquire(&[key("a", false)], true).await });
    while table.state.lock().queue.is_empty() {
        tokio::task::yield_now().await;
    }
    waiter.abort();
    assert!(waiter.await.is_err_and(|e| e.is_cancelled()));
    assert!(table.state.lock().queue.is_empty());
    drop(held);
    assert!(table.state.lock().held.is_empty());
    assert!(table.acquire(&[key("a", false)], false).await.is_ok());
}

#[test]
fn merge_takes_flags_from_both_sides() {
    let v = |name: &str, sent, acked| VChannelProto {
        name: name.into(),
        sent,
        acked,
        outcome: sent.then_some(OutcomeProto {
            id_hi: 0,
            id_lo: 1,
            timestamp: 2,
        }),
    };
    let base = TaskProto {
        version: TASK_FORMAT_VERSION,
        id: 7,
        message: vec![],
        vchannels: vec![v("a_1v0", true, false), v("b_1v0", false, false)],
        state: StateProto::Pending as i32,
        resource_keys: vec![],
    };
    let mut theirs = base.clone();
    theirs.vchannels = vec![v("a_1v0", false, true), v("b_1v0", true, false)];
    theirs.state = StateProto::WaitAck as i32;
    let merged = merge(&base, &theirs).unwrap();
    assert_eq!(
        merged.vchannels,
        vec![v("a_1v0", true, true), v("b_1v0", true, false)]
    );
    assert_eq!(merged.state(), StateProto::WaitAck);
    theirs.id = 8;
    assert!(merge(&base, &theirs).is_err());
}

#[test]
fn outcome_round_trips_through_the_proto() {
    let o = AppendOutcome {
        id: MessageId(u128::MAX - 5),
        timestamp: Timestamp(42),
    };
    assert_eq!(AppendOutcome::from(OutcomeProto::from(o)), o);
}
