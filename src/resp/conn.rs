//! One client connection: read, parse every complete command, run them in order, wait once for
//! the WAL to acknowledge the newest LSN any of them produced, then write all their replies.
//! Pipelined writes therefore share one group commit, and no reply leaves before the fsync
//! that covers it. Output is bounded per connection: replies are sent (after that wait)
//! whenever 64 KiB are pending, large array replies element by element, and everything read
//! in one go is answered before more is read, so a client that never reads its replies pins
//! at most one reply (itself capped: `config::MAX_REPLY_BYTES`) plus 64 KiB.
//!
//! MULTI queues commands; EXEC runs them as one engine transaction (one WAL record, time frozen).
//! Unknown commands and wrong arity while queuing abort the EXEC (EXECABORT); other errors are
//! per command, as in Redis.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::debug;

use super::admin::{self, Session};
use super::command::{self, Cmd, arity_error};
use super::parse::{self, ProtocolError};
use super::reply::Reply;
use super::script::{self, blocking};
use super::{Shared, stopped};
use crate::config::{MAX_MULTI_BYTES, MAX_MULTI_COMMANDS};
use crate::engine::{Engine, Watched};
use crate::error::Error;

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// What one queued argument counts against `MAX_MULTI_BYTES` beyond its own bytes.
const QUEUED_ARG_OVERHEAD: usize = 32;
/// Replies pending beyond this are sent before the next command runs (or, inside a large
/// array reply, before the next element is encoded).
const OUT_FLUSH: usize = 64 * 1024;

struct Conn {
    session: Session,
    /// Queued commands while in MULTI.
    multi: Option<Vec<Vec<Bytes>>>,
    /// Argument bytes queued in `multi` (capped at `config::MAX_MULTI_BYTES`).
    queued_bytes: usize,
    /// A queue-time error happened inside MULTI: EXEC must abort.
    dirty: bool,
    /// WATCHed keys, until EXEC, DISCARD, UNWATCH or the connection's end.
    watched: Vec<Watched>,
}

/// What one command produced.
struct Outcome {
    reply: Reply,
    /// Wait for this LSN before sending (0: nothing to wait for).
    lsn: u64,
    close: bool,
}

fn reply(r: Reply) -> Outcome {
    Outcome {
        reply: r,
        lsn: 0,
        close: false,
    }
}

/// A command's outcome: its reply once the WAL acknowledges what it wrote or saw; an error
/// waits for what it revealed (`Engine::lsn_seen_by`).
fn outcome(engine: &Engine, result: crate::error::Result<crate::engine::Ack<Reply>>) -> Outcome {
    match result {
        Ok(ack) => Outcome {
            reply: ack.value,
            lsn: ack.lsn,
            close: false,
        },
        Err(e) => Outcome {
            lsn: engine.lsn_seen_by(&e),
            reply: Reply::from(e),
            close: false,
        },
    }
}

/// Serves one connection until it closes, errs, or the server shuts down.
pub async fn run(
    shared: Arc<Shared>,
    mut sock: TcpStream,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = sock.set_nodelay(true);
    shared.clients.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn {
        session: Session {
            id,
            proto: 2,
            name: None,
        },
        multi: None,
        queued_bytes: 0,
        dirty: false,
        watched: Vec::new(),
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut parser = parse::Parser::default();
    let mut out = Outbox {
        buf: Vec::with_capacity(READ_CHUNK),
        lsn: 0,
    };
    let engine = &shared.engine;
    loop {
        let mut close = false;
        loop {
            let reply = match parser.next(&mut buf) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    if !engine.census_done() && conn.needs_key_counts(&args) {
                        // Send what is ready first: only this command waits.
                        if out.flush(engine, &mut sock).await.is_err() {
                            close = true;
                            out.buf.clear();
                            break;
                        }
                        crate::durable::counted(engine).await;
                    }
                    let o = conn.handle(&shared, args);
                    out.lsn = out.lsn.max(o.lsn);
                    close = o.close;
                    o.reply
                }
                Ok(None) => break,
                Err(ProtocolError(m)) => {
                    debug!(client = id, "protocol error: {m}");
                    close = true;
                    Reply::err(format!("Protocol error: {m}"))
                }
            };
            if out
                .push(reply, conn.session.proto, engine, &mut sock)
                .await
                .is_err()
            {
                close = true;
                out.buf.clear();
            }
            if close {
                break;
            }
        }
        if out.flush(engine, &mut sock).await.is_err() || close {
            break;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            r = sock.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    engine.unwatch(std::mem::take(&mut conn.watched));
    shared.clients.fetch_sub(1, Ordering::Relaxed);
}

/// Replies waiting to be sent, and the newest LSN they show.
struct Outbox {
    buf: Vec<u8>,
    lsn: u64,
}

impl Outbox {
    /// Sends what is pending once the WAL acknowledges `lsn`. Fail-stop: if the WAL cannot
    /// acknowledge, nothing is sent and the connection must close, so the client sees an
    /// unknown outcome rather than a false success. `Err` means close (that, or a broken socket).
    async fn flush(&mut self, engine: &Engine, sock: &mut TcpStream) -> Result<(), ()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.lsn > 0 && crate::durable::acked(engine, self.lsn).await.is_err() {
            return Err(());
        }
        sock.write_all(&self.buf).await.map_err(|_| ())?;
        self.buf.clear();
        Ok(())
    }

    /// Encodes `reply`, sending whenever [`OUT_FLUSH`] bytes are pending. A top-level array
    /// (MGET, EXEC) is encoded element by element and each element freed once encoded, so a
    /// large reply is never held twice; pipelined commands stop piling up replies when the
    /// client does not read them (the send waits for it).
    async fn push(
        &mut self,
        reply: Reply,
        proto: u8,
        engine: &Engine,
        sock: &mut TcpStream,
    ) -> Result<(), ()> {
        match reply {
            Reply::Array(items) => {
                Reply::encode_array_header(items.len(), &mut self.buf);
                for item in items {
                    item.encode(proto, &mut self.buf);
                    if self.buf.len() >= OUT_FLUSH {
                        self.flush(engine, sock).await?;
                    }
                }
            }
            r => r.encode(proto, &mut self.buf),
        }
        if self.buf.len() >= OUT_FLUSH {
            self.flush(engine, sock).await?;
        }
        Ok(())
    }
}

/// Redis's message for an unknown command: the name and the first arguments, quoted, capped
/// at 128 bytes, newlines turned into spaces.
fn unknown_command(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0][..args[0].len().min(128)]).into_owned();
    let mut rest = String::new();
    for a in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let take = a.len().min(128 - rest.len());
        rest += &format!("'{}' ", String::from_utf8_lossy(&a[..take]));
    }
    let msg = format!("unknown command '{name}', with args beginning with: {rest}");
    Reply::err(msg.replace(['\r', '\n'], " "))
}

impl Conn {
    /// True if running `args` now reports key counts: DBSIZE or INFO outside MULTI, or an EXEC
    /// that queued one.
    fn needs_key_counts(&self, args: &[Bytes]) -> bool {
        match &self.multi {
            Some(queue) if args[0].eq_ignore_ascii_case(b"exec") => {
                queue.iter().any(|q| admin::needs_key_counts(q))
            }
            Some(_) => false,
            None => admin::needs_key_counts(args),
        }
    }

    fn handle(&mut self, shared: &Shared, args: Vec<Bytes>) -> Outcome {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let Some(index) = command::lookup_index(&name) else {
            self.dirty |= self.multi.is_some();
            return reply(unknown_command(&args));
        };
        shared.calls[index].fetch_add(1, Ordering::Relaxed);
        let spec = &command::TABLE[index];
        if !spec.arity_ok(args.len()) {
            self.dirty |= self.multi.is_some();
            return reply(arity_error(spec.name));
        }
        if let Some(r) = self.busy(shared, &name, &args) {
            return reply(r);
        }
        match name.as_str() {
            "quit" => {
                return Outcome {
                    reply: Reply::Ok,
                    lsn: 0,
                    close: true,
                };
            }
            "multi" if self.multi.is_some() => {
                return reply(Reply::err("MULTI calls can not be nested"));
            }
            "multi" => {
                self.multi = Some(Vec::new());
                self.queued_bytes = 0;
                return reply(Reply::Ok);
            }
            "exec" => return self.exec(shared),
            "discard" => {
                self.dirty = false;
                shared.engine.unwatch(std::mem::take(&mut self.watched));
                return reply(match self.multi.take() {
                    Some(_) => Reply::Ok,
                    None => Reply::err("DISCARD without MULTI"),
                });
            }
            "watch" if self.multi.is_some() => {
                return reply(Reply::err("WATCH inside MULTI is not allowed"));
            }
            "watch" => return reply(self.watch(shared, &args)),
            "unwatch" => {
                shared.engine.unwatch(std::mem::take(&mut self.watched));
                return reply(Reply::Ok);
            }
            "script" if self.multi.is_none() => {
                return reply(blocking(|| shared.scripts.script(shared, &args)));
            }
            _ => {}
        }
        if let Some(queue) = &mut self.multi {
            // Each argument costs its bytes and its handle (and, later, an op's framing): an
            // empty argument is not free.
            let bytes: usize = args.iter().map(|a| a.len() + QUEUED_ARG_OVERHEAD).sum();
            if queue.len() >= MAX_MULTI_COMMANDS || self.queued_bytes + bytes > MAX_MULTI_BYTES {
                // EXEC will abort anyway: free what is queued now rather than at EXEC.
                queue.clear();
                self.dirty = true;
                return reply(Reply::err(format!(
                    "MULTI queue limit reached (at most {MAX_MULTI_COMMANDS} commands and \
                     {MAX_MULTI_BYTES} bytes of arguments per transaction); EXEC will fail"
                )));
            }
            self.queued_bytes += bytes;
            queue.push(args);
            return reply(Reply::Status("QUEUED"));
        }
        if let Some(r) = admin::run(&name, &args, &mut self.session, shared) {
            return reply(r);
        }
        if script::is_script(name.as_bytes()) {
            return self.eval(shared, &name, &args);
        }
        match command::prepare(&name, &args) {
            Err(r) => reply(r),
            Ok(None) => reply(Reply::err(format!(
                "internal error: '{name}' has no handler"
            ))),
            Ok(Some(cmd)) => outcome(
                &shared.engine,
                if cmd.runs_alone() {
                    blocking(|| shared.engine.run_exclusive(|tx| cmd.exec(tx)))
                } else {
                    shared.engine.run(&cmd.keys(), |tx| cmd.exec(tx))
                },
            ),
        }
    }

    /// Past `--busy-script-ms` of a running script, every command but SCRIPT KILL (and the
    /// transaction bookkeeping Redis also allows) gets `-BUSY`. Engine commands check this
    /// themselves (`engine::world`); this covers the rest (PING, INFO, …).
    fn busy(&self, shared: &Shared, name: &str, args: &[Bytes]) -> Option<Reply> {
        let elapsed = shared.engine.script_elapsed()?;
        let allowed = matches!(name, "quit" | "multi" | "discard" | "watch" | "unwatch")
            || (name == "script" && args.len() == 2 && args[1].eq_ignore_ascii_case(b"kill"));
        (elapsed >= shared.engine.busy_script() && !allowed).then(|| Reply::from(Error::Busy))
    }

    fn watch(&mut self, shared: &Shared, args: &[Bytes]) -> Reply {
        let new: Vec<&[u8]> = args[1..]
            .iter()
            .map(|k| &k[..])
            .filter(|k| !self.watched.iter().any(|w| w.key() == *k))
            .collect();
        let mut new = new;
        new.dedup();
        match shared.engine.watch(&new) {
            Ok(w) => {
                self.watched.extend(w);
                Reply::Ok
            }
            Err(e) => Reply::from(e),
        }
    }

    fn eval(&mut self, shared: &Shared, name: &str, args: &[Bytes]) -> Outcome {
        let call = match script::parse(name, args) {
            Ok(c) => c,
            Err(r) => return reply(r),
        };
        let session = &mut self.session;
        // On this worker: a script that runs long hands the worker's other tasks to another
        // thread from its hook (`script::lua`); doing that up front for every script cost
        // more than a short script itself (0.37x Redis's EVALSHA rate against 0.72x).
        let result = shared
            .engine
            .run_exclusive(|tx| Ok(shared.scripts.run(tx, session, shared, &call)));
        outcome(&shared.engine, result)
    }

    fn exec(&mut self, shared: &Shared) -> Outcome {
        let Some(queue) = self.multi.take() else {
            return reply(Reply::err("EXEC without MULTI"));
        };
        let watched = std::mem::take(&mut self.watched);
        let outcome = self.exec_queue(shared, queue, &watched);
        shared.engine.unwatch(watched);
        outcome
    }

    fn exec_queue(
        &mut self,
        shared: &Shared,
        queue: Vec<Vec<Bytes>>,
        watched: &[Watched],
    ) -> Outcome {
        if std::mem::take(&mut self.dirty) {
            return reply(Reply::Error(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            ));
        }
        enum Item {
            Engine(Cmd),
            Script(script::Call),
            Admin(String, Vec<Bytes>),
            Done(Reply),
        }
        let items: Vec<Item> = queue
            .into_iter()
            .map(|args| {
                let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                if script::is_script(name.as_bytes()) {
                    return match script::parse(&name, &args) {
                        Ok(c) => Item::Script(c),
                        Err(r) => Item::Done(r),
                    };
                }
                match command::prepare(&name, &args) {
                    Ok(Some(c)) => Item::Engine(c),
                    Ok(None) => Item::Admin(name, args),
                    Err(r) => Item::Done(r),
                }
            })
            .collect();
        let keys: Vec<&[u8]> = items
            .iter()
            .flat_map(|i| match i {
                Item::Engine(c) => c.keys(),
                _ => Vec::new(),
            })
            .chain(watched.iter().map(Watched::key))
            .collect();
        let session = &mut self.session;
        let engine = &shared.engine;
        let body = |tx: &mut crate::engine::Tx<'_>| {
            if !engine.watches_intact(watched, tx)? {
                return Ok(None);
            }
            Ok(Some(
                items
                    .iter()
                    .map(|i| match i {
                        Item::Engine(c) => c.exec(tx).unwrap_or_else(Reply::from),
                        Item::Script(c) => shared.scripts.run(tx, session, shared, c),
                        Item::Admin(name, args) => admin::run(name, args, session, shared)
                            .unwrap_or_else(|| {
                                Reply::err(format!("'{name}' cannot run inside MULTI"))
                            }),
                        Item::Done(r) => r.clone(),
                    })
                    .collect(),
            ))
        };
        // A script (or FLUSHDB) in the transaction may touch any key: the whole EXEC runs
        // alone.
        let alone = |i: &Item| match i {
            Item::Script(_) => true,
            Item::Engine(c) => c.runs_alone(),
            _ => false,
        };
        let result = if items.iter().any(alone) {
            blocking(|| engine.run_exclusive(body))
        } else {
            engine.run(&keys, body)
        };
        match result {
            Ok(ack) => Outcome {
                reply: ack.value.map_or(Reply::NilArray, Reply::Array),
                lsn: ack.lsn,
                close: false,
            },
            Err(e) => reply(Reply::from(e)),
        }
    }
}
