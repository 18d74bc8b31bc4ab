//! Lua <-> RESP, exactly as Redis 7 converts them (`script_lua.c`): a command's reply becomes a
//! Lua value for `redis.call`, and a script's return value becomes the client's reply.
//!
//! Reply -> Lua: integer -> number; bulk -> string; nil -> `false` (RESP2) or `nil` (RESP3);
//! status -> `{ok=…}`; error -> `{err=…}`; array -> table; map -> flat array (RESP2) or
//! `{map={…}}`; double -> string (RESP2) or `{double=n}`.
//! Lua -> reply: string -> bulk; number -> integer (truncated); `true` -> 1 and `false` -> nil
//! (RESP2) or booleans (RESP3); `{err=s}` -> error `s`; `{ok=s}` -> status; `{double=n}` ->
//! double; any other table -> array, up to its first nil; anything else -> nil.

use mlua::{Lua, Table, Value};

use crate::resp::reply::Reply;

/// Nesting deeper than this is cut off (a self-referencing table would loop for ever).
const MAX_DEPTH: usize = 64;

/// A command's reply, as the script sees it.
pub fn to_lua(lua: &Lua, r: Reply, resp: u8) -> mlua::Result<Value> {
    Ok(match r {
        Reply::Ok => status(lua, "OK")?,
        Reply::Status(s) => status(lua, s)?,
        Reply::Line(s) => status(lua, &s)?,
        Reply::Int(n) => Value::Integer(n),
        Reply::Bool(b) if resp >= 3 => Value::Boolean(b),
        Reply::Bool(b) => Value::Integer(i64::from(b)),
        Reply::Bulk(b) | Reply::Verbatim(b) => Value::String(lua.create_string(&b)?),
        Reply::Double(d) if resp >= 3 => {
            let n: f64 = std::str::from_utf8(&d)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            let t = lua.create_table()?;
            t.raw_set("double", n)?;
            Value::Table(t)
        }
        Reply::Double(d) => Value::String(lua.create_string(&d)?),
        Reply::Nil | Reply::NilArray if resp >= 3 => Value::Nil,
        Reply::Nil | Reply::NilArray => Value::Boolean(false),
        Reply::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_seti(i + 1, to_lua(lua, item, resp)?)?;
            }
            Value::Table(t)
        }
        Reply::Map(pairs) if resp >= 3 => {
            let m = lua.create_table()?;
            for (k, v) in pairs {
                m.raw_set(to_lua(lua, k, resp)?, to_lua(lua, v, resp)?)?;
            }
            let t = lua.create_table()?;
            t.raw_set("map", m)?;
            Value::Table(t)
        }
        Reply::Map(pairs) => {
            let t = lua.create_table_with_capacity(pairs.len() * 2, 0)?;
            let mut i = 0;
            for (k, v) in pairs {
                t.raw_seti(i + 1, to_lua(lua, k, resp)?)?;
                t.raw_seti(i + 2, to_lua(lua, v, resp)?)?;
                i += 2;
            }
            Value::Table(t)
        }
        Reply::Error(e) => {
            let t = lua.create_table()?;
            t.raw_set("err", e)?;
            Value::Table(t)
        }
    })
}

fn status(lua: &Lua, s: &str) -> mlua::Result<Value> {
    let t = lua.create_table()?;
    t.raw_set("ok", s)?;
    Ok(Value::Table(t))
}

/// A script's return value, as the client receives it (`resp`: the script's `redis.setresp`).
pub fn to_reply(v: &Value, resp: u8) -> Reply {
    to_reply_at(v, resp, 0)
}

fn to_reply_at(v: &Value, resp: u8, depth: usize) -> Reply {
    match v {
        Value::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        Value::Integer(n) => Reply::Int(*n),
        Value::Number(n) => Reply::Int(truncate(*n)),
        Value::Boolean(b) if resp >= 3 => Reply::Bool(*b),
        Value::Boolean(true) => Reply::Int(1),
        Value::Table(t) if depth < MAX_DEPTH => table_reply(t, resp, depth),
        _ => Reply::Nil,
    }
}

/// `(long long)` of a Lua number as Redis's x86-64 build computes it: out of range (or NaN,
/// or infinite) gives `i64::MIN`, as `cvttsd2si` does.
fn truncate(n: f64) -> i64 {
    if n.is_nan() || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&n) {
        i64::MIN
    } else {
        n as i64
    }
}

fn table_reply(t: &Table, resp: u8, depth: usize) -> Reply {
    if let Ok(Value::String(e)) = t.raw_get::<Value>("err") {
        return Reply::Error(String::from_utf8_lossy(&e.as_bytes()).into_owned());
    }
    if let Ok(Value::String(s)) = t.raw_get::<Value>("ok") {
        return Reply::Line(String::from_utf8_lossy(&s.as_bytes()).into_owned());
    }
    if let Ok(d) = t.raw_get::<Value>("double") {
        match d {
            Value::Number(n) => return Reply::Double(g17(n)),
            Value::Integer(n) => return Reply::Double(n.to_string().into_bytes()),
            _ => {}
        }
    }
    let mut items = Vec::new();
    for i in 1.. {
        match t.raw_get::<Value>(i) {
            Ok(Value::Nil) | Err(_) => break,
            Ok(v) => items.push(to_reply_at(&v, resp, depth + 1)),
        }
    }
    Reply::Array(items)
}

/// `%.17g`, as Redis formats a double reply.
fn g17(n: f64) -> Vec<u8> {
    let mut buf = [0u8; 64];
    // SAFETY: the buffer is large enough for any %.17g output and snprintf NUL-terminates.
    let len = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%.17g".as_ptr(), n) };
    buf[..(len.max(0) as usize).min(buf.len() - 1)].to_vec()
}
