//! The `cmsgpack` library Redis bundles (lua-cmsgpack 0.4.0): `pack` of one or more values
//! (concatenated), `unpack`, `unpack_one` and `unpack_limit`, with its rules: a table whose
//! keys are exactly 1..n is an array, any other a map; numbers that are integers take the
//! smallest int encoding, others a float32 when exact, else a float64; strings are msgpack str
//! (bin and ext are not read); tables nested 16 deep pack as nil; other types pack as nil.
//! Integers unpack as Lua numbers (a uint64 past 2^63 wraps negative, as in lua-cmsgpack).
//! Where the C code would overflow Lua's C stack (thousands of results or nesting levels) it
//! fails with the same `stack overflow (…)` message.

use mlua::{Lua, MultiValue, Table, Value};

use super::lua::{
    MAX_C_STACK, Out, Raise, check_integer, check_string, native, opt_integer, stack_overflow,
    to_integer,
};

/// Tables nested deeper than this pack as nil (which also ends cycles).
const MAX_NESTING: usize = 16;

/// The `cmsgpack` table.
pub fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("pack", native(lua, pack)?)?;
    t.raw_set(
        "unpack",
        native(lua, |lua, args, out| {
            let base = args.len();
            unpack(lua, &args, out, 0, 0, base)
        })?,
    )?;
    t.raw_set(
        "unpack_one",
        native(lua, |lua, args, out| {
            let offset = opt_integer(lua, &args, 2, 0)?;
            unpack(lua, &args, out, 1, offset, 1)
        })?,
    )?;
    t.raw_set(
        "unpack_limit",
        native(lua, |lua, args, out| {
            let limit = check_integer(lua, &args, 2)?;
            let offset = opt_integer(lua, &args, 3, 0)?;
            unpack(lua, &args, out, limit, offset, 1)
        })?,
    )?;
    t.raw_set("_NAME", "cmsgpack")?;
    t.raw_set("_VERSION", "lua-cmsgpack 0.4.0")?;
    t.raw_set("_COPYRIGHT", "Copyright (C) 2012, Salvatore Sanfilippo")?;
    t.raw_set("_DESCRIPTION", "MessagePack C implementation for Lua")?;
    Ok(t)
}

/// A length header: `fix` (its low bits hold lengths up to `fix_max`) or the 16- or 32-bit
/// form; `wide8` is str8's code for strings (arrays and maps have no 8-bit form).
fn header(out: &mut Vec<u8>, n: usize, fix: u8, fix_max: usize, wide8: Option<u8>, wide: u8) {
    if n <= fix_max {
        out.push(fix | n as u8);
    } else if let Some(code) = wide8.filter(|_| n <= 0xff) {
        out.extend([code, n as u8]);
    } else if n <= 0xffff {
        out.push(wide);
        out.extend((n as u16).to_be_bytes());
    } else {
        out.push(wide + 1);
        out.extend((n as u32).to_be_bytes());
    }
}

fn encode_int(out: &mut Vec<u8>, n: i64) {
    match n {
        0..=127 => out.push(n as u8),
        128..=0xff => out.extend([0xcc, n as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend((n as u32).to_be_bytes());
        }
        0x1_0000_0000.. => {
            out.push(0xcf);
            out.extend(n.to_be_bytes());
        }
        -32..=-1 => out.push(n as u8),
        -128..=-33 => out.extend([0xd0, n as u8]),
        -32768..=-129 => {
            out.push(0xd1);
            out.extend((n as i16).to_be_bytes());
        }
        -2_147_483_648..=-32769 => {
            out.push(0xd2);
            out.extend((n as i32).to_be_bytes());
        }
        _ => {
            out.push(0xd3);
            out.extend(n.to_be_bytes());
        }
    }
}

fn encode_number(out: &mut Vec<u8>, n: f64) {
    let i = to_integer(n);
    if i as f64 == n {
        encode_int(out, i);
    } else if f64::from(n as f32) == n {
        out.push(0xca);
        out.extend((n as f32).to_be_bytes());
    } else {
        out.push(0xcb);
        out.extend(n.to_be_bytes());
    }
}

/// lua-cmsgpack's test: every key a number that is a positive C `int`, as many keys as the
/// largest (so exactly 1..n; an empty table too).
fn is_array(t: &Table) -> mlua::Result<bool> {
    let (mut count, mut max) = (0i64, 0i64);
    for pair in t.pairs::<Value, Value>() {
        let n = match pair?.0 {
            Value::Integer(i) => i as f64,
            Value::Number(n) => n,
            _ => return Ok(false),
        };
        if n <= 0.0 || n > f64::from(i32::MAX) || n.fract() != 0.0 {
            return Ok(false);
        }
        max = max.max(n as i64);
        count += 1;
    }
    Ok(max == count)
}

/// Encodes `v`; `stack` is how many Lua stack slots lua-cmsgpack would be using at this point
/// (the value on top), for its `luaL_checkstack` calls.
fn encode(out: &mut Vec<u8>, v: &Value, level: usize, stack: usize) -> Result<(), Raise> {
    match v {
        Value::String(s) => {
            let s = s.as_bytes();
            header(out, s.len(), 0xa0, 31, Some(0xd9), 0xda);
            out.extend_from_slice(&s);
        }
        Value::Boolean(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Integer(i) => encode_int(out, *i),
        Value::Number(n) => encode_number(out, *n),
        Value::Table(t) if level < MAX_NESTING => {
            if stack + 2 > MAX_C_STACK {
                return Err(stack_overflow("in function table_is_an_array"));
            }
            if is_array(t)? {
                let len = t.raw_len();
                header(out, len, 0x90, 15, None, 0xdc);
                if stack + 1 > MAX_C_STACK {
                    return Err(stack_overflow("in function mp_encode_lua_table_as_array"));
                }
                for j in 1..=len {
                    // `lua_gettable`, as lua-cmsgpack: metamethods apply.
                    let item: Value = t.get(j)?;
                    encode(out, &item, level + 1, stack + 1)?;
                }
            } else {
                if stack + 3 > MAX_C_STACK {
                    return Err(stack_overflow("in function mp_encode_lua_table_as_map"));
                }
                let len = t.pairs::<Value, Value>().count();
                header(out, len, 0x80, 15, None, 0xde);
                for pair in t.pairs::<Value, Value>() {
                    let (k, item) = pair?;
                    encode(out, &k, level + 1, stack + 3)?;
                    encode(out, &item, level + 1, stack + 2)?;
                }
            }
        }
        _ => out.push(0xc0),
    }
    Ok(())
}

fn pack(lua: &Lua, args: MultiValue, out: &mut Out) -> Result<(), Raise> {
    let n = args.len();
    if n == 0 {
        return Err(Raise::Arg(0, b"MessagePack pack needs input.".to_vec()));
    }
    if n + n > MAX_C_STACK {
        return Err(Raise::Arg(
            0,
            b"Too many arguments for MessagePack pack.".to_vec(),
        ));
    }
    let mut buf = Vec::new();
    for (i, v) in args.iter().enumerate() {
        // lua-cmsgpack keeps each argument's encoding on the stack until it concatenates.
        encode(&mut buf, v, 0, n + i + 1)?;
    }
    out.push(Value::String(lua.create_string(&buf)?))?;
    Ok(())
}

fn missing() -> Raise {
    Raise::Error(b"Missing bytes in input.".to_vec())
}

/// An open array or map, while its items are read.
struct Open {
    map: bool,
    left: usize,
    /// The next array index, or (in a map) whether the key has been read.
    index: i64,
}

/// Reads values from `data` as lua-cmsgpack's recursive decoder does, with an explicit stack
/// (input may nest thousands deep). Open containers and pending keys live in a Lua table
/// (`scratch`): mlua's stack of references held from Rust is far smaller.
struct Decoder<'a> {
    lua: &'a Lua,
    data: &'a [u8],
    at: usize,
    open: Vec<Open>,
    scratch: Table,
    /// The Lua stack slots lua-cmsgpack's open containers would hold: each its table, and the
    /// index (array) or the key once read (map).
    held: usize,
}

impl<'a> Decoder<'a> {
    fn need(&self, n: usize) -> Result<&'a [u8], Raise> {
        self.data
            .get(self.at..)
            .and_then(|rest| rest.get(..n))
            .ok_or_else(missing)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Raise> {
        let b = self.need(n)?;
        self.at += n;
        Ok(b)
    }

    fn be(&mut self, skip: usize, n: usize) -> Result<u64, Raise> {
        let b = self.take(skip + n)?;
        Ok(b[skip..].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }

    fn string(&mut self, head: usize, len: usize) -> Result<Value, Raise> {
        let b = self.take(head + len)?;
        Ok(Value::String(self.lua.create_string(&b[head..])?))
    }

    /// Opens an array or map of `len` items; `None` until its items are read. `stack` as in
    /// `value`, where it stood before the table was made.
    fn container(&mut self, map: bool, len: usize, stack: usize) -> Result<Option<Value>, Raise> {
        let t = self.lua.create_table()?;
        if !map && stack + 2 > MAX_C_STACK {
            return Err(stack_overflow("in function mp_decode_to_lua_array"));
        }
        if len == 0 {
            return Ok(Some(Value::Table(t)));
        }
        self.open.push(Open {
            map,
            left: len,
            index: if map { 0 } else { 1 },
        });
        self.held += if map { 1 } else { 2 };
        self.scratch.raw_set(2 * self.open.len() - 1, t)?;
        Ok(None)
    }

    /// Reads one item: `Some` a scalar or an empty container, `None` a container opened.
    fn item(&mut self, stack: usize) -> Result<Option<Value>, Raise> {
        let code = self.need(1)?[0];
        if stack + 1 > MAX_C_STACK {
            return Err(stack_overflow(
                "too many return values at once; use unpack_one or unpack_limit instead.",
            ));
        }
        let num = |n: f64| Ok(Some(Value::Number(n)));
        match code {
            0xcc => num(self.be(1, 1)? as f64),
            0xd0 => num(f64::from(self.be(1, 1)? as u8 as i8)),
            0xcd => num(self.be(1, 2)? as f64),
            0xd1 => num(f64::from(self.be(1, 2)? as u16 as i16)),
            0xce => num(self.be(1, 4)? as f64),
            0xd2 => num(f64::from(self.be(1, 4)? as u32 as i32)),
            // lua_pushinteger of a uint64: past 2^63 it goes negative.
            0xcf | 0xd3 => num(self.be(1, 8)? as i64 as f64),
            0xc0 => self.take(1).map(|_| Some(Value::Nil)),
            0xc2 | 0xc3 => self.take(1).map(|_| Some(Value::Boolean(code == 0xc3))),
            0xca => num(f64::from(f32::from_bits(self.be(1, 4)? as u32))),
            0xcb => num(f64::from_bits(self.be(1, 8)?)),
            0xd9 => {
                let len = usize::from(self.need(2)?[1]);
                self.string(2, len).map(Some)
            }
            0xda => {
                let b = self.need(3)?;
                let len = usize::from(b[1]) << 8 | usize::from(b[2]);
                self.string(3, len).map(Some)
            }
            0xdb => {
                let len = self.be(1, 4)? as usize;
                self.string(0, len).map(Some)
            }
            0xdc | 0xde => {
                let len = self.be(1, 2)? as usize;
                self.container(code == 0xde, len, stack)
            }
            0xdd | 0xdf => {
                let len = self.be(1, 4)? as usize;
                self.container(code == 0xdf, len, stack)
            }
            0x00..=0x7f => self.take(1).map(|_| Some(Value::Number(f64::from(code)))),
            0xe0..=0xff => self
                .take(1)
                .map(|_| Some(Value::Number(f64::from(code as i8)))),
            0xa0..=0xbf => self.string(1, usize::from(code & 0x1f)).map(Some),
            0x80..=0x9f => {
                self.take(1)?;
                self.container(code < 0x90, usize::from(code & 0xf), stack)
            }
            _ => Err(Raise::Error(b"Bad data format in input.".to_vec())),
        }
    }

    /// Reads one complete value; `base` is the stack slots in use outside it.
    fn value(&mut self, base: usize) -> Result<Value, Raise> {
        loop {
            let stack = base + self.held;
            let Some(mut v) = self.item(stack)? else {
                continue;
            };
            loop {
                let depth = self.open.len();
                let Some(o) = self.open.last_mut() else {
                    return Ok(v);
                };
                let t: Table = self.scratch.raw_get(2 * depth - 1)?;
                if !o.map {
                    t.raw_set(o.index, v)?;
                    o.index += 1;
                } else if o.index == 0 {
                    self.scratch.raw_set(2 * depth, v)?;
                    o.index = 1;
                    self.held += 1;
                    break;
                } else {
                    // The VM's checks in `lua_settable`, raised inside a C function.
                    let k: Value = self.scratch.raw_get(2 * depth)?;
                    match k {
                        Value::Nil => return Err(Raise::Bare(b"table index is nil".to_vec())),
                        Value::Number(n) if n.is_nan() => {
                            return Err(Raise::Bare(b"table index is NaN".to_vec()));
                        }
                        _ => {}
                    }
                    t.raw_set(k, v)?;
                    self.scratch.raw_set(2 * depth, Value::Nil)?;
                    o.index = 0;
                    self.held -= 1;
                }
                o.left -= 1;
                if o.left > 0 {
                    break;
                }
                let o = self.open.pop().expect("open");
                self.held -= if o.map { 1 } else { 2 };
                self.scratch.raw_set(2 * depth - 1, Value::Nil)?;
                v = Value::Table(t);
            }
        }
    }
}

/// lua-cmsgpack's `mp_unpack_full`: up to `limit` values from byte `offset` (both 0: all
/// values, and no next offset); else the next offset (-1 at the end) comes first. `base` is
/// the stack slots the C function holds before its first result.
fn unpack(
    lua: &Lua,
    args: &MultiValue,
    out: &mut Out,
    limit: i64,
    offset: i64,
    base: usize,
) -> Result<(), Raise> {
    let data = check_string(lua, args, 1)?;
    let len = data.len();
    // lua-cmsgpack prints `int` casts, and the length where it means the limit.
    if offset < 0 || limit < 0 {
        return Err(Raise::Error(
            format!(
                "Invalid request to unpack with offset of {} and limit of {}.",
                offset as i32, len as i32
            )
            .into(),
        ));
    }
    if offset as u64 > len as u64 {
        return Err(Raise::Error(
            format!(
                "Start offset {} greater than input length {}.",
                offset as i32, len as i32
            )
            .into(),
        ));
    }
    let all = limit == 0 && offset == 0;
    let limit = if all { i64::from(i32::MAX) } else { limit };
    if !all {
        out.push(Value::Nil)?;
    }
    let mut d = Decoder {
        lua,
        data: &data,
        at: offset as usize,
        open: Vec::new(),
        scratch: lua.create_table()?,
        held: 0,
    };
    let mut count = 0usize;
    while d.at < len && (count as i64) < limit {
        let v = d.value(base + count)?;
        out.push(v)?;
        count += 1;
    }
    if !all {
        if 1 + count + 1 > MAX_C_STACK {
            return Err(stack_overflow("in function mp_unpack_full"));
        }
        let next = if d.at == len { -1 } else { d.at as i64 };
        out.set(1, Value::Integer(next))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> Vec<u8> {
        let mut b = Vec::new();
        encode_int(&mut b, n);
        b
    }

    fn number(n: f64) -> Vec<u8> {
        let mut b = Vec::new();
        encode_number(&mut b, n);
        b
    }

    #[test]
    fn integers_take_the_smallest_encoding() {
        assert_eq!(int(0), [0]);
        assert_eq!(int(127), [0x7f]);
        assert_eq!(int(128), [0xcc, 0x80]);
        assert_eq!(int(256), [0xcd, 1, 0]);
        assert_eq!(int(65536), [0xce, 0, 1, 0, 0]);
        assert_eq!(int(1 << 32), [0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(int(-1), [0xff]);
        assert_eq!(int(-32), [0xe0]);
        assert_eq!(int(-33), [0xd0, 0xdf]);
        assert_eq!(int(-129), [0xd1, 0xff, 0x7f]);
        assert_eq!(int(-32769), [0xd2, 0xff, 0xff, 0x7f, 0xff]);
        assert_eq!(int(i64::MIN), [0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn numbers_are_ints_then_float32_then_float64() {
        assert_eq!(number(-0.0), [0]);
        assert_eq!(number(1.5), [0xca, 0x3f, 0xc0, 0, 0]);
        assert_eq!(
            number(0.1),
            [0xcb, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]
        );
        assert_eq!(number(f64::INFINITY), [0xca, 0x7f, 0x80, 0, 0]);
        assert_eq!(number(2f64.powi(63))[0], 0xca);
        assert_eq!(number(-(2f64.powi(63))), int(i64::MIN));
        assert_eq!(number(f64::NAN)[0], 0xcb);
    }

    #[test]
    fn headers_pick_fix_8_16_32() {
        let mut b = Vec::new();
        header(&mut b, 31, 0xa0, 31, Some(0xd9), 0xda);
        header(&mut b, 32, 0xa0, 31, Some(0xd9), 0xda);
        header(&mut b, 256, 0xa0, 31, Some(0xd9), 0xda);
        header(&mut b, 16, 0x90, 15, None, 0xdc);
        header(&mut b, 65536, 0x80, 15, None, 0xde);
        assert_eq!(
            b,
            [0xbf, 0xd9, 32, 0xda, 1, 0, 0xdc, 0, 16, 0xdf, 0, 1, 0, 0]
        );
    }

    #[test]
    fn round_trip_through_lua() {
        let lua = Lua::new();
        lua.globals()
            .raw_set("cmsgpack", library(&lua).unwrap())
            .unwrap();
        let ok: bool = lua
            .load(
                "local s = cmsgpack.pack({1, {a = 'x'}, -5}, true, nil)
                 local t, b, n = cmsgpack.unpack(s)
                 local off, one = cmsgpack.unpack_one(s)
                 return t[2].a == 'x' and t[3] == -5 and b == true and n == nil
                    and one[1] == 1 and off == #s - 2",
            )
            .eval()
            .unwrap();
        assert!(ok);
        let err = lua
            .load(r"return cmsgpack.unpack('\193')")
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains("Bad data format in input."));
    }
}
