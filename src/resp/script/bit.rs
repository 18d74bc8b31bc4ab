//! The `bit` library Redis bundles (Lua BitOp 1.0): 32-bit operations on Lua numbers, which
//! are first normalized to a signed 32-bit integer (rounded, taken modulo 2^32), as BitOp does.

use mlua::{Lua, Table, Variadic};

/// BitOp's `tobit`: round to the nearest integer (ties to even), keep the low 32 bits.
fn tobit(n: f64) -> i32 {
    if !n.is_finite() {
        return 0;
    }
    n.round_ties_even().rem_euclid(4_294_967_296.0) as u64 as u32 as i32
}

fn fold(args: Variadic<f64>, f: fn(i32, i32) -> i32) -> mlua::Result<i32> {
    let mut it = args.into_iter();
    let first = it
        .next()
        .ok_or_else(|| mlua::Error::runtime("bad argument #1 (number expected, got no value)"))?;
    Ok(it.fold(tobit(first), |acc, x| f(acc, tobit(x))))
}

/// The `bit` table.
pub fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("tobit", lua.create_function(|_, n: f64| Ok(tobit(n)))?)?;
    t.raw_set("bnot", lua.create_function(|_, n: f64| Ok(!tobit(n)))?)?;
    t.raw_set(
        "band",
        lua.create_function(|_, a: Variadic<f64>| fold(a, |x, y| x & y))?,
    )?;
    t.raw_set(
        "bor",
        lua.create_function(|_, a: Variadic<f64>| fold(a, |x, y| x | y))?,
    )?;
    t.raw_set(
        "bxor",
        lua.create_function(|_, a: Variadic<f64>| fold(a, |x, y| x ^ y))?,
    )?;
    let shift = |f: fn(i32, u32) -> i32| {
        move |_: &Lua, (x, n): (f64, f64)| Ok(f(tobit(x), (tobit(n) as u32) & 31))
    };
    t.raw_set(
        "lshift",
        lua.create_function(shift(|x, n| ((x as u32) << n) as i32))?,
    )?;
    t.raw_set(
        "rshift",
        lua.create_function(shift(|x, n| ((x as u32) >> n) as i32))?,
    )?;
    t.raw_set("arshift", lua.create_function(shift(|x, n| x >> n))?)?;
    t.raw_set(
        "rol",
        lua.create_function(shift(|x, n| (x as u32).rotate_left(n) as i32))?,
    )?;
    t.raw_set(
        "ror",
        lua.create_function(shift(|x, n| (x as u32).rotate_right(n) as i32))?,
    )?;
    t.raw_set(
        "bswap",
        lua.create_function(|_, x: f64| Ok(tobit(x).swap_bytes()))?,
    )?;
    t.raw_set(
        "tohex",
        lua.create_function(|_, (x, n): (f64, Option<f64>)| {
            let x = tobit(x) as u32;
            let n = n.map_or(8, tobit);
            let (upper, digits) = if n < 0 { (true, -n) } else { (false, n) };
            let digits = digits.clamp(1, 8) as usize;
            let masked = if digits == 8 {
                x
            } else {
                x & ((1u32 << (4 * digits)) - 1)
            };
            Ok(if upper {
                format!("{masked:0digits$X}")
            } else {
                format!("{masked:0digits$x}")
            })
        })?,
    )?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::tobit;

    #[test]
    fn tobit_wraps_and_rounds_as_bitop() {
        assert_eq!(tobit(4_294_967_295.0), -1);
        assert_eq!(tobit(4_294_967_296.0), 0);
        assert_eq!(tobit(-1.0), -1);
        assert_eq!(tobit(2.5), 2);
        assert_eq!(tobit(3.5), 4);
        assert_eq!(tobit(2_147_483_648.0), i32::MIN);
    }
}
