//! Counter writes and, with `--retries`, their exactly-once check. Counter writes are single
//! increments and pair transactions (one `Txn` adding 1 to two keys of one client, which must
//! stay equal: a Txn is all there or all absent after any crash). With `--retries` each carries
//! a request id, and one whose reply never came is kept; after the restart it is sent again
//! with its id, which must apply it exactly once: if the first attempt survived, the server
//! answers from the id (a "repeat") and changes nothing. So no counter keeps an unknown part,
//! and the check is exact: any surplus is a doubled write, any shortfall a lost one.

use std::sync::Mutex;

use tally::grpc::pb::counter_service_client::CounterServiceClient;
use tally::grpc::pb::*;
use tonic::transport::Channel;

use super::model::Model;
use super::op;

/// A counter write whose reply never came, to send again with its id.
#[derive(Debug, Clone)]
pub struct Pending {
    pub keys: Vec<String>,
    pub id: String,
}

/// The two keys of client `id`'s pair.
pub fn pair(id: usize) -> [String; 2] {
    [format!("pair:{id}:a"), format!("pair:{id}:b")]
}

/// Sends one counter write: an Incr of the one key, or a Txn adding 1 to each of the keys.
async fn send(
    c: &mut CounterServiceClient<Channel>,
    keys: &[String],
    id: Option<String>,
) -> Result<(), String> {
    let done = if let [key] = keys {
        let req = IncrRequest {
            key: key.clone(),
            request_id: id,
            ..Default::default()
        };
        op(c.incr(req)).await.map(drop)
    } else {
        let success = keys
            .iter()
            .map(|k| Op {
                op: Some(op::Op::Incr(IncrRequest {
                    key: k.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let req = TxnRequest {
            success,
            request_id: id,
            ..Default::default()
        };
        op(c.txn(req)).await.map(drop)
    };
    done.ok_or_else(|| "no reply".to_string())
}

/// One counter write from a client: counted as unknown while in flight, acknowledged on a
/// reply; without one it stays unknown, or with an id waits in `pending` for its retry.
/// False if no reply came (the server is gone).
pub async fn count(
    c: &mut CounterServiceClient<Channel>,
    model: &Mutex<Model>,
    keys: Vec<String>,
    id: Option<String>,
) -> bool {
    {
        let mut m = model.lock().unwrap();
        for k in &keys {
            m.counters.entry(k.clone()).or_default().unknown += 1;
        }
    }
    let ok = send(c, &keys, id.clone()).await.is_ok();
    let mut m = model.lock().unwrap();
    if ok {
        m.acknowledge(&keys);
    } else if let Some(id) = id {
        m.pending.push(Pending { keys, id });
    }
    ok
}

/// Sends every pending write again with its id, on a freshly recovered server. Returns how
/// many were sent and how many the server answered from their id (their first attempt had
/// survived the crash).
pub async fn retry_pending(addr: &str, model: &Mutex<Model>) -> Result<(u64, u64), String> {
    let pending = std::mem::take(&mut model.lock().unwrap().pending);
    if pending.is_empty() {
        return Ok((0, 0));
    }
    let mut c = super::connect(addr).await.map_err(|e| e.to_string())?;
    let before = hits(&mut c).await?;
    for p in &pending {
        send(&mut c, &p.keys, Some(p.id.clone()))
            .await
            .map_err(|e| format!("retry of {} on {:?}: {e}", p.id, p.keys))?;
        model.lock().unwrap().acknowledge(&p.keys);
    }
    let after = hits(&mut c).await?;
    Ok((pending.len() as u64, after - before))
}

/// The server's `request_id_hits`.
async fn hits(c: &mut CounterServiceClient<Channel>) -> Result<u64, String> {
    let s = c.stats(StatsRequest {}).await.map_err(|e| e.to_string())?;
    Ok(s.into_inner().request_id_hits as u64)
}
