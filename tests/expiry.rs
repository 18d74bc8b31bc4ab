//! Expiry over gRPC: REDIS_SEMANTICS §2 and §5 rows that map to gRPC and the rate limiter. (The
//! sweeper and deadlines across kill -9 are in `sweeper.rs`.)

mod common;

use common::Client;
use common::kv::{T0, expire, get, incr, manual, set, ttl};
use tally::grpc::pb::expire_request::When;
use tally::grpc::pb::set_request::Expiry;
use tally::grpc::pb::*;
use tonic::Code;

/// PERSIST over gRPC: true if a TTL was removed.
async fn persisted(c: &mut Client, key: &str) -> bool {
    c.persist(PersistRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .applied
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
            ..Default::default()
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
    assert!(!persisted(&mut c, "k").await);
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
            ..Default::default()
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
    assert!(persisted(&mut c, "k").await);
    assert!(!persisted(&mut c, "k").await);
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
