//! The Lua state: Lua 5.1 built from source by mlua (`vendored`), the sandbox
//! (`prelude.lua`), the libraries Redis ships (`bit`, `cjson`, `struct`, `cmsgpack`; see their
//! modules, and [`native`] for how the last two raise errors), the `redis` table, a memory cap,
//! and the hook that lets SCRIPT KILL stop a running script.

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mlua::{
    Function, HookTriggers, Lua, LuaOptions, MaybeSend, MultiValue, StdLib, Table, Value, VmState,
    ffi,
};
use sha1::{Digest, Sha1};
use tracing::{debug, info, warn};

/// What a kill request makes the running script raise.
pub const KILLED: &str = "Script killed by user with SCRIPT KILL...";
/// The chunk name Redis gives scripts (errors read `user_script:<line>: …`).
pub const CHUNK: &str = "@user_script";
/// The sandbox's chunk name.
const PRELUDE: &str = "=tally_prelude";
/// The kill flag is looked at every this many VM instructions.
const HOOK_EVERY: u32 = 10_000;

/// One interpreter and the handles into its sandbox.
pub struct State {
    pub lua: Lua,
    /// The read-only globals scripts run with.
    pub env: Table,
    /// Per-run callbacks (`dispatch`, `setresp`), set by the runner.
    pub hooks: Table,
    /// `run(f, handler)`: xpcall.
    pub run: Function,
    /// The error handler: adds the script line an error came from (as Redis's).
    pub handler: Function,
}

/// Lowercase hex SHA-1, as `redis.sha1hex` and script ids.
pub fn sha1hex(b: &[u8]) -> String {
    Sha1::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

impl State {
    /// A fresh interpreter capped at `memory` bytes, whose scripts stop with [`KILLED`] once
    /// `kill` is set.
    pub fn new(memory: usize, kill: Arc<AtomicBool>) -> mlua::Result<State> {
        let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH;
        let lua = Lua::new_with(libs, LuaOptions::default())?;
        let g = lua.globals();
        g.raw_set("bit", super::bit::library(&lua)?)?;
        g.raw_set("cjson", super::cjson::library(&lua)?)?;
        g.raw_set("struct", super::structlib::library(&lua)?)?;
        g.raw_set("cmsgpack", super::msgpack::library(&lua)?)?;
        g.raw_set(
            "__tally_sha1hex",
            lua.create_function(|lua, v: Value| {
                let s = match lua.coerce_string(v)? {
                    Some(s) => s.as_bytes().to_vec(),
                    None => return Err(mlua::Error::runtime("wrong number of arguments")),
                };
                Ok(sha1hex(&s))
            })?,
        )?;
        g.raw_set(
            "__tally_log",
            lua.create_function(|lua, (level, msg): (i64, mlua::Variadic<Value>)| {
                let mut text = String::new();
                for (i, m) in msg.into_iter().enumerate() {
                    if i > 0 {
                        text.push(' ');
                    }
                    if let Some(s) = lua.coerce_string(m)? {
                        text.push_str(&s.to_string_lossy());
                    }
                }
                match level {
                    0 | 1 => debug!(target: "tally::script", "{text}"),
                    2 => info!(target: "tally::script", "{text}"),
                    _ => warn!(target: "tally::script", "{text}"),
                }
                Ok(())
            })?,
        )?;
        // SAFETY: `redis_call`/`redis_pcall` follow the Lua C API protocol (see there).
        unsafe {
            g.raw_set("__tally_call", lua.create_c_function(redis_call)?)?;
            g.raw_set("__tally_pcall", lua.create_c_function(redis_pcall)?)?;
        }
        g.raw_set("__tally_version", crate::resp::REDIS_VERSION)?;
        let (env, hooks, run): (Table, Table, Function) = lua
            .load(include_str!("prelude.lua"))
            .set_name(PRELUDE)
            .call(())?;
        lua.set_named_registry_value(HOOKS, &hooks)?;
        let handler = lua.create_function(|lua, err: Value| error_table(lua, err))?;
        // Global, so that coroutines a script makes run it too (else `coroutine.wrap(function()
        // while true do end end)()` could not be killed).
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                // Still running after this many instructions: hand the tokio worker's other
                // tasks (its queue, its LIFO slot) to a new worker thread, so that they are
                // not stuck behind this script. Once done, the call is nearly free.
                super::blocking(|| ());
                if kill.load(Ordering::Relaxed) {
                    Err(mlua::Error::runtime(KILLED))
                } else {
                    Ok(VmState::Continue)
                }
            },
        )?;
        lua.set_memory_limit(memory)?;
        Ok(State {
            lua,
            env,
            hooks,
            run,
            handler,
        })
    }

    /// Compiles a script body into a function over the sandbox's globals.
    pub fn compile(&self, body: &[u8]) -> mlua::Result<Function> {
        self.lua
            .load(body)
            .set_name(CHUNK)
            .set_environment(self.env.clone())
            .into_function()
    }
}

/// Where the per-run callbacks table lives in the registry.
const HOOKS: &str = "tally_hooks";

/// `redis.call`: runs `hooks.dispatch(...)`, which answers `ok, value`; raises `value` (an
/// `{err=…}` table) unless ok.
unsafe extern "C-unwind" fn redis_call(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with its arguments on the stack.
    unsafe { dispatch(state, true) }
}

/// `redis.pcall`: the same, returning the error table instead of raising it.
unsafe extern "C-unwind" fn redis_pcall(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: as `redis_call`.
    unsafe { dispatch(state, false) }
}

/// Calls the dispatch function with this function's arguments. Holds no Rust value that
/// needs dropping, so a Lua error (a longjmp) through it is harmless.
unsafe fn dispatch(state: *mut ffi::lua_State, raise: bool) -> c_int {
    // SAFETY: plain Lua C API calls on a valid state; the stack is grown before use.
    unsafe {
        let n = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 4, std::ptr::null());
        ffi::lua_getfield(state, ffi::LUA_REGISTRYINDEX, c"tally_hooks".as_ptr());
        ffi::lua_getfield(state, -1, c"dispatch".as_ptr());
        ffi::lua_remove(state, -2);
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, n, 2);
        if raise && ffi::lua_toboolean(state, -2) == 0 {
            ffi::lua_error(state);
        }
        1
    }
}

/// The innermost message of an error raised by Rust code (a callback's error wraps its cause).
fn message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::CallbackError { cause, .. } => message(cause),
        e => e.to_string(),
    }
}

/// Redis's error handler: any error becomes `{err=…}` (a plain message gets `ERR `), with the
/// `source` and `line` of the innermost script frame.
fn error_table(lua: &Lua, err: Value) -> mlua::Result<Table> {
    // As Redis's handler: the function that raised, or its caller if that was a C function
    // (or the sandbox's own metamethods, which stand in for Redis's C checks).
    let frame = |level| {
        lua.inspect_stack(level, |d| {
            let s = d.source();
            let ours = s.what == "C" || s.source.as_deref() == Some(PRELUDE);
            (ours, s.source.map(|c| c.into_owned()), d.current_line())
        })
    };
    let mut at = None;
    for level in 1..8 {
        at = frame(level);
        if !matches!(at, Some((true, ..))) {
            break;
        }
    }
    let t = match err {
        Value::Table(t) => t,
        other => {
            let msg = match other {
                Value::String(s) => s.to_string_lossy(),
                // A library written in Rust: Lua's `luaL_error` would name the script line.
                Value::Error(e) => match (message(&e), &at) {
                    (m, _) if m == KILLED => m,
                    (m, Some((_, Some(src), Some(line)))) => {
                        format!("{}:{line}: {m}", src.trim_start_matches('@'))
                    }
                    (m, _) => m,
                },
                v => lua
                    .coerce_string(v)?
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_else(|| "execution failure".into()),
            };
            let t = lua.create_table()?;
            t.raw_set("err", format!("ERR {msg}"))?;
            t
        }
    };
    if let Some((_, Some(source), line)) = at {
        t.raw_set("source", source)?;
        t.raw_set("line", line.map_or(-1, |l| l as i64))?;
    }
    Ok(t)
}

/// Lua's `LUAI_MAXCSTACK`: the most stack slots a C function may use. The C libraries `native`
/// stands in for fail (with `stack overflow (…)`) where they would pass it.
pub const MAX_C_STACK: usize = 8000;

/// How a function made with [`native`] fails.
#[derive(Debug)]
pub enum Raise {
    /// `luaL_argerror`: `bad argument #n to 'name' (msg)`, after the caller's position.
    Arg(i32, Vec<u8>),
    /// `luaL_error`: the caller's position, then the message.
    Error(Vec<u8>),
    /// The VM's own errors inside a C function (`table index is nil`) carry no position.
    Bare(Vec<u8>),
    /// An error of the interpreter itself (out of memory, …), passed on as it is.
    Lua(mlua::Error),
}

impl From<mlua::Error> for Raise {
    fn from(e: mlua::Error) -> Raise {
        Raise::Lua(e)
    }
}

/// `luaL_checkstack`'s failure.
pub fn stack_overflow(what: &str) -> Raise {
    Raise::Error(format!("stack overflow ({what})").into())
}

/// A native function's results, kept in a Lua table: a C function may return thousands, and
/// mlua's stack of references held from Rust is far smaller.
pub struct Out {
    t: Table,
    n: usize,
}

impl Out {
    pub fn push(&mut self, v: Value) -> mlua::Result<()> {
        self.n += 1;
        self.t.raw_set(self.n, v)
    }

    pub fn pop(&mut self) -> mlua::Result<Value> {
        let v = self.t.raw_get(self.n)?;
        self.t.raw_set(self.n, Value::Nil)?;
        self.n -= 1;
        Ok(v)
    }

    pub fn last(&self) -> mlua::Result<Value> {
        self.t.raw_get(self.n)
    }

    pub fn set(&self, i: usize, v: Value) -> mlua::Result<()> {
        self.t.raw_set(i, v)
    }

    pub fn len(&self) -> usize {
        self.n
    }
}

/// A library function written in Rust that raises its errors as a C function of Lua's would:
/// a plain string (so `pcall` hands scripts the text), named after the field it was called
/// through (`bad argument #1 to 'pack'`) and prefixed with the calling script line. An mlua
/// callback can only raise mlua's error userdata, so the callback reports failure as values
/// and a C closure (`native_call`) raises them.
pub fn native<F>(lua: &Lua, f: F) -> mlua::Result<Function>
where
    F: Fn(&Lua, MultiValue, &mut Out) -> Result<(), Raise> + MaybeSend + 'static,
{
    let inner = lua.create_function(move |lua, args: MultiValue| {
        let mut out = Out {
            t: lua.create_table()?,
            n: 0,
        };
        let (kind, msg) = match f(lua, args, &mut out) {
            Ok(()) => return Ok((true, Value::Table(out.t), Value::Integer(out.n as i64))),
            Err(Raise::Lua(e)) => return Err(e),
            Err(Raise::Arg(n, m)) => (Value::Integer(n.into()), m),
            Err(Raise::Error(m)) => (Value::Nil, m),
            Err(Raise::Bare(m)) => (Value::Boolean(false), m),
        };
        Ok((false, kind, Value::String(lua.create_string(msg)?)))
    })?;
    // SAFETY: `native_call` follows the C API protocol; its one upvalue is `inner`.
    unsafe { lua.exec_raw(inner, |state| ffi::lua_pushcclosure(state, native_call, 1)) }
}

/// Calls the closure's Rust function (upvalue 1) with its arguments; it answers `true,
/// results, count` or `false, kind, message` (see `native`). Holds no Rust value that needs
/// dropping, so a Lua error (a longjmp) through it is harmless.
unsafe extern "C-unwind" fn native_call(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: plain Lua C API calls on a valid state. A C function starts with LUA_MINSTACK
    // free slots, enough for the one push before the call; results get their own check.
    unsafe {
        let n = ffi::lua_gettop(state);
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, n, 3);
        if ffi::lua_toboolean(state, 1) != 0 {
            let count = ffi::lua_tointeger(state, 3) as c_int;
            ffi::lua_settop(state, 2);
            ffi::lua_remove(state, 1);
            if ffi::lua_checkstack(state, count) == 0 {
                ffi::luaL_error(state, c"stack overflow (too many results)".as_ptr());
            }
            for i in 1..=count {
                ffi::lua_rawgeti(state, 1, i.into());
            }
            return count;
        }
        match ffi::lua_type(state, 2) {
            ffi::LUA_TNUMBER => {
                let arg = ffi::lua_tointeger(state, 2) as c_int;
                ffi::luaL_argerror(state, arg, ffi::lua_tostring(state, 3))
            }
            ffi::LUA_TNIL => {
                ffi::luaL_where(state, 1);
                ffi::lua_pushvalue(state, 3);
                ffi::lua_concat(state, 2);
                ffi::lua_error(state)
            }
            _ => {
                ffi::lua_settop(state, 3);
                ffi::lua_error(state)
            }
        }
    }
}

/// `luaL_typename` of argument `i` (1-based; `no value` past the last).
pub fn type_name(args: &MultiValue, i: usize) -> &'static str {
    match args.get(i - 1) {
        None => "no value",
        Some(Value::Nil) => "nil",
        Some(Value::Boolean(_)) => "boolean",
        Some(Value::Integer(_) | Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Table(_)) => "table",
        Some(Value::Function(_)) => "function",
        Some(Value::Thread(_)) => "thread",
        Some(_) => "userdata",
    }
}

fn type_error(args: &MultiValue, i: usize, want: &str) -> Raise {
    Raise::Arg(
        i as i32,
        format!("{want} expected, got {}", type_name(args, i)).into(),
    )
}

/// `luaL_checknumber`: a number, or a string that reads as one.
pub fn check_number(lua: &Lua, args: &MultiValue, i: usize) -> Result<f64, Raise> {
    let v = args.get(i - 1).cloned().unwrap_or(Value::Nil);
    lua.coerce_number(v)?
        .ok_or_else(|| type_error(args, i, "number"))
}

/// `luaL_checklstring`: a string, or a number in Lua's `%.14g`.
pub fn check_string(lua: &Lua, args: &MultiValue, i: usize) -> Result<Vec<u8>, Raise> {
    let v = args.get(i - 1).cloned().unwrap_or(Value::Nil);
    match lua.coerce_string(v)? {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => Err(type_error(args, i, "string")),
    }
}

/// `luaL_checkinteger`: as `check_number`, then cast to `lua_Integer`.
pub fn check_integer(lua: &Lua, args: &MultiValue, i: usize) -> Result<i64, Raise> {
    check_number(lua, args, i).map(to_integer)
}

/// `luaL_optinteger`: `default` when the argument is absent or nil.
pub fn opt_integer(lua: &Lua, args: &MultiValue, i: usize, default: i64) -> Result<i64, Raise> {
    match args.get(i - 1) {
        None | Some(Value::Nil) => Ok(default),
        Some(_) => check_integer(lua, args, i),
    }
}

/// C's `(int64_t)d` on x86-64 (`cvttsd2si`): truncation, and `INT64_MIN` for NaN or a value
/// out of range (where C leaves it undefined and Redis's build gets this).
pub fn to_integer(d: f64) -> i64 {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if !(-TWO_63..TWO_63).contains(&d) {
        i64::MIN
    } else {
        d as i64
    }
}
