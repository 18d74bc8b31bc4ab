//! Pure request checks: each returns the engine-ready arguments or an INVALID_ARGUMENT error
//! that names the limit.

use prost::Message;

use super::pb;
use crate::config::{self, MAX_KEYS_PER_REQUEST, MAX_REQUEST_BYTES};
use crate::error::{Error, Result};

fn size(req: &impl Message) -> Result<()> {
    let n = req.encoded_len();
    if n > MAX_REQUEST_BYTES {
        return Err(Error::InvalidArgument(format!(
            "request is {n} bytes; the maximum request size is {MAX_REQUEST_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A key must be non-empty and within `MAX_KEY_BYTES`.
pub fn key(k: &str) -> Result<&[u8]> {
    if k.is_empty() {
        return Err(Error::InvalidArgument("key must not be empty".into()));
    }
    config::check_key(k.as_bytes())?;
    Ok(k.as_bytes())
}

pub fn incr(r: &pb::IncrRequest) -> Result<(&[u8], i64)> {
    size(r)?;
    Ok((key(&r.key)?, r.by.unwrap_or(1)))
}

pub fn get(r: &pb::GetRequest) -> Result<&[u8]> {
    size(r)?;
    key(&r.key)
}

pub fn set(r: &pb::SetRequest) -> Result<(&[u8], &[u8])> {
    size(r)?;
    config::check_value(r.value.as_bytes())?;
    Ok((key(&r.key)?, r.value.as_bytes()))
}

pub fn delete(r: &pb::DeleteRequest) -> Result<Vec<Vec<u8>>> {
    size(r)?;
    if r.keys.len() > MAX_KEYS_PER_REQUEST {
        return Err(Error::InvalidArgument(format!(
            "{} keys in one request; the maximum is {MAX_KEYS_PER_REQUEST}",
            r.keys.len()
        )));
    }
    r.keys.iter().map(|k| key(k).map(<[u8]>::to_vec)).collect()
}
