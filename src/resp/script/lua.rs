//! The Lua state: Lua 5.1 built from source by mlua (`vendored`), the sandbox
//! (`prelude.lua`), the libraries Redis ships (`bit`, `cjson`; see their modules), the `redis`
//! table, a memory cap, and the hook that lets SCRIPT KILL stop a running script.

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState, ffi};
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
