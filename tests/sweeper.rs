//! The sweeper removes expired keys through the write path, in bounded batches, and deadlines
//! keep counting across kill -9 and downtime; a crash during a sweep loses and resurrects
//! nothing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kv::{T0, expire, get, incr, manual, set, ttl};
use common::{InProc, Proc, connect};
use tally::clock::SystemClock;
use tally::config::Config;
use tally::grpc::pb::expire_request::When;
use tally::grpc::pb::set_request::Expiry;
use tally::grpc::pb::*;

#[tokio::test(flavor = "multi_thread")]
async fn sweeper_empties_the_ttl_index_through_the_write_path() {
    let (s, clock, _d) = manual().await;
    let mut c = s.client().await;
    for i in 0..600 {
        let expiry = Some(Expiry::TtlMs(1000 + i));
        c.set(SetRequest {
            key: format!("t{i}"),
            value: "1".into(),
            expiry,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    set(&mut c, "keep", "1").await;
    // One TTL changed after being indexed, one persisted: the sweeper must re-check them.
    assert!(
        expire(&mut c, "t0", When::TtlMs(1_000_000), Condition::None)
            .await
            .unwrap()
    );
    assert!(
        c.persist(PersistRequest {
            key: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .applied
    );
    let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((st.keys, st.keys_with_ttl), (601, 599));
    let lsn_before = st.last_lsn;
    clock.advance(5000);
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
        if st.keys == 3 || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (st.keys, st.keys_with_ttl, st.expired_keys),
        (3, 1, 598),
        "{st:?}"
    );
    // Logged: the sweeper's deletes took LSNs (in batches, so fewer records than keys).
    assert!(
        st.last_lsn > lsn_before && st.last_lsn - lsn_before < 598,
        "{st:?}"
    );
    assert_eq!(s.engine.next_deadline().unwrap(), Some(T0 + 1_000_000));
    assert_eq!(get(&mut c, "t1").await.as_deref(), Some("1"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_keys_with_a_300ms_ttl_are_swept_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProc::start(Config::new(dir.path()), Arc::new(SystemClock)).await;
    let mut c = s.client().await;
    for i in 0..2000 {
        let expiry = Some(Expiry::TtlMs(300));
        c.set(SetRequest {
            key: format!("k{i}"),
            value: "1".into(),
            expiry,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
        if st.keys == 0 {
            assert_eq!((st.keys_with_ttl, st.expired_keys), (0, 2000));
            break;
        }
        assert!(Instant::now() < deadline, "keys left after 5 s: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_keeps_counting_across_kill9_and_downtime() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = connect(&p.addr).await;
    for (k, ms) in [("long", 60_000), ("short", 400)] {
        c.set(SetRequest {
            key: k.into(),
            value: "v".into(),
            expiry: Some(Expiry::TtlMs(ms)),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(incr(&mut c, "counter").await, 1);
    assert!(
        expire(&mut c, "counter", When::TtlMs(60_000), Condition::None)
            .await
            .unwrap()
    );
    let (_, at_before) = ttl(&mut c, "long").await;
    let t_set = Instant::now();
    p.kill9();
    tokio::time::sleep(Duration::from_millis(700)).await; // "short" expires while down
    let p = Proc::start(d.path(), &[]);
    let mut c = connect(&p.addr).await;
    // The deadline is absolute: same instant after restart, and the remaining time has counted
    // the downtime (it did not reset to 60 s).
    let (left, at_after) = ttl(&mut c, "long").await;
    assert_eq!(at_after, at_before);
    assert!(
        left <= 60_000 - t_set.elapsed().as_millis() as i64 + 5,
        "TTL reset: {left} ms left"
    );
    assert_eq!(get(&mut c, "counter").await.as_deref(), Some("1"));
    assert!(ttl(&mut c, "counter").await.0 > 0);
    // Expired during downtime: invisible at once, removed by the sweeper soon after.
    assert_eq!(get(&mut c, "short").await, Option::None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.stats(StatsRequest {}).await.unwrap().into_inner().keys != 2 {
        assert!(
            Instant::now() < deadline,
            "the sweeper did not remove the expired key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_a_sweep_loses_nothing_and_resurrects_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut last_deadline = Instant::now();
    for round in 0..3 {
        let mut p = Proc::start(d.path(), &[]);
        let mut c = connect(&p.addr).await;
        if round > 0 {
            // Every key of the last round is past its deadline before we look.
            tokio::time::sleep_until((last_deadline + Duration::from_millis(5)).into()).await;
            // Nothing from earlier rounds came back, and the permanent keys are intact.
            for i in (0..3000).step_by(97) {
                assert_eq!(
                    get(&mut c, &format!("r{}e{i}", round - 1)).await,
                    Option::None
                );
            }
            for i in 0..50 {
                assert_eq!(
                    get(&mut c, &format!("perm{i}")).await.as_deref(),
                    Some(&*round.to_string())
                );
            }
        }
        for i in 0..50 {
            assert_eq!(incr(&mut c, &format!("perm{i}")).await, round as i64 + 1);
        }
        for i in 0..3000 {
            let expiry = Some(Expiry::TtlMs(200));
            let key = format!("r{round}e{i}");
            c.set(SetRequest {
                key,
                value: "1".into(),
                expiry,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        last_deadline = Instant::now() + Duration::from_millis(200);
        // Kill once the sweeper has started but (most likely) not finished.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
            if st.expired_keys > 0 || Instant::now() > deadline {
                break;
            }
        }
        p.kill9();
    }
    let p = Proc::start(d.path(), &[]);
    let mut c = connect(&p.addr).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.stats(StatsRequest {}).await.unwrap().into_inner().keys != 50 {
        assert!(
            Instant::now() < deadline,
            "expired keys were not swept after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..50 {
        assert_eq!(get(&mut c, &format!("perm{i}")).await.as_deref(), Some("3"));
    }
}
