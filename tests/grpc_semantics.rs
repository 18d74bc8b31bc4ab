//! Counter semantics over gRPC, through the generated client, against REDIS_SEMANTICS §2-3.

mod common;

use std::sync::Arc;

use common::InProc;
use common::kv::{get, set};
use tally::clock::SystemClock;
use tally::config::Config;
use tally::grpc::pb::*;
use tonic::Code;

async fn server() -> (InProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = InProc::start(Config::new(dir.path()), Arc::new(SystemClock)).await;
    (s, dir)
}

fn incr(key: &str, by: Option<i64>) -> IncrRequest {
    IncrRequest {
        key: key.into(),
        by,
        ..Default::default()
    }
}

/// A Delete of `keys` refused as INVALID_ARGUMENT, with `part` in the message.
async fn delete_refused(c: &mut common::Client, keys: Vec<String>, part: &str) {
    let e = c
        .delete(DeleteRequest {
            keys,
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_status(&e, Code::InvalidArgument, part);
}

#[tokio::test(flavor = "multi_thread")]
async fn incr_follows_redis_incrby() {
    let (s, _d) = server().await;
    let mut c = s.client().await;
    assert_eq!(c.incr(incr("n", None)).await.unwrap().into_inner().value, 1);
    assert_eq!(
        c.incr(incr("n", Some(5))).await.unwrap().into_inner().value,
        6
    );
    assert_eq!(
        c.incr(incr("n", Some(-10)))
            .await
            .unwrap()
            .into_inner()
            .value,
        -4
    );
    assert_eq!(get(&mut c, "n").await.as_deref(), Some("-4"));
    assert_eq!(
        c.incr(incr("d", Some(-1)))
            .await
            .unwrap()
            .into_inner()
            .value,
        -1
    );
    assert_eq!(
        c.incr(incr("z", Some(i64::MIN)))
            .await
            .unwrap()
            .into_inner()
            .value,
        i64::MIN
    );
    assert_eq!(get(&mut c, "missing").await, None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_values_parse_with_string2ll() {
    let (s, _d) = server().await;
    let mut c = s.client().await;
    for (stored, want) in [
        ("0", 1),
        ("-1", 0),
        ("9223372036854775806", i64::MAX),
        ("-9223372036854775808", -9223372036854775807),
    ] {
        set(&mut c, "k", stored).await;
        assert_eq!(
            c.incr(incr("k", None)).await.unwrap().into_inner().value,
            want,
            "{stored}"
        );
    }
    for stored in [
        "hello",
        " 1",
        "1 ",
        "+1",
        "01",
        "00",
        "-01",
        "1.0",
        "1e3",
        "0x10",
        "",
        "-0",
        "-",
        "1\u{0}2",
        "１",
        "12345678901234567890",
        "9223372036854775808",
        "-9223372036854775809",
    ] {
        set(&mut c, "k", stored).await;
        let e = c.incr(incr("k", None)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{stored:?}");
        assert_eq!(e.message(), "value is not an integer or out of range");
        assert_eq!(
            get(&mut c, "k").await.as_deref(),
            Some(stored),
            "a failed Incr changed {stored:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overflow_is_out_of_range_and_changes_nothing() {
    let (s, _d) = server().await;
    let mut c = s.client().await;
    let cases = [
        ("9223372036854775807", 1),
        ("-9223372036854775808", -1),
        ("1", i64::MAX),
        ("-1", i64::MIN),
    ];
    for (stored, by) in cases {
        set(&mut c, "v", stored).await;
        let e = c.incr(incr("v", Some(by))).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange);
        assert_eq!(e.message(), "increment or decrement would overflow");
        assert_eq!(get(&mut c, "v").await.as_deref(), Some(stored));
    }
    set(&mut c, "v", "9223372036854775807").await;
    assert_eq!(
        c.incr(incr("v", Some(0))).await.unwrap().into_inner().value,
        i64::MAX
    );
    let before = c.stats(StatsRequest {}).await.unwrap().into_inner().keys;
    set(&mut c, "h", "hello").await;
    let _ = c.incr(incr("h", None)).await.unwrap_err();
    assert_eq!(
        c.stats(StatsRequest {}).await.unwrap().into_inner().keys,
        before + 1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_counts_existing_keys_once() {
    let (s, _d) = server().await;
    let mut c = s.client().await;
    set(&mut c, "a", "1").await;
    set(&mut c, "b", "x").await;
    let keys = ["a", "a", "b", "nope"].map(String::from).to_vec();
    let r = c
        .delete(DeleteRequest {
            keys,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 2);
    assert_eq!(get(&mut c, "a").await, None);
    assert_eq!(get(&mut c, "b").await, None);
    assert_eq!(
        c.delete(DeleteRequest {
            keys: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deleted,
        0
    );
    assert_eq!(c.stats(StatsRequest {}).await.unwrap().into_inner().keys, 0);
    // A deleted counter starts again from 0.
    assert_eq!(c.incr(incr("a", None)).await.unwrap().into_inner().value, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_invalid_argument_naming_the_limit() {
    let (s, _d) = server().await;
    let mut c = s.client().await;
    let e = c.incr(incr("", None)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "key must not be empty")
    );
    let e = c
        .get(GetRequest {
            key: "k".repeat(4097),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("maximum key size is 4096 bytes"),
        "{}",
        e.message()
    );
    assert!(
        c.get(GetRequest {
            key: "k".repeat(4096)
        })
        .await
        .is_ok()
    );
    let e = c
        .set(SetRequest {
            key: "k".into(),
            value: "v".repeat((1 << 20) + 1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("maximum value size is 1048576 bytes"),
        "{}",
        e.message()
    );
    let keys: Vec<String> = (0..1200)
        .map(|i| format!("{i:04}{}", "x".repeat(4000)))
        .collect();
    delete_refused(&mut c, keys, "maximum request size is 4194304 bytes").await;
    let keys: Vec<String> = (0..10_001).map(|i| i.to_string()).collect();
    delete_refused(&mut c, keys, "maximum is 10000").await;
    delete_refused(&mut c, vec!["a".into(), String::new()], "").await;
    // Past the hard ceiling tonic refuses the message before we see it; it still names the limit.
    let e = c
        .set(SetRequest {
            key: "k".into(),
            value: "v".repeat(17 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(
        e.message().contains("the limit is: 16777216 bytes"),
        "{}",
        e.message()
    );
    // None of it stored anything.
    assert_eq!(c.stats(StatsRequest {}).await.unwrap().into_inner().keys, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_increments_on_one_key_are_exact() {
    let (s, _d) = server().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = s.client().await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(250);
            for _ in 0..250 {
                seen.push(c.incr(incr("hot", None)).await.unwrap().into_inner().value);
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    // Every reply is distinct: no two increments saw the same old value.
    assert_eq!(all, (1..=4000).collect::<Vec<i64>>());
    let mut c = s.client().await;
    assert_eq!(get(&mut c, "hot").await.as_deref(), Some("4000"));
    let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert!(st.durable_lsn >= 4000, "{st:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn incr_by_float_prints_like_redis() {
    let (s, _d) = server().await;
    let mut c = s.client().await;
    let client = c.clone();
    let add = |by: &str| {
        let req = IncrByFloatRequest {
            key: "f".into(),
            by: by.into(),
            ..Default::default()
        };
        let mut c = client.clone();
        async move { c.incr_by_float(req).await }
    };
    assert_eq!(add("0.1").await.unwrap().into_inner().value, "0.1");
    assert_eq!(add("0.2").await.unwrap().into_inner().value, "0.3");
    assert_eq!(add("-0.3").await.unwrap().into_inner().value, "0");
    let e = add("abc").await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::FailedPrecondition, "value is not a valid float")
    );
    let e = add("inf").await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::OutOfRange, "increment would produce NaN or Infinity")
    );
    set(&mut c, "f", "hello").await;
    let e = add("1").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(get(&mut c, "f").await.as_deref(), Some("hello"));
    s.stop().await;
}

/// A binary value written over RESP reads back exactly over gRPC (value_bytes), and one written
/// over gRPC with value_bytes reads back exactly over RESP.
#[tokio::test(flavor = "multi_thread")]
async fn binary_values_cross_protocols_exactly() {
    use std::io::{Read, Write};
    let (s, _d) = server().await;
    let mut c = s.client().await;
    let mut r = std::net::TcpStream::connect(&s.resp).unwrap();
    r.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$3\r\n\xff\x00a\r\n")
        .unwrap();
    let mut ok = [0u8; 5];
    r.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let g = c
        .get(GetRequest { key: "b".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(g.found);
    assert_eq!(g.value_bytes, b"\xff\x00a");
    assert_eq!(g.value, "\u{fffd}\u{0}a");
    // A text value leaves value_bytes empty.
    set(&mut c, "t", "plain").await;
    let g = c
        .get(GetRequest { key: "t".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((g.value.as_str(), g.value_bytes.len()), ("plain", 0));
    // Written as bytes over gRPC, with GET returning the old binary value exactly.
    let out = c
        .set(SetRequest {
            key: "b".into(),
            value_bytes: b"\x80\x81".to_vec(),
            get: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.old_value_bytes, b"\xff\x00a");
    r.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n").unwrap();
    let mut got = [0u8; 8];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"$2\r\n\x80\x81\r\n");
    let e = c
        .set(SetRequest {
            key: "b".into(),
            value: "x".into(),
            value_bytes: b"y".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not both"), "{}", e.message());
    s.stop().await;
}

/// Incr with bounds and a TTL is Redis 8's INCREX: a fixed-window rate limiter in one write.
#[tokio::test(flavor = "multi_thread")]
async fn incr_with_bounds_and_ttl_is_increx() {
    let (s, _d) = server().await;
    let mut c = s.client().await;
    let hit = IncrRequest {
        key: "rl:alice".into(),
        upper_bound: Some(3),
        ttl_ms: 60_000,
        ttl_if_none: true,
        ..Default::default()
    };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = c.incr(hit.clone()).await.unwrap().into_inner();
        assert!(r.ttl_ms > 59_000 && r.ttl_ms <= 60_000, "{r:?}");
        seen.push((r.value, r.applied));
    }
    assert_eq!(seen, [(1, 1), (2, 1), (3, 1), (3, 0), (3, 0)]);
    // A plain Incr reports the increment and keeps the TTL.
    let r = c
        .incr(incr("rl:alice", Some(-1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.value, r.applied), (2, -1));
    assert!(r.ttl_ms > 59_000, "{r:?}");
    let r = c.incr(incr("plain", None)).await.unwrap().into_inner();
    assert_eq!((r.value, r.applied, r.ttl_ms), (1, 1, -1));
    // Saturate clamps; persist removes the TTL.
    let sat = IncrRequest {
        key: "rl:alice".into(),
        by: Some(100),
        upper_bound: Some(10),
        saturate: true,
        persist: true,
        ..Default::default()
    };
    let r = c.incr(sat).await.unwrap().into_inner();
    assert_eq!((r.value, r.applied, r.ttl_ms), (10, 8, -1));
    // Refused on a missing key: nothing created.
    let low = IncrRequest {
        key: "none".into(),
        lower_bound: Some(1),
        by: Some(-1),
        ..Default::default()
    };
    let r = c.incr(low).await.unwrap().into_inner();
    assert_eq!((r.value, r.applied, r.ttl_ms), (0, 0, -2));
    assert_eq!(get(&mut c, "none").await, None);
    // Bad combinations name the field and change nothing.
    for (req, msg) in [
        (
            IncrRequest {
                lower_bound: Some(5),
                upper_bound: Some(4),
                ..Default::default()
            },
            "lower_bound 5 is greater than upper_bound 4",
        ),
        (
            IncrRequest {
                ttl_ms: 5,
                at_unix_ms: 5,
                ..Default::default()
            },
            "ttl_ms or at_unix_ms, not both",
        ),
        (
            IncrRequest {
                ttl_if_none: true,
                ..Default::default()
            },
            "ttl_if_none needs ttl_ms or at_unix_ms",
        ),
        (
            IncrRequest {
                ttl_ms: 5,
                persist: true,
                ..Default::default()
            },
            "persist cannot be combined",
        ),
        (
            IncrRequest {
                ttl_ms: -5,
                ..Default::default()
            },
            "invalid expire time in 'increx' command",
        ),
    ] {
        let req = IncrRequest {
            key: "bad".into(),
            ..req
        };
        let e = c.incr(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{msg}");
        assert!(e.message().contains(msg), "{} vs {msg}", e.message());
    }
    assert_eq!(get(&mut c, "bad").await, None);
    s.stop().await;
}
