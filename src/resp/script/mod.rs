//! Lua scripting, as Redis 7 has it: `EVAL`, `EVALSHA`, `EVAL_RO`, `EVALSHA_RO` and
//! `SCRIPT LOAD | EXISTS | FLUSH | KILL`, on Lua 5.1 (mlua, built from source).
//!
//! - Atomic: a script runs inside `Engine::run_exclusive`, so no other command runs meanwhile,
//!   and everything it wrote becomes **one** WAL record of its effects (replay never runs
//!   Lua): after a crash either all of a script's writes are there or none. A runtime error
//!   keeps the writes made before it (as Redis); the reply waits for the fsync like any write.
//! - `redis.call` / `redis.pcall` run the same command code as a client's command (parsing,
//!   `Cmd::exec`) inside the script's transaction; conversions are in `convert`, the sandbox in
//!   `lua` and `prelude.lua`, the libraries in `bit`, `cjson`, `structlib` (`struct`) and
//!   `msgpack` (`cmsgpack`).
//! - Limits: the interpreter's memory is capped (`--script-memory-bytes`); past
//!   `--busy-script-ms` other clients get `-BUSY` and `SCRIPT KILL` stops a script that has not
//!   written yet; at most `config::MAX_CACHED_SCRIPTS` cached scripts (then the cache is
//!   emptied, as SCRIPT FLUSH). The cache is not persisted: after a restart EVALSHA gets
//!   `NOSCRIPT`, as Redis.
//! - Left out: `SCRIPT DEBUG`, shebang flags, FUNCTION.

mod bit;
mod cjson;
mod convert;
mod lua;
mod msgpack;
mod structlib;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mlua::{Function, MultiValue, Table, Value};

use super::Shared;
use super::admin::{self, Session};
use super::command::{self, int_arg};
use super::reply::Reply;
use crate::config::{self, MAX_CACHED_SCRIPTS};
use crate::engine::Tx;
use crate::error::Error;

/// The interpreter and the script cache (sha -> compiled function).
struct Vm {
    state: lua::State,
    cache: HashMap<String, Function>,
}

/// Scripting state shared by all connections.
pub struct Scripts {
    vm: Mutex<Option<Vm>>,
    kill: Arc<AtomicBool>,
    /// The running script has written (SCRIPT KILL then refuses: UNKILLABLE).
    wrote: AtomicBool,
    /// The server is shutting down: every script is stopped.
    stopping: AtomicBool,
    memory: usize,
}

/// A parsed EVAL-family call.
pub struct Call {
    source: Source,
    keys: Vec<Bytes>,
    argv: Vec<Bytes>,
    read_only: bool,
}

enum Source {
    Body(Bytes),
    Sha(String),
}

/// True for the commands that run a script.
pub fn is_script(name: &[u8]) -> bool {
    [&b"eval"[..], b"evalsha", b"eval_ro", b"evalsha_ro"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

/// Parses EVAL/EVALSHA/EVAL_RO/EVALSHA_RO `script numkeys key... arg...` (arity checked).
pub fn parse(name: &str, args: &[Bytes]) -> Result<Call, Reply> {
    let n = int_arg(&args[2])?;
    if n < 0 {
        return Err(Reply::err("Number of keys can't be negative"));
    }
    let n = n as usize;
    if n > args.len() - 3 {
        return Err(Reply::err(
            "Number of keys can't be greater than number of args",
        ));
    }
    let keys = args[3..3 + n].to_vec();
    for k in &keys {
        config::check_key(k).map_err(Reply::from)?;
    }
    let source = if name.starts_with("evalsha") {
        Source::Sha(String::from_utf8_lossy(&args[1]).to_ascii_lowercase())
    } else {
        if args[1].len() > config::MAX_SCRIPT_BYTES {
            return Err(Reply::err(format!(
                "script too large: at most {} bytes",
                config::MAX_SCRIPT_BYTES
            )));
        }
        Source::Body(args[1].clone())
    };
    Ok(Call {
        source,
        keys,
        argv: args[3 + n..].to_vec(),
        read_only: name.ends_with("_ro"),
    })
}

/// Runs `f` where it may block for a long time: on a multi-threaded runtime tokio moves this
/// worker's other tasks elsewhere first (a long script must not stall other connections).
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn err_table(lua: &mlua::Lua, msg: &str) -> mlua::Result<Value> {
    let t = lua.create_table()?;
    t.raw_set("err", msg)?;
    Ok(Value::Table(t))
}

impl Scripts {
    /// No interpreter yet (made at the first script); `memory` caps it.
    pub fn new(memory: usize) -> Scripts {
        Scripts {
            vm: Mutex::new(None),
            kill: Arc::default(),
            wrote: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            memory,
        }
    }

    fn with_vm<R>(&self, f: impl FnOnce(&mut Vm) -> R) -> Result<R, Reply> {
        let mut guard = self.vm.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let state = lua::State::new(self.memory, self.kill.clone())
                .map_err(|e| Reply::err(format!("cannot start the Lua interpreter: {e}")))?;
            *guard = Some(Vm {
                state,
                cache: HashMap::new(),
            });
        }
        Ok(f(guard.as_mut().expect("made above")))
    }

    /// Runs a parsed EVAL-family call inside `tx` (the caller holds the world lock).
    pub fn run(
        &self,
        tx: &mut Tx<'_>,
        session: &mut Session,
        shared: &Shared,
        call: &Call,
    ) -> Reply {
        self.with_vm(|vm| {
            let (f, sha) = match &call.source {
                Source::Body(b) => match vm.load(b) {
                    Ok(found) => found,
                    Err(r) => return r,
                },
                Source::Sha(sha) => match vm.cache.get(sha) {
                    Some(f) => (f.clone(), sha.clone()),
                    None => {
                        return Reply::Error(
                            "NOSCRIPT No matching script. Please use EVAL.".into(),
                        );
                    }
                },
            };
            // Once shutting down, a new script is stopped at once too.
            self.kill
                .store(self.stopping.load(Ordering::Relaxed), Ordering::Relaxed);
            self.wrote.store(false, Ordering::Relaxed);
            let out = self.execute(vm, &f, &sha, tx, session, shared, call);
            if matches!(out, Err(mlua::Error::MemoryError(_)))
                || vm.state.lua.used_memory() > self.memory / 2
            {
                let _ = vm.state.lua.gc_collect();
            }
            match out {
                Ok(r) => r,
                Err(mlua::Error::MemoryError(_)) => self.memory_error(),
                Err(e) => Reply::err(format!("Error running script {sha}: {e}")),
            }
        })
        .unwrap_or_else(|r| r)
    }

    fn memory_error(&self) -> Reply {
        Reply::err(format!(
            "script ran out of memory: the Lua interpreter is capped at {} bytes \
             (--script-memory-bytes)",
            self.memory
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn execute(
        &self,
        vm: &Vm,
        f: &Function,
        sha: &str,
        tx: &mut Tx<'_>,
        session: &mut Session,
        shared: &Shared,
        call: &Call,
    ) -> mlua::Result<Reply> {
        let lua = &vm.state.lua;
        let globals = lua.globals();
        globals.raw_set("KEYS", byte_table(lua, &call.keys)?)?;
        globals.raw_set("ARGV", byte_table(lua, &call.argv)?)?;
        let resp = Cell::new(2u8);
        let hooks = &vm.state.hooks;
        lua.scope(|scope| {
            let dispatch = scope.create_function_mut(|lua, args: MultiValue| {
                let Some(args) = command_args(lua, args)? else {
                    return Ok((
                        false,
                        err_table(
                            lua,
                            "ERR Lua redis lib command arguments must be strings or integers",
                        )?,
                    ));
                };
                if args.is_empty() {
                    return Ok((
                        false,
                        err_table(
                            lua,
                            "ERR Please specify at least one argument for this redis lib call",
                        )?,
                    ));
                }
                let reply = in_script(tx, session, shared, call.read_only, &args);
                if tx.wrote() {
                    self.wrote.store(true, Ordering::Relaxed);
                }
                match reply {
                    Reply::Error(e) => Ok((false, err_table(lua, &e)?)),
                    r => Ok((true, convert::to_lua(lua, r, resp.get())?)),
                }
            })?;
            let setresp = scope.create_function(|_, v: u8| {
                resp.set(v);
                Ok(())
            })?;
            hooks.raw_set("dispatch", dispatch)?;
            hooks.raw_set("setresp", setresp)?;
            let (ok, v): (bool, Value) =
                vm.state.run.call((f.clone(), vm.state.handler.clone()))?;
            if ok {
                return Ok(convert::to_reply(&v, resp.get()));
            }
            Ok(match v {
                Value::Table(t) => script_error(&t, sha),
                Value::String(s) if s.to_string_lossy().contains("not enough memory") => {
                    self.memory_error()
                }
                v => Reply::err(format!(
                    "Error running script {sha}: {}",
                    lua.coerce_string(v)?
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default()
                )),
            })
        })
    }

    /// SCRIPT LOAD | EXISTS | FLUSH | KILL.
    pub fn script(&self, shared: &Shared, args: &[Bytes]) -> Reply {
        let sub = args[1].to_ascii_lowercase();
        let engine = &shared.engine;
        let in_vm = |f: &dyn Fn(&mut Vm) -> Reply| -> Reply {
            // Under the world lock: the interpreter is not shared with a running script.
            match engine.run_exclusive(|_| Ok(self.with_vm(f).unwrap_or_else(|r| r))) {
                Ok(ack) => ack.value,
                Err(e) => Reply::from(e),
            }
        };
        match (sub.as_slice(), args.len()) {
            (b"load", 3) => {
                if args[2].len() > config::MAX_SCRIPT_BYTES {
                    return Reply::err(format!(
                        "script too large: at most {} bytes",
                        config::MAX_SCRIPT_BYTES
                    ));
                }
                in_vm(&|vm| match vm.load(&args[2]) {
                    Ok((_, sha)) => Reply::Bulk(sha.into_bytes()),
                    Err(r) => r,
                })
            }
            (b"exists", n) if n >= 3 => in_vm(&|vm| {
                Reply::Array(
                    args[2..]
                        .iter()
                        .map(|s| {
                            let sha = String::from_utf8_lossy(s).to_ascii_lowercase();
                            Reply::Int(i64::from(vm.cache.contains_key(&sha)))
                        })
                        .collect(),
                )
            }),
            (b"flush", 2) => in_vm(&|vm| {
                vm.cache.clear();
                Reply::Ok
            }),
            (b"flush", 3)
                if matches!(args[2].to_ascii_lowercase().as_slice(), b"sync" | b"async") =>
            {
                in_vm(&|vm| {
                    vm.cache.clear();
                    Reply::Ok
                })
            }
            (b"flush", _) => Reply::err("SCRIPT FLUSH only support SYNC|ASYNC option"),
            (b"kill", 2) => self.kill(shared),
            (b"load" | b"exists" | b"kill", _) => Reply::err(format!(
                "wrong number of arguments for 'script|{}' command",
                String::from_utf8_lossy(&sub)
            )),
            _ => admin::unknown_subcommand(&args[1], "SCRIPT"),
        }
    }

    /// Stops the running script, if any, whether it wrote or not: the server is shutting down
    /// (its client gets the kill error; what it wrote before is kept, as after any error).
    pub fn stop_for_shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.kill.store(true, Ordering::Relaxed);
    }

    fn kill(&self, shared: &Shared) -> Reply {
        if shared.engine.script_elapsed().is_none() {
            return Reply::Error("NOTBUSY No scripts in execution right now.".into());
        }
        if self.wrote.load(Ordering::Relaxed) {
            return Reply::Error(
                "UNKILLABLE Sorry the script already executed write commands against the \
                 dataset. You can either wait the script termination or kill the server in a \
                 hard way using the SHUTDOWN NOSAVE command."
                    .into(),
            );
        }
        self.kill.store(true, Ordering::Relaxed);
        Reply::Ok
    }
}

impl Vm {
    /// The cached function for `body`, compiling it first if new.
    fn load(&mut self, body: &[u8]) -> Result<(Function, String), Reply> {
        let sha = lua::sha1hex(body);
        if let Some(f) = self.cache.get(&sha) {
            return Ok((f.clone(), sha));
        }
        let f = self.state.compile(body).map_err(|e| {
            let msg = match e {
                mlua::Error::SyntaxError { message, .. } => message,
                mlua::Error::MemoryError(m) => m,
                e => e.to_string(),
            };
            Reply::err(format!("Error compiling script (new function): {msg}"))
        })?;
        if self.cache.len() >= MAX_CACHED_SCRIPTS {
            self.cache.clear();
        }
        self.cache.insert(sha.clone(), f.clone());
        Ok((f, sha))
    }
}

fn byte_table(lua: &mlua::Lua, items: &[Bytes]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(items.len(), 0)?;
    for (i, b) in items.iter().enumerate() {
        t.raw_seti(i + 1, lua.create_string(b)?)?;
    }
    Ok(t)
}

/// A `redis.call` argument list as bytes: strings as they are, numbers as Lua prints them;
/// `None` if any is of another type.
fn command_args(lua: &mlua::Lua, args: MultiValue) -> mlua::Result<Option<Vec<Bytes>>> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a {
            Value::String(s) => out.push(Bytes::copy_from_slice(&s.as_bytes())),
            Value::Integer(_) | Value::Number(_) => match lua.coerce_string(a)? {
                Some(s) => out.push(Bytes::copy_from_slice(&s.as_bytes())),
                None => return Ok(None),
            },
            _ => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// `{err=…, source=…, line=…}` as the client's error: `<err> script: <sha>, on <source>:<line>.`
fn script_error(t: &Table, sha: &str) -> Reply {
    let text = |k: &str| match t.raw_get::<Value>(k) {
        Ok(Value::String(s)) => Some(s.to_string_lossy()),
        Ok(Value::Integer(n)) => Some(n.to_string()),
        Ok(Value::Number(n)) => Some((n as i64).to_string()),
        _ => None,
    };
    let err = text("err").unwrap_or_else(|| "ERR unknown error".into());
    match (text("source"), text("line")) {
        (Some(source), Some(line)) => {
            Reply::Error(format!("{err} script: {sha}, on {source}:{line}."))
        }
        _ => Reply::Error(err),
    }
}

/// One `redis.call` inside a script: Redis's checks, then the same code a client's command
/// runs.
fn in_script(
    tx: &mut Tx<'_>,
    session: &mut Session,
    shared: &Shared,
    read_only: bool,
    args: &[Bytes],
) -> Reply {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let Some(spec) = command::lookup(&name) else {
        return Reply::err("Unknown Redis command called from script");
    };
    if !spec.arity_ok(args.len()) {
        return Reply::err("Wrong number of args calling Redis command from script");
    }
    if spec.flags.contains(&"noscript") {
        return Reply::err("This Redis command is not allowed from script");
    }
    if read_only && spec.flags.contains(&"write") {
        return Reply::err("Write commands are not allowed from read-only scripts.");
    }
    match command::prepare(&name, args) {
        Err(r) => r,
        Ok(Some(cmd)) => {
            if let Some(e) = cmd.keys().iter().find_map(|k| config::check_key(k).err()) {
                return Reply::from(e);
            }
            cmd.exec(tx).unwrap_or_else(Reply::from)
        }
        Ok(None) => admin::run(&name, args, session, shared).unwrap_or_else(|| {
            Reply::from(Error::InvalidArgument(format!(
                "'{name}' cannot run inside a script"
            )))
        }),
    }
}
