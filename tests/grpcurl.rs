//! Any gRPC client with no code from us: grpcurl (installed by tests/run.sh) lists the service by
//! reflection, shows the proto comments, calls Incr with JSON, and checks health.

mod common;

use std::process::Command;

use common::Proc;

fn grpcurl(args: &[&str]) -> String {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl is not installed: run the test suite with `bash tests/run.sh`");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn grpcurl_lists_describes_and_calls_the_service() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let addr = p.addr.trim_start_matches("http://");
    let list = grpcurl(&["-plaintext", addr, "list"]);
    for svc in ["tally.v1.CounterService", "grpc.health.v1.Health"] {
        assert!(list.lines().any(|l| l == svc), "{list}");
    }
    let desc = grpcurl(&["-plaintext", addr, "describe", "tally.v1.CounterService"]);
    assert!(
        desc.contains("rpc Incr ( .tally.v1.IncrRequest ) returns ( .tally.v1.IncrResponse )"),
        "{desc}"
    );
    assert!(
        desc.contains("a missing key counts as 0"),
        "comments missing from reflection: {desc}"
    );
    let call = |json: &str| {
        grpcurl(&[
            "-plaintext",
            "-d",
            json,
            addr,
            "tally.v1.CounterService/Incr",
        ])
    };
    assert!(call(r#"{"key":"page:home","by":5}"#).contains(r#""value": "5""#));
    assert!(call(r#"{"key":"page:home","by":"-2"}"#).contains(r#""value": "3""#));
    assert!(call(r#"{"key":"page:home"}"#).contains(r#""value": "4""#));
    let get = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"key":"page:home"}"#,
        addr,
        "tally.v1.CounterService/Get",
    ]);
    assert!(get.contains(r#""value": "4""#), "{get}");
    // The README's rate-limit hit: allowed once, then refused (applied 0 is omitted in JSON).
    let hit = r#"{"key":"rl:alice","upper_bound":1,"ttl_ms":60000,"ttl_if_none":true}"#;
    let first = call(hit);
    assert!(
        first.contains(r#""applied": "1""#) && first.contains("ttlMs"),
        "{first}"
    );
    let second = call(hit);
    assert!(
        second.contains(r#""value": "1""#) && !second.contains("applied"),
        "{second}"
    );
    let rpc = |name: &str, json: &str| {
        grpcurl(&[
            "-plaintext",
            "-d",
            json,
            addr,
            &format!("tally.v1.CounterService/{name}"),
        ])
    };
    // The README's Throttle call.
    let th = rpc(
        "Throttle",
        r#"{"key":"api:alice","max_burst":15,"count_per_period":30,"period_ms":60000}"#,
    );
    assert!(
        th.contains(r#""limit": "16""#)
            && th.contains(r#""remaining": "15""#)
            && th.contains(r#""retryAfterMs": "-1""#),
        "{th}"
    );
    // The README's exactly-once Incr: the retry answers the same and adds nothing.
    let once = r#"{"key":"orders","by":1,"request_id":"order-8812"}"#;
    let first = rpc("Incr", once);
    assert!(first.contains(r#""value": "1""#), "{first}");
    assert_eq!(rpc("Incr", once), first);
    let orders = rpc("Get", r#"{"key":"orders"}"#);
    assert!(orders.contains(r#""value": "1""#), "{orders}");
    // The README's Txn: sell one while stock lasts.
    rpc("Set", r#"{"key":"stock","value":"1"}"#);
    let txn = r#"{"compare":[{"key":"stock","op":"GREATER","int_value":0}],
        "success":[{"incr":{"key":"stock","by":-1}},{"incr":{"key":"sold"}}],
        "failure":[{"get":{"key":"stock"}}]}"#;
    let sold = rpc("Txn", txn);
    assert!(sold.contains(r#""succeeded": true"#), "{sold}");
    let out = rpc("Txn", txn);
    assert!(
        !out.contains("succeeded") && out.contains(r#""found": true"#),
        "{out}"
    );
    let exp = rpc(
        "Expire",
        r#"{"key":"page:home","ttl_ms":60000,"condition":"CONDITION_NX"}"#,
    );
    assert!(exp.contains(r#""applied": true"#), "{exp}");
    let exp = rpc(
        "Expire",
        r#"{"key":"page:home","ttl_ms":5,"condition":"CONDITION_NX"}"#,
    );
    assert!(
        !exp.contains("applied"),
        "NX must refuse a key with a TTL: {exp}"
    );
    let ttl = rpc("Ttl", r#"{"key":"page:home"}"#);
    assert!(
        ttl.contains("ttlMs") && ttl.contains("expireAtUnixMs"),
        "{ttl}"
    );
    for svc in ["", "tally.v1.CounterService"] {
        let body = format!(r#"{{"service":"{svc}"}}"#);
        let h = grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(h.contains("SERVING"), "{svc}: {h}");
    }
}
