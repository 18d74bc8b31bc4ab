//! `Throttle`, the GCRA rate limiter over gRPC (redis-cell's arithmetic; its own case table is
//! the engine's unit test): bursts, refusals with a retry time, bad parameters, and limiter state
//! that survives kill -9.

mod common;

use common::Proc;
use tally::grpc::pb::*;
use tonic::Code;

fn hit(key: &str) -> ThrottleRequest {
    ThrottleRequest {
        key: key.into(),
        max_burst: 2,
        count_per_period: 1,
        period_ms: 60_000,
        quantity: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bursts_then_refuses_and_the_state_survives_kill9() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = c.throttle(hit("api:alice")).await.unwrap().into_inner();
        assert!(
            !r.limited && r.retry_after_ms == -1 && r.limit == 3,
            "{r:?}"
        );
        remaining.push(r.remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let r = c.throttle(hit("api:alice")).await.unwrap().into_inner();
    assert!(r.limited, "{r:?}");
    assert!(
        r.retry_after_ms > 55_000 && r.retry_after_ms <= 60_000,
        "{r:?}"
    );
    assert!(
        r.reset_after_ms > 175_000 && r.reset_after_ms <= 180_000,
        "{r:?}"
    );
    // Another key has its own limiter; a quantity over the limit can never pass.
    let r = c.throttle(hit("api:bob")).await.unwrap().into_inner();
    assert!(!r.limited);
    let big = ThrottleRequest {
        quantity: Some(4),
        ..hit("api:carol")
    };
    let r = c.throttle(big).await.unwrap().into_inner();
    assert!(r.limited && r.retry_after_ms == -1, "{r:?}");
    for (req, msg) in [
        (
            ThrottleRequest {
                max_burst: -1,
                ..hit("k")
            },
            "max_burst must be >= 0",
        ),
        (
            ThrottleRequest {
                count_per_period: 0,
                ..hit("k")
            },
            "count_per_period must be > 0",
        ),
        (
            ThrottleRequest {
                period_ms: -5,
                ..hit("k")
            },
            "period_ms must be > 0",
        ),
        (
            ThrottleRequest {
                quantity: Some(-1),
                ..hit("k")
            },
            "quantity must be >= 0",
        ),
    ] {
        let e = c.throttle(req).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, msg));
    }
    // Acknowledged hits are durable: after kill -9, alice is still limited.
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let r = c.throttle(hit("api:alice")).await.unwrap().into_inner();
    assert!(r.limited, "limiter state lost in a crash: {r:?}");
}
