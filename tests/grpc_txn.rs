//! `Txn`, the compare-and-swap transaction over gRPC: compares pick the branch, later ops see
//! earlier ones, a failing op fails the whole Txn (named, nothing applied), every change is one
//! WAL record, and it survives kill -9 whole.

mod common;

use std::sync::Arc;

use common::{InProc, Proc};
use tally::clock::SystemClock;
use tally::config::Config;
use tally::grpc::pb::compare::{Operator, Target};
use tally::grpc::pb::op::Op as O;
use tally::grpc::pb::op_result::Result as R;
use tally::grpc::pb::*;
use tonic::Code;

fn cmp(key: &str, op: Operator, target: Target) -> Compare {
    Compare {
        key: key.into(),
        op: op as i32,
        target: Some(target),
    }
}

fn incr(key: &str, by: i64) -> Op {
    Op {
        op: Some(O::Incr(IncrRequest {
            key: key.into(),
            by: Some(by),
            ..Default::default()
        })),
    }
}

fn set(key: &str, value: &str) -> Op {
    Op {
        op: Some(O::Set(SetRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn get(key: &str) -> Op {
    Op {
        op: Some(O::Get(GetRequest { key: key.into() })),
    }
}

fn got(r: &OpResult) -> Option<String> {
    match &r.result {
        Some(R::Get(g)) => g.found.then(|| g.value.clone()),
        other => panic!("not a get result: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_and_swap_picks_the_branch_and_ops_see_each_other() {
    let d = tempfile::tempdir().unwrap();
    let s = InProc::start(Config::new(d.path()), Arc::new(SystemClock)).await;
    let mut c = s.client().await;
    let cas = TxnRequest {
        compare: vec![cmp("k", Operator::Equal, Target::IntValue(0))],
        success: vec![set("k", "10"), incr("k", 5), get("k")],
        failure: vec![get("k")],
        ..Default::default()
    };
    // A missing key counts as 0: the swap happens, later ops seeing earlier ones.
    let r = c.txn(cas.clone()).await.unwrap().into_inner();
    assert!(r.succeeded);
    assert!(matches!(&r.results[1].result, Some(R::Incr(i)) if i.value == 15 && i.applied == 5));
    assert_eq!(got(&r.results[2]), Some("15".into()));
    // Now it is 15: the failure branch runs.
    let r = c.txn(cas).await.unwrap().into_inner();
    assert!(!r.succeeded);
    assert_eq!(r.results.len(), 1);
    assert_eq!(got(&r.results[0]), Some("15".into()));
    // Value and exists compares; a missing key's value is "".
    let r = c
        .txn(TxnRequest {
            compare: vec![
                cmp("k", Operator::Greater, Target::Value("10".into())),
                cmp("k", Operator::Less, Target::IntValue(16)),
                cmp("none", Operator::Equal, Target::Value(String::new())),
                cmp("none", Operator::NotEqual, Target::Exists(true)),
            ],
            success: vec![incr("n", 1)],
            failure: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.succeeded, "{r:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_op_fails_the_whole_txn_and_bad_requests_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let s = InProc::start(Config::new(d.path()), Arc::new(SystemClock)).await;
    let mut c = s.client().await;
    let before = c
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_lsn;
    let r = c
        .txn(TxnRequest {
            success: vec![set("a", "1"), set("str", "hello"), incr("str", 1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::FailedPrecondition);
    assert_eq!(
        r.message(),
        "success[2] (incr): value is not an integer or out of range"
    );
    let after = c
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_lsn;
    assert_eq!(after, before, "a failed Txn logged something");
    let r = c
        .txn(TxnRequest {
            success: vec![get("a")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got(&r.results[0]), None);
    // A compare on a non-integer value fails the Txn, as Incr would.
    c.txn(TxnRequest {
        success: vec![set("str", "hello")],
        ..Default::default()
    })
    .await
    .unwrap();
    let e = c
        .txn(TxnRequest {
            compare: vec![cmp("str", Operator::Equal, Target::IntValue(1))],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("compare[0]: "), "{}", e.message());
    for (req, msg) in [
        (
            TxnRequest {
                success: vec![incr("", 1)],
                ..Default::default()
            },
            "success[0]: key must not be empty",
        ),
        (
            TxnRequest {
                compare: vec![cmp("k", Operator::Greater, Target::Exists(true))],
                ..Default::default()
            },
            "compare[0]: an exists compare takes only EQUAL or NOT_EQUAL",
        ),
        (
            TxnRequest {
                failure: (0..1001).map(|i| incr(&format!("k{i}"), 1)).collect(),
                ..Default::default()
            },
            "1001 compares and ops in one Txn; the maximum is 1000",
        ),
        (
            TxnRequest {
                success: vec![Op { op: None }],
                ..Default::default()
            },
            "success[0]: an op must name its kind",
        ),
    ] {
        let e = c.txn(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{msg}");
        assert_eq!(e.message(), msg);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_txn_is_one_record_and_survives_kill9_whole() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let before = c
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_lsn;
    let ops: Vec<Op> = (0..100).map(|i| incr(&format!("t{}", i % 10), 1)).collect();
    for _ in 0..3 {
        let r = c
            .txn(TxnRequest {
                success: ops.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.results.len(), 100);
    }
    let after = c
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_lsn;
    assert_eq!(after - before, 3, "each Txn must be one WAL record");
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = common::connect(&p.addr).await;
    let r = c
        .txn(TxnRequest {
            success: (0..10).map(|i| get(&format!("t{i}"))).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for res in &r.results {
        assert_eq!(got(res), Some("30".into()));
    }
}
