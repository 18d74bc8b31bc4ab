//! The `struct` library Redis bundles (Roberto Ierusalimschy's struct.c, Redis's copy):
//! `pack`, `unpack` and `size` over a format of `> < ! x b B h H l L T i[n] I[n] s f d c[n]`,
//! with its alignment rules and error messages, and the sizes and conversions of Redis's
//! x86-64 build (`long` and `size_t` are 8 bytes, `int` 4, native order little endian, C's
//! out-of-range casts as that build performs them).

use mlua::{Lua, MultiValue, Table, Value};

use super::lua::{
    MAX_C_STACK, Out, Raise, check_number, check_string, native, opt_integer, stack_overflow,
    to_integer,
};

/// Largest integer size, in bytes.
const MAX_INT_SIZE: i32 = 32;
/// The default of `!`: the alignment of `double` (C's `MAXALIGN` here).
const MAX_ALIGN: i32 = 8;
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// The `struct` table.
pub fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("pack", native(lua, pack)?)?;
    t.raw_set("unpack", native(lua, unpack)?)?;
    t.raw_set("size", native(lua, size)?)?;
    Ok(t)
}

struct Header {
    little: bool,
    align: usize,
}

impl Header {
    fn new() -> Header {
        Header {
            little: true,
            align: 1,
        }
    }
}

/// A format string, read as C reads it: it ends at the first NUL.
struct Format {
    s: Vec<u8>,
    at: usize,
}

impl Format {
    fn new(mut s: Vec<u8>) -> Format {
        if let Some(nul) = s.iter().position(|&b| b == 0) {
            s.truncate(nul);
        }
        Format { s, at: 0 }
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.s.get(self.at).copied()?;
        self.at += 1;
        Some(c)
    }

    fn number(&mut self, default: i32) -> Result<i32, Raise> {
        let mut a: i32 = 0;
        let mut any = false;
        while let Some(&c) = self.s.get(self.at).filter(|c| c.is_ascii_digit()) {
            let d = i32::from(c - b'0');
            if a > i32::MAX / 10 || a * 10 > i32::MAX - d {
                return Err(Raise::Error(b"integral size overflow".to_vec()));
            }
            a = a * 10 + d;
            self.at += 1;
            any = true;
        }
        Ok(if any { a } else { default })
    }

    /// The size of option `opt` (reading its count), 0 for options that take no space.
    fn size(&mut self, opt: u8) -> Result<usize, Raise> {
        Ok(match opt {
            b'B' | b'b' | b'x' => 1,
            b'H' | b'h' => 2,
            b'L' | b'l' | b'T' | b'd' => 8,
            b'f' => 4,
            b'c' => self.number(1)? as usize,
            b'i' | b'I' => {
                let n = self.number(4)?;
                if n > MAX_INT_SIZE {
                    return Err(Raise::Error(
                        format!("integral size {n} is larger than limit of {MAX_INT_SIZE}").into(),
                    ));
                }
                n as usize
            }
            _ => 0,
        })
    }

    /// The options that change the header (`>`, `<`, `!n`, space); any other is an error.
    fn control(&mut self, opt: u8, h: &mut Header) -> Result<(), Raise> {
        match opt {
            b' ' => {}
            b'>' => h.little = false,
            b'<' => h.little = true,
            b'!' => {
                let a = self.number(MAX_ALIGN)?;
                if a <= 0 || a & (a - 1) != 0 {
                    return Err(Raise::Error(
                        format!("alignment {a} is not a power of 2").into(),
                    ));
                }
                h.align = a as usize;
            }
            _ => {
                let mut msg = b"invalid format option '".to_vec();
                msg.extend([opt, b'\'']);
                return Err(Raise::Arg(1, msg));
            }
        }
        Ok(())
    }
}

/// Padding before an item of `size` bytes at offset `len`. Sizes that are not powers of two
/// (`i3`) get struct.c's arithmetic as it is.
fn padding(len: usize, h: &Header, opt: u8, size: usize) -> usize {
    if size == 0 || opt == b'c' {
        return 0;
    }
    let size = size.min(h.align);
    size.wrapping_sub(len & (size - 1)) & (size - 1)
}

/// C's `(unsigned long)d` as gcc compiles it for x86-64: values from 2^63 go through a
/// subtraction, so 2^64 and beyond wrap to 0; NaN gives 2^63.
fn to_unsigned(d: f64) -> u64 {
    if d.is_nan() {
        1 << 63
    } else if d < TWO_63 {
        to_integer(d) as u64
    } else {
        (to_integer(d - TWO_63) as u64) ^ (1 << 63)
    }
}

fn put_integer(out: &mut Vec<u8>, n: f64, little: bool, size: usize) {
    let value = if n < 0.0 {
        to_integer(n) as u64
    } else {
        to_unsigned(n)
    };
    // Past 8 bytes the value has been shifted out: zeros, even for negative numbers.
    let byte = |i: usize| if i < 8 { (value >> (8 * i)) as u8 } else { 0 };
    if little {
        out.extend((0..size).map(byte));
    } else {
        out.extend((0..size).rev().map(byte));
    }
}

fn get_integer(b: &[u8], little: bool, signed: bool) -> f64 {
    let mut l: u64 = 0;
    let mut add = |x: u8| l = (l << 8) | u64::from(x);
    if little {
        b.iter().rev().for_each(|&x| add(x));
    } else {
        b.iter().for_each(|&x| add(x));
    }
    if !signed {
        return l as f64;
    }
    // The shift count is masked to 6 bits as x86 does (C leaves sizes over 8 undefined).
    let mask = u64::MAX.wrapping_shl((b.len() as u32 * 8).wrapping_sub(1));
    if l & mask != 0 {
        l |= mask;
    }
    l as i64 as f64
}

fn pack(lua: &Lua, mut args: MultiValue, out: &mut Out) -> Result<(), Raise> {
    let mut fmt = Format::new(check_string(lua, &args, 1)?);
    // struct.c pushes a nil above the arguments, so a missing one is `nil`, not `no value`.
    args.push_back(Value::Nil);
    let mut h = Header::new();
    let mut arg = 2;
    let mut buf = Vec::new();
    while let Some(opt) = fmt.next() {
        let mut size = fmt.size(opt)?;
        let pad = padding(buf.len(), &h, opt, size);
        buf.resize(buf.len() + pad, 0);
        match opt {
            b'b' | b'B' | b'h' | b'H' | b'l' | b'L' | b'T' | b'i' | b'I' => {
                let n = check_number(lua, &args, arg)?;
                arg += 1;
                put_integer(&mut buf, n, h.little, size);
            }
            b'x' => buf.push(0),
            b'f' => {
                let f = check_number(lua, &args, arg)? as f32;
                arg += 1;
                buf.extend(if h.little {
                    f.to_le_bytes()
                } else {
                    f.to_be_bytes()
                });
            }
            b'd' => {
                let d = check_number(lua, &args, arg)?;
                arg += 1;
                buf.extend(if h.little {
                    d.to_le_bytes()
                } else {
                    d.to_be_bytes()
                });
            }
            b'c' | b's' => {
                let s = check_string(lua, &args, arg)?;
                arg += 1;
                if size == 0 {
                    size = s.len();
                }
                if s.len() < size {
                    // struct.c names the argument after the string, having already moved on.
                    return Err(Raise::Arg(arg as i32, b"string too short".to_vec()));
                }
                buf.extend_from_slice(&s[..size]);
                if opt == b's' {
                    buf.push(0);
                }
            }
            _ => fmt.control(opt, &mut h)?,
        }
    }
    out.push(Value::String(lua.create_string(&buf)?))?;
    Ok(())
}

fn too_short() -> Raise {
    Raise::Arg(2, b"data string too short".to_vec())
}

fn unpack(lua: &Lua, args: MultiValue, out: &mut Out) -> Result<(), Raise> {
    let mut fmt = Format::new(check_string(lua, &args, 1)?);
    let data = check_string(lua, &args, 2)?;
    let ld = data.len();
    let mut pos = opt_integer(lua, &args, 3, 1)? as usize;
    if pos == 0 {
        return Err(Raise::Arg(3, b"offset must be 1 or greater".to_vec()));
    }
    pos -= 1;
    let mut h = Header::new();
    while let Some(opt) = fmt.next() {
        let mut size = fmt.size(opt)?;
        pos = pos.wrapping_add(padding(pos, &h, opt, size));
        if size > ld || pos > ld - size {
            return Err(too_short());
        }
        // struct.c checks for room for an item and the final position on the C stack.
        if args.len() + out.len() + 2 > MAX_C_STACK {
            return Err(stack_overflow("too many results"));
        }
        let item = &data[pos..pos + size];
        match opt {
            b'b' | b'B' | b'h' | b'H' | b'l' | b'L' | b'T' | b'i' | b'I' => {
                let signed = opt.is_ascii_lowercase();
                out.push(Value::Number(get_integer(item, h.little, signed)))?;
            }
            b'x' => {}
            b'f' => {
                let b: [u8; 4] = item.try_into().expect("size 4");
                let f = if h.little {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                };
                out.push(Value::Number(f64::from(f)))?;
            }
            b'd' => {
                let b: [u8; 8] = item.try_into().expect("size 8");
                let d = if h.little {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                };
                out.push(Value::Number(d))?;
            }
            b'c' => {
                if size == 0 {
                    // `c0`: the length is the previous result (a number, or a string that
                    // reads as one), which it replaces.
                    let prev = match out.len() {
                        0 => None,
                        _ => lua.coerce_number(out.last()?)?,
                    };
                    let Some(n) = prev else {
                        return Err(Raise::Error(b"format 'c0' needs a previous size".to_vec()));
                    };
                    size = to_unsigned(n) as usize;
                    out.pop()?;
                    if size > ld || pos > ld - size {
                        return Err(too_short());
                    }
                }
                out.push(Value::String(lua.create_string(&data[pos..pos + size])?))?;
            }
            b's' => {
                let Some(len) = data[pos..].iter().position(|&b| b == 0) else {
                    return Err(Raise::Error(b"unfinished string in data".to_vec()));
                };
                size = len + 1;
                out.push(Value::String(lua.create_string(&data[pos..pos + len])?))?;
            }
            _ => fmt.control(opt, &mut h)?,
        }
        pos = pos.wrapping_add(size);
    }
    out.push(Value::Number(pos.wrapping_add(1) as i64 as f64))?;
    Ok(())
}

fn size(lua: &Lua, args: MultiValue, out: &mut Out) -> Result<(), Raise> {
    let mut fmt = Format::new(check_string(lua, &args, 1)?);
    let mut h = Header::new();
    let mut pos: usize = 0;
    while let Some(opt) = fmt.next() {
        let size = fmt.size(opt)?;
        pos = pos.wrapping_add(padding(pos, &h, opt, size));
        if opt == b's' {
            return Err(Raise::Arg(1, b"option 's' has no fixed size".to_vec()));
        } else if opt == b'c' && size == 0 {
            return Err(Raise::Arg(1, b"option 'c0' has no fixed size".to_vec()));
        }
        // Unknown letters and digits are let through here, as struct.c does.
        if !opt.is_ascii_alphanumeric() {
            fmt.control(opt, &mut h)?;
        }
        pos = pos.wrapping_add(size);
    }
    out.push(Value::Number(pos as i64 as f64))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_pack_as_struct_c() {
        let mut b = Vec::new();
        put_integer(&mut b, 258.0, false, 2);
        put_integer(&mut b, -1.0, true, 10);
        put_integer(&mut b, 2f64.powi(64), false, 8);
        assert_eq!(
            b,
            [
                1, 2, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(to_unsigned(f64::NAN), 1 << 63);
        assert_eq!(to_unsigned(TWO_63 + 4096.0), (1 << 63) + 4096);
    }

    #[test]
    fn integers_unpack_with_sign_extension() {
        assert_eq!(get_integer(&[0xff, 0xfe], false, true), -2.0);
        assert_eq!(get_integer(&[0xff, 0xfe], false, false), 65534.0);
        assert_eq!(get_integer(&[0xfe, 0xff], true, true), -2.0);
        assert_eq!(get_integer(&[0xff; 9], false, true), -1.0);
        assert_eq!(get_integer(&[], false, true), 0.0);
    }

    #[test]
    fn padding_follows_the_alignment() {
        let h = Header {
            little: true,
            align: 8,
        };
        assert_eq!(padding(1, &h, b'i', 4), 3);
        assert_eq!(padding(1, &h, b'd', 8), 7);
        assert_eq!(padding(1, &h, b'c', 4), 0);
        assert_eq!(padding(3, &h, b'h', 2), 1);
        let h = Header {
            little: true,
            align: 2,
        };
        assert_eq!(padding(1, &h, b'd', 8), 1);
    }

    #[test]
    fn formats_read_counts_and_stop_at_nul() {
        let mut f = Format::new(b"i12c\0i".to_vec());
        assert_eq!(f.next(), Some(b'i'));
        assert_eq!(f.size(b'i').unwrap(), 12);
        assert_eq!(f.next(), Some(b'c'));
        assert_eq!(f.size(b'c').unwrap(), 1);
        assert_eq!(f.next(), None);
        let mut f = Format::new(b"99999999999".to_vec());
        assert!(matches!(f.number(1), Err(Raise::Error(_))));
        let mut f = Format::new(b"33".to_vec());
        assert!(matches!(f.size(b'i'), Err(Raise::Error(_))));
    }
}
