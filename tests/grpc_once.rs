//! Exactly-once writes by `request_id`: a retry gets the first call's response and changes
//! nothing, for every write RPC, across kill -9, checkpoints and a crash between a request id
//! and its op; the same id on another request is ALREADY_EXISTS; bad ids are INVALID_ARGUMENT;
//! the window and the entry cap forget ids, counted in Stats and INFO.

mod common;

#[path = "common/resp.rs"]
mod resp;

use std::time::{Duration, Instant};

use common::kv::{get, set};
use common::{Client, Proc};
use tally::grpc::pb::*;
use tonic::Code;

fn incr(key: &str, by: i64, id: &str) -> IncrRequest {
    IncrRequest {
        key: key.into(),
        by: Some(by),
        request_id: Some(id.into()),
        ..Default::default()
    }
}

/// The value an Incr answers.
async fn value(c: &mut Client, req: IncrRequest) -> i64 {
    c.incr(req).await.unwrap().into_inner().value
}

async fn stats(c: &mut Client) -> StatsResponse {
    c.stats(StatsRequest {}).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_incr_applies_once_even_after_kill9_and_a_checkpointed_restart() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let first = c.incr(incr("n", 5, "req-1")).await.unwrap().into_inner();
    assert_eq!((first.value, first.applied), (5, 5));
    // Another client moves the counter on; the retry still answers what the first call got.
    c.incr(IncrRequest {
        key: "n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let again = c.incr(incr("n", 5, "req-1")).await.unwrap().into_inner();
    assert_eq!(again, first);
    assert_eq!(get(&mut c, "n").await.as_deref(), Some("6"));
    let s = stats(&mut c).await;
    assert_eq!((s.request_ids, s.request_id_hits), (1, 1), "{s:?}");

    // kill -9: the id comes back from the WAL with the write.
    p.kill9();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    assert_eq!(
        c.incr(incr("n", 5, "req-1")).await.unwrap().into_inner(),
        first
    );
    assert_eq!(get(&mut c, "n").await.as_deref(), Some("6"));
    assert_eq!(stats(&mut c).await.request_ids, 1);

    // A clean stop checkpoints and drops the WAL it covers: the id comes back from sled.
    assert!(p.term().success());
    let mut p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let s = stats(&mut c).await;
    assert!(s.checkpoint_lsn >= s.last_lsn, "not checkpointed: {s:?}");
    assert_eq!(
        c.incr(incr("n", 5, "req-1")).await.unwrap().into_inner(),
        first
    );
    assert_eq!(get(&mut c, "n").await.as_deref(), Some("6"));
    // A new id is a new increment.
    let r = c.incr(incr("n", 5, "req-2")).await.unwrap().into_inner();
    assert_eq!(r.value, 11);
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_rpc_answers_a_retry_from_its_first_call() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let id = |s: &str| Some(s.to_string());

    let f = IncrByFloatRequest {
        key: "f".into(),
        by: "0.5".into(),
        request_id: id("float"),
    };
    let r1 = c.incr_by_float(f.clone()).await.unwrap().into_inner();
    let r2 = c.incr_by_float(f).await.unwrap().into_inner();
    assert_eq!((r1.value.as_str(), r2), ("0.5", r1.clone()));
    assert_eq!(get(&mut c, "f").await.as_deref(), Some("0.5"));

    set(&mut c, "s", "old").await;
    let s = SetRequest {
        key: "s".into(),
        value: "new".into(),
        get: true,
        request_id: id("set"),
        ..Default::default()
    };
    let r1 = c.set(s.clone()).await.unwrap().into_inner();
    set(&mut c, "s", "later").await;
    let r2 = c.set(s).await.unwrap().into_inner();
    assert_eq!(r1.old_value.as_deref(), Some("old"));
    assert_eq!(r2, r1, "a retry returns the first old value");
    assert_eq!(
        get(&mut c, "s").await.as_deref(),
        Some("later"),
        "and sets nothing"
    );

    let del = DeleteRequest {
        keys: vec!["s".into()],
        request_id: id("del"),
    };
    assert_eq!(c.delete(del.clone()).await.unwrap().into_inner().deleted, 1);
    set(&mut c, "s", "back").await;
    assert_eq!(c.delete(del).await.unwrap().into_inner().deleted, 1);
    assert_eq!(
        get(&mut c, "s").await.as_deref(),
        Some("back"),
        "a retried Delete deletes nothing"
    );

    let exp = ExpireRequest {
        key: "s".into(),
        when: Some(expire_request::When::TtlMs(60_000)),
        request_id: id("exp"),
        ..Default::default()
    };
    assert!(c.expire(exp.clone()).await.unwrap().into_inner().applied);
    let per = PersistRequest {
        key: "s".into(),
        request_id: id("per"),
    };
    assert!(c.persist(per.clone()).await.unwrap().into_inner().applied);
    // The retries answer `applied` as the first calls did, and the key keeps no TTL.
    assert!(c.expire(exp).await.unwrap().into_inner().applied);
    assert!(c.persist(per).await.unwrap().into_inner().applied);
    let t = c
        .ttl(TtlRequest { key: "s".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl_ms, -1, "the retried Expire set a TTL again");

    let txn = TxnRequest {
        success: vec![Op {
            op: Some(op::Op::Incr(IncrRequest {
                key: "t".into(),
                ..Default::default()
            })),
        }],
        request_id: id("txn"),
        ..Default::default()
    };
    let r1 = c.txn(txn.clone()).await.unwrap().into_inner();
    assert_eq!(c.txn(txn).await.unwrap().into_inner(), r1);
    assert_eq!(get(&mut c, "t").await.as_deref(), Some("1"));

    let th = ThrottleRequest {
        key: "api".into(),
        max_burst: 0,
        count_per_period: 1,
        period_ms: 60_000,
        request_id: id("thr"),
        ..Default::default()
    };
    let r1 = c.throttle(th.clone()).await.unwrap().into_inner();
    assert!(!r1.limited);
    // Without the id the same request is refused now; with it, the first answer comes back.
    let mut plain = th.clone();
    plain.request_id = None;
    assert!(c.throttle(plain).await.unwrap().into_inner().limited);
    assert_eq!(c.throttle(th).await.unwrap().into_inner(), r1);

    let s = stats(&mut c).await;
    assert_eq!((s.request_ids, s.request_id_hits), (7, 7), "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_is_remembered_and_a_failure_is_not() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    // An Incr refused at its bound changes nothing, and its retry is refused the same way even
    // once there is room: the answer was given.
    set(&mut c, "cap", "10").await;
    let mut bounded = incr("cap", 1, "bounded");
    bounded.upper_bound = Some(10);
    assert_eq!(
        c.incr(bounded.clone()).await.unwrap().into_inner().applied,
        0
    );
    set(&mut c, "cap", "0").await;
    let r = c.incr(bounded).await.unwrap().into_inner();
    assert_eq!((r.value, r.applied), (10, 0));
    assert_eq!(get(&mut c, "cap").await.as_deref(), Some("0"));
    // A failed call stores nothing: its retry runs again.
    set(&mut c, "word", "hello").await;
    let e = c.incr(incr("word", 1, "fails")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    set(&mut c, "word", "41").await;
    assert_eq!(value(&mut c, incr("word", 1, "fails")).await, 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_id_and_bad_ids_are_refused_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    c.incr(incr("k", 1, "dup")).await.unwrap();
    for other in [incr("k", 2, "dup"), incr("other", 1, "dup")] {
        let e = c.incr(other).await.unwrap_err();
        common::assert_status(
            &e,
            Code::AlreadyExists,
            "request_id \"dup\" was used for a different request",
        );
    }
    // Another method with the same id is another request too.
    let e = c
        .set(SetRequest {
            key: "k".into(),
            value: "1".into(),
            request_id: Some("dup".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    for bad in ["".to_string(), "x".repeat(129)] {
        let e = c.incr(incr("k", 1, &bad)).await.unwrap_err();
        let want = format!(
            "request_id is {} bytes; it must be 1 to 128 bytes",
            bad.len()
        );
        common::assert_status(&e, Code::InvalidArgument, &want);
    }
    c.incr(incr("k", 1, &"x".repeat(128))).await.unwrap();
    let e = c
        .txn(TxnRequest {
            success: vec![Op {
                op: Some(op::Op::Incr(incr("k", 1, "inner"))),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    common::assert_status(
        &e,
        Code::InvalidArgument,
        "success[0]: request_id is not allowed on an op inside a Txn",
    );
    assert_eq!(get(&mut c, "k").await.as_deref(), Some("2"));
    assert_eq!(get(&mut c, "other").await, None);
    assert_eq!(stats(&mut c).await.request_ids, 2);
}

/// A server that crashes at the `store-after-request-id` fail point, and a client.
async fn crashing_server(dir: &std::path::Path) -> (Proc, Client) {
    let env = [("TALLY_FAILPOINT", "store-after-request-id")];
    let p = Proc::start_with_env(dir, &[], &env);
    let c = common::connect(&p.addr).await;
    (p, c)
}

/// Polls Stats until `done` holds (bounded).
async fn wait_stats(c: &mut Client, done: impl Fn(&StatsResponse) -> bool) -> StatsResponse {
    let t = Instant::now();
    loop {
        let s = stats(c).await;
        if done(&s) || t.elapsed() > Duration::from_secs(10) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_window_and_the_entry_cap_forget_ids_oldest_first() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &["--dedupe-max-entries", "3"]);
    let mut c = common::connect(&p.addr).await;
    for i in 0..5 {
        c.incr(incr("capped", 1, &format!("id{i}"))).await.unwrap();
    }
    let s = wait_stats(&mut c, |s| s.request_ids <= 3).await;
    assert_eq!((s.request_ids, s.request_id_evictions), (3, 2), "{s:?}");
    // The oldest was forgotten: its retry applies again. The newest was not.
    assert_eq!(value(&mut c, incr("capped", 1, "id0")).await, 6);
    assert_eq!(value(&mut c, incr("capped", 1, "id4")).await, 5);
    let info = resp::Resp::connect(&p.resp).cmd(&["INFO", "stats"]);
    assert!(info.contains("request_id_evictions:"), "{info}");
    assert!(info.contains("request_id_hits:1\r\n"), "{info}");
    drop(p);

    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &["--dedupe-window-secs", "1"]);
    let mut c = common::connect(&p.addr).await;
    c.incr(incr("w", 1, "short")).await.unwrap();
    assert_eq!(value(&mut c, incr("w", 1, "short")).await, 1);
    let s = wait_stats(&mut c, |s| s.request_id_expired == 1).await;
    assert_eq!((s.request_ids, s.request_id_expired), (0, 1), "{s:?}");
    assert_eq!(value(&mut c, incr("w", 1, "short")).await, 2);
}

/// A crash between storing a request id and its op (sled flushed exactly there) leaves an id
/// whose write is missing; startup logs the write again from the id's copy, so a retry's
/// answer and the counter agree.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_an_id_and_its_write_is_repaired_at_startup() {
    let d = tempfile::tempdir().unwrap();
    let (mut p, mut c) = crashing_server(d.path()).await;
    set(&mut c, "n", "41").await;
    assert!(
        c.incr(incr("n", 1, "torn")).await.is_err(),
        "the server should have crashed"
    );
    let _ = p.child.wait();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    assert_eq!(
        get(&mut c, "n").await.as_deref(),
        Some("42"),
        "the id's write was not repaired"
    );
    assert_eq!(value(&mut c, incr("n", 1, "torn")).await, 42);
    assert_eq!(get(&mut c, "n").await.as_deref(), Some("42"));
    let s = stats(&mut c).await;
    assert_eq!((s.request_ids, s.request_id_hits), (1, 1), "{s:?}");
}

/// A Txn with an id reached sled (its batch whole, with the id) but not the WAL, and a crash
/// followed: replay then rewrites "n" with the older durable value, undoing the Txn's effect on
/// it while "m" and the id stay. Startup logs the Txn again from the id's copy of its ops, so
/// the Txn is whole, and its retry is answered from the id.
#[tokio::test(flavor = "multi_thread")]
async fn a_txn_undone_by_replay_is_restored_whole_from_its_id() {
    let d = tempfile::tempdir().unwrap();
    let (mut p, mut c) = crashing_server(d.path()).await;
    set(&mut c, "n", "1").await;
    let inc = |k: &str| Op {
        op: Some(op::Op::Incr(IncrRequest {
            key: k.into(),
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        success: vec![inc("n"), inc("m")],
        request_id: Some("pair".into()),
        ..Default::default()
    };
    assert!(
        c.txn(txn.clone()).await.is_err(),
        "the server should have crashed"
    );
    let _ = p.child.wait();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let both = (get(&mut c, "n").await, get(&mut c, "m").await);
    assert_eq!(
        both,
        (Some("2".into()), Some("1".into())),
        "the Txn is not whole"
    );
    let r = c.txn(txn).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 2);
    let both = (get(&mut c, "n").await, get(&mut c, "m").await);
    assert_eq!(
        both,
        (Some("2".into()), Some("1".into())),
        "the retry applied again"
    );
    assert_eq!(stats(&mut c).await.request_id_hits, 1);
}

/// Calls with one id at the same moment serialize on it: one increments, every other one is
/// answered with its response.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_with_one_id_apply_once() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.incr(incr("race", 7, "same")).await.unwrap().into_inner() })
        })
        .collect();
    let mut answers = Vec::new();
    for t in calls {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!((answers[0].value, answers[0].applied), (7, 7));
    assert_eq!(get(&mut c, "race").await.as_deref(), Some("7"));
    let s = stats(&mut c).await;
    assert_eq!((s.request_ids, s.request_id_hits), (1, 31), "{s:?}");
}
