//! Small gRPC helpers shared by the expiry and sweeper tests.

use tally::grpc::pb::expire_request::When;
use tally::grpc::pb::*;

use std::sync::Arc;

use tally::clock::ManualClock;
use tally::config::Config;

use super::{Client, InProc};

/// A fixed "now" for the manual clock.
pub const T0: i64 = 1_800_000_000_000;

/// An in-process server on a manual clock starting at [`T0`].
pub async fn manual() -> (InProc, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = InProc::start(Config::new(dir.path()), clock.clone()).await;
    (s, clock, dir)
}

pub async fn set(c: &mut Client, key: &str, value: &str) {
    c.set(SetRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

pub async fn get(c: &mut Client, key: &str) -> Option<String> {
    let r = c
        .get(GetRequest { key: key.into() })
        .await
        .unwrap()
        .into_inner();
    r.found.then_some(r.value)
}

pub async fn ttl(c: &mut Client, key: &str) -> (i64, i64) {
    let r = c
        .ttl(TtlRequest { key: key.into() })
        .await
        .unwrap()
        .into_inner();
    (r.ttl_ms, r.expire_at_unix_ms)
}

pub async fn expire(
    c: &mut Client,
    key: &str,
    when: When,
    cond: Condition,
) -> Result<bool, tonic::Status> {
    let req = ExpireRequest {
        key: key.into(),
        when: Some(when),
        condition: cond as i32,
        ..Default::default()
    };
    c.expire(req).await.map(|r| r.into_inner().applied)
}

pub async fn incr(c: &mut Client, key: &str) -> i64 {
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
