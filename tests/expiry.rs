//! Expiry over gRPC: REDIS_SEMANTICS §2 and §5 rows that map to gRPC, the rate limiter, the
//! sweeper, and deadlines that keep counting across kill -9 and downtime.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, InProc, Proc, connect};
use tally::clock::{ManualClock, SystemClock};
use tally::config::Config;
use tally::grpc::pb::expire_request::When;
use tally::grpc::pb::set_request::Expiry;
use tally::grpc::pb::*;
use tonic::Code;

const T0: i64 = 1_800_000_000_000; // a fixed "now" for the manual clock

async fn manual() -> (InProc, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = InProc::start(Config::new(dir.path()), clock.clone()).await;
    (s, clock, dir)
}

async fn set(c: &mut Client, key: &str, value: &str) {
    c.set(SetRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn get(c: &mut Client, key: &str) -> Option<String> {
    let r = c
        .get(GetRequest { key: key.into() })
        .await
        .unwrap()
        .into_inner();
    r.found.then_some(r.value)
}

async fn ttl(c: &mut Client, key: &str) -> (i64, i64) {
    let r = c
        .ttl(TtlRequest { key: key.into() })
        .await
        .unwrap()
        .into_inner();
    (r.ttl_ms, r.expire_at_unix_ms)
}

async fn expire(
    c: &mut Client,
    key: &str,
    when: When,
    cond: Condition,
) -> Result<bool, tonic::Status> {
    let req = ExpireRequest {
        key: key.into(),
        when: Some(when),
        condition: cond as i32,
    };
    c.expire(req).await.map(|r| r.into_inner().applied)
}

async fn incr(c: &mut Client, key: &str) -> i64 {
    c.incr(IncrRequest {
        key: key.into(),
        by: None,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .value
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_reports_minus_two_minus_one_and_counts_down() {
    let (s, clock, _d) = manual().await;
    let mut c = s.client().await;
    assert_eq!(ttl(&mut c, "k").await, (-2, -2));
    set(&mut c, "k", "v").await;
    assert_eq!(ttl(&mut c, "k").await, (-1, -1));
    assert!(
        expire(&mut c, "k", When::TtlMs(5000), Condition::None)
            .await
            .unwrap()
    );
    assert_eq!(ttl(&mut c, "k").await, (5000, T0 + 5000));
    clock.advance(1500);
    assert_eq!(ttl(&mut c, "k").await, (3500, T0 + 5000));
    // The deadline's own millisecond still sees the key; the next one does not.
    clock.advance(3500);
    assert_eq!(ttl(&mut c, "k").await, (0, T0 + 5000));
    assert_eq!(get(&mut c, "k").await.as_deref(), Some("v"));
    clock.advance(1);
    assert_eq!(ttl(&mut c, "k").await, (-2, -2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expire_conditions_follow_redis_7() {
    let (s, _clock, _d) = manual().await;
    let mut c = s.client().await;
    use Condition::*;
    // A missing key: false whatever the condition.
    for cond in [None, Nx, Xx, Gt, Lt] {
        assert!(
            !expire(&mut c, "missing", When::TtlMs(1000), cond)
                .await
                .unwrap()
        );
    }
    // No TTL counts as infinite: NX yes, XX no, GT never, LT always.
    set(&mut c, "k", "1").await;
    assert!(!expire(&mut c, "k", When::TtlMs(1000), Xx).await.unwrap());
    assert!(!expire(&mut c, "k", When::TtlMs(1000), Gt).await.unwrap());
    assert_eq!(ttl(&mut c, "k").await.0, -1);
    assert!(expire(&mut c, "k", When::TtlMs(1000), Lt).await.unwrap());
    assert_eq!(ttl(&mut c, "k").await.0, 1000);
    set(&mut c, "k", "1").await;
    assert!(expire(&mut c, "k", When::TtlMs(1000), Nx).await.unwrap());
    // With a TTL of 1000: NX no, XX yes, GT only later, LT only earlier.
    assert!(!expire(&mut c, "k", When::TtlMs(5000), Nx).await.unwrap());
    assert!(!expire(&mut c, "k", When::TtlMs(500), Gt).await.unwrap());
    assert!(!expire(&mut c, "k", When::TtlMs(1000), Gt).await.unwrap());
    assert_eq!(ttl(&mut c, "k").await.0, 1000);
    assert!(expire(&mut c, "k", When::TtlMs(2000), Gt).await.unwrap());
    assert!(!expire(&mut c, "k", When::TtlMs(3000), Lt).await.unwrap());
    assert!(expire(&mut c, "k", When::TtlMs(1500), Lt).await.unwrap());
    assert!(
        expire(&mut c, "k", When::AtUnixMs(T0 + 9000), Xx)
            .await
            .unwrap()
    );
    assert_eq!(ttl(&mut c, "k").await, (9000, T0 + 9000));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_deadlines_delete_and_overflow_is_refused() {
    let (s, _clock, _d) = manual().await;
    let mut c = s.client().await;
    for when in [
        When::TtlMs(0),
        When::TtlMs(-10),
        When::AtUnixMs(1),
        When::AtUnixMs(-1),
        When::AtUnixMs(T0),
        When::TtlMs(i64::MIN),
    ] {
        set(&mut c, "k", "1").await;
        assert!(
            expire(&mut c, "k", when, Condition::None).await.unwrap(),
            "{when:?}"
        );
        assert_eq!(get(&mut c, "k").await, Option::None, "{when:?}");
    }
    // LT with a past deadline deletes, with or without a previous TTL.
    set(&mut c, "k", "1").await;
    assert!(
        expire(&mut c, "k", When::TtlMs(-10), Condition::Lt)
            .await
            .unwrap()
    );
    assert_eq!(get(&mut c, "k").await, Option::None);
    // Overflow: refused before the key is looked at, and the TTL stays as it was.
    set(&mut c, "k", "1").await;
    for key in ["k", "missing"] {
        let e = expire(&mut c, key, When::TtlMs(i64::MAX), Condition::None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "invalid expire time in 'expire' command");
    }
    assert_eq!(ttl(&mut c, "k").await.0, -1);
    // A far absolute deadline is fine (PEXPIREAT k 9223372036854770000 -> 1).
    assert!(
        expire(
            &mut c,
            "k",
            When::AtUnixMs(9_223_372_036_854_770_000),
            Condition::None
        )
        .await
        .unwrap()
    );
    // `when` is required.
    let e = c
        .expire(ExpireRequest {
            key: "k".into(),
            when: Option::None,
            condition: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_are_missing_for_every_operation() {
    let (s, clock, _d) = manual().await;
    let mut c = s.client().await;
    c.set(SetRequest {
        key: "k".into(),
        value: "41".into(),
        expiry: Some(Expiry::TtlMs(100)),
        ..Default::default()
    })
    .await
    .unwrap();
    clock.advance(101);
    assert_eq!(get(&mut c, "k").await, Option::None);
    assert_eq!(ttl(&mut c, "k").await, (-2, -2));
    assert!(
        !expire(&mut c, "k", When::TtlMs(1000), Condition::None)
            .await
            .unwrap()
    );
    assert!(
        !c.persist(PersistRequest { key: "k".into() })
            .await
            .unwrap()
            .into_inner()
            .applied
    );
    // INCR on an expired key starts a new key at 1 with no TTL.
    assert_eq!(incr(&mut c, "k").await, 1);
    assert_eq!(ttl(&mut c, "k").await, (-1, -1));
    // SET NX succeeds over an expired key, and DEL does not count it.
    c.set(SetRequest {
        key: "e".into(),
        value: "x".into(),
        expiry: Some(Expiry::TtlMs(10)),
        ..Default::default()
    })
    .await
    .unwrap();
    clock.advance(11);
    let r = c
        .set(SetRequest {
            key: "e".into(),
            value: "y".into(),
            nx: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.into_inner().applied);
    c.set(SetRequest {
        key: "f".into(),
        value: "x".into(),
        expiry: Some(Expiry::TtlMs(10)),
        ..Default::default()
    })
    .await
    .unwrap();
    clock.advance(11);
    let r = c
        .delete(DeleteRequest {
            keys: vec!["f".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn set_options_and_which_writes_keep_the_ttl() {
    let (s, clock, _d) = manual().await;
    let mut c = s.client().await;
    let req = |value: &str| SetRequest {
        key: "k".into(),
        value: value.into(),
        ..Default::default()
    };
    // TTL on Set; Incr keeps it; a plain Set clears it.
    c.set(SetRequest {
        expiry: Some(Expiry::TtlMs(60_000)),
        ..req("1")
    })
    .await
    .unwrap();
    assert_eq!(incr(&mut c, "k").await, 2);
    assert_eq!(ttl(&mut c, "k").await, (60_000, T0 + 60_000));
    set(&mut c, "k", "3").await;
    assert_eq!(ttl(&mut c, "k").await, (-1, -1));
    // keep_ttl keeps it; at_unix_ms sets an absolute one.
    c.set(SetRequest {
        expiry: Some(Expiry::AtUnixMs(T0 + 7000)),
        ..req("4")
    })
    .await
    .unwrap();
    c.set(SetRequest {
        keep_ttl: true,
        ..req("5")
    })
    .await
    .unwrap();
    assert_eq!(ttl(&mut c, "k").await, (7000, T0 + 7000));
    assert_eq!(get(&mut c, "k").await.as_deref(), Some("5"));
    // NX / XX, with GET returning the old value even when nothing is written.
    let r = c
        .set(SetRequest {
            nx: true,
            get: true,
            ..req("6")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.applied, r.old_value.as_deref()), (false, Some("5")));
    assert_eq!(get(&mut c, "k").await.as_deref(), Some("5"));
    let r = c
        .set(SetRequest {
            xx: true,
            get: true,
            ..req("7")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.applied, r.old_value.as_deref()), (true, Some("5")));
    let r = c
        .set(SetRequest {
            key: "new".into(),
            value: "1".into(),
            xx: true,
            get: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.applied, r.old_value), (false, Option::None));
    assert_eq!(get(&mut c, "new").await, Option::None);
    // Bad TTLs and bad combinations.
    for expiry in [
        Expiry::TtlMs(0),
        Expiry::TtlMs(-5),
        Expiry::AtUnixMs(0),
        Expiry::TtlMs(i64::MAX),
    ] {
        let e = c
            .set(SetRequest {
                expiry: Some(expiry),
                ..req("8")
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                Code::InvalidArgument,
                "invalid expire time in 'set' command"
            )
        );
    }
    let e = c
        .set(SetRequest {
            nx: true,
            xx: true,
            ..req("8")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .set(SetRequest {
            keep_ttl: true,
            expiry: Some(Expiry::TtlMs(5)),
            ..req("8")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(get(&mut c, "k").await.as_deref(), Some("7"));
    // An absolute deadline in the past is accepted and leaves the key gone.
    let r = c
        .set(SetRequest {
            expiry: Some(Expiry::AtUnixMs(T0 - 1)),
            ..req("9")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    assert_eq!(get(&mut c, "k").await, Option::None);
    // Persist removes a TTL once.
    c.set(SetRequest {
        expiry: Some(Expiry::TtlMs(1000)),
        ..req("1")
    })
    .await
    .unwrap();
    assert!(
        c.persist(PersistRequest { key: "k".into() })
            .await
            .unwrap()
            .into_inner()
            .applied
    );
    assert!(
        !c.persist(PersistRequest { key: "k".into() })
            .await
            .unwrap()
            .into_inner()
            .applied
    );
    assert_eq!(ttl(&mut c, "k").await, (-1, -1));
    clock.advance(5000);
    assert_eq!(get(&mut c, "k").await.as_deref(), Some("1"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limiter_incr_then_expire_when_one() {
    const LIMIT: i64 = 5;
    const WINDOW_MS: i64 = 10_000;
    let (s, clock, _d) = manual().await;
    let mut c = s.client().await;
    async fn hit(c: &mut Client) -> bool {
        let n = incr(c, "rl:alice").await;
        if n == 1 {
            assert!(
                expire(c, "rl:alice", When::TtlMs(WINDOW_MS), Condition::None)
                    .await
                    .unwrap()
            );
        }
        n <= LIMIT
    }
    for window in 0..3 {
        for i in 0..LIMIT {
            assert!(hit(&mut c).await, "window {window} hit {i} refused");
            clock.advance(100);
        }
        // Later hits do not extend the window.
        assert_eq!(
            ttl(&mut c, "rl:alice").await.1,
            T0 + window * (WINDOW_MS + 1) + WINDOW_MS
        );
        assert!(!hit(&mut c).await);
        assert!(!hit(&mut c).await);
        let (left, _) = ttl(&mut c, "rl:alice").await;
        clock.advance(left + 1);
        assert_eq!(get(&mut c, "rl:alice").await, Option::None);
        // Realign so each window starts at T0 + window * (WINDOW_MS + 1).
        clock.set(T0 + (window + 1) * (WINDOW_MS + 1));
    }
    s.stop().await;
}

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
        c.persist(PersistRequest { key: "t1".into() })
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
