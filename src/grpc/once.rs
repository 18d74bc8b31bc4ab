//! Request ids on the wire (exactly-once retries; the engine's side is `engine::dedupe`): the
//! id is taken out of the request, checked, and paired with a fingerprint of the rest, the
//! method name and the request's encoding without its id, so the same id on a different
//! request is told apart. SHA-256 keeps fingerprints stable across builds and restarts (they
//! are stored), and makes two different requests sharing one by chance out of the question.

use prost::Message;
use sha2::{Digest, Sha256};

use super::pb;
use crate::engine::RequestId;
use crate::error::Result;

/// A request that may carry a `request_id`.
pub trait WithId: Message {
    /// Its `request_id` field.
    fn request_id(&mut self) -> &mut Option<String>;
}

macro_rules! with_id {
    ($($t:ty),*) => {$(
        impl WithId for $t {
            fn request_id(&mut self) -> &mut Option<String> {
                &mut self.request_id
            }
        }
    )*};
}

with_id!(
    pb::IncrRequest,
    pb::IncrByFloatRequest,
    pb::SetRequest,
    pb::ExpireRequest,
    pb::PersistRequest,
    pb::DeleteRequest,
    pb::TxnRequest,
    pb::ThrottleRequest
);

/// Takes the request id out of `r` (a call of `method`), checked and fingerprinted.
pub fn take<M: WithId>(method: &str, mut r: M) -> Result<(M, Option<RequestId>)> {
    let Some(id) = r.request_id().take() else {
        return Ok((r, None));
    };
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(r.encode_to_vec());
    let digest = h.finalize();
    let rid = RequestId::new(id.as_bytes(), digest[..16].try_into().unwrap())?;
    Ok((r, Some(rid)))
}
