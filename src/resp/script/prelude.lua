-- Tally's script sandbox, run once when the Lua state is made (see `lua.rs`). It returns the
-- globals scripts see (a read-only view: reading a missing global or writing any is an error,
-- with Redis 7's words), the table Rust fills for each run, the `redis` table, and the runner.
local G = _G
local hooks = {}
local rawget, error, type, tostring, setmetatable = rawget, error, type, tostring, setmetatable
local loadstring, load, setfenv = loadstring, load, setfenv

local rawset = rawset
-- Every read-only view, so that rawset cannot write into one either.
local protected = setmetatable({}, { __mode = 'k' })
local function readonly(t)
  local view = setmetatable({}, {
    __index = t,
    __newindex = function() error('Attempt to modify a readonly table', 2) end,
    __metatable = false,
  })
  protected[view] = true
  return view
end

local R = {}
R.LOG_DEBUG, R.LOG_VERBOSE, R.LOG_NOTICE, R.LOG_WARNING = 0, 1, 2, 3
R.REPL_NONE, R.REPL_AOF, R.REPL_SLAVE, R.REPL_REPLICA, R.REPL_ALL = 0, 1, 2, 2, 3
-- C functions (lua.rs), as in Redis: a Lua wrapper would vanish in the script's own
-- `return redis.call(...)` tail call, and with it the script line that errors report.
R.call, R.pcall = __tally_call, __tally_pcall
R.REDIS_VERSION = __tally_version
local major, minor, patch = __tally_version:match('(%d+)%.(%d+)%.(%d+)')
R.REDIS_VERSION_NUM = major * 65536 + minor * 256 + patch
function R.error_reply(e)
  if type(e) ~= 'string' then return {err = 'ERR wrong number or type of arguments'} end
  if e:sub(1, 1) ~= '-' then e = '-' .. e end
  local code, msg
  local sp = e:find(' ', 1, true)
  if sp then code, msg = e:sub(2, sp - 1), e:sub(sp + 1) else code, msg = 'ERR', e:sub(2) end
  msg = msg:gsub('^[\r\n]+', ''):gsub('[\r\n]+$', '')
  return {err = code .. ' ' .. msg}
end
function R.status_reply(s)
  if type(s) ~= 'string' then return {err = 'ERR wrong number or type of arguments'} end
  return {ok = s}
end
function R.setresp(v)
  if v ~= 2 and v ~= 3 then error({err = 'ERR RESP version must be 2 or 3.'}) end
  hooks.setresp(v)
end
function R.replicate_commands() return true end
function R.set_repl() end
function R.breakpoint() return false end
function R.debug() end
R.sha1hex = __tally_sha1hex
R.log = __tally_log

local libs = { 'string', 'math', 'table', 'coroutine', 'bit', 'cjson', 'struct', 'cmsgpack' }
for _, name in ipairs(libs) do
  if rawget(G, name) then G[name] = readonly(G[name]) end
end
G.redis = readonly(R)
for _, name in ipairs({ 'print', 'dofile', 'loadfile', 'require', 'module', 'package', 'os',
                        'io', 'debug', 'getfenv', 'setfenv', 'newproxy',
                        '__tally_sha1hex', '__tally_log', '__tally_call', '__tally_pcall',
                        '__tally_version' }) do
  G[name] = nil
end

local env = setmetatable({}, {
  __index = function(_, n)
    local v = rawget(G, n)
    if v == nil then
      error("Script attempted to access nonexistent global variable '" .. tostring(n) .. "'", 2)
    end
    return v
  end,
  __newindex = function() error('Attempt to modify a readonly table', 2) end,
  __metatable = false,
})
G._G = env
-- Redis 7's pcall: a caught error table becomes its `err` string.
local pcall = pcall
local function caught(ok, ...)
  if ok then return ok, ... end
  local e = ...
  if type(e) == 'table' then
    local m = rawget(e, 'err')
    if type(m) == 'string' or type(m) == 'number' then e = m end
  end
  return false, e
end
G.pcall = function(...) return caught(pcall(...)) end
protected[env] = true
G.rawset = function(t, k, v)
  if protected[t] then error('Attempt to modify a readonly table', 0) end
  return rawset(t, k, v)
end
-- Chunks loaded at run time see the same read-only globals, not the real table.
G.loadstring = function(...)
  local f, e = loadstring(...)
  if f then setfenv(f, env) end
  return f, e
end
G.load = function(...)
  local f, e = load(...)
  if f then setfenv(f, env) end
  return f, e
end

local xpcall = xpcall
local function run(f, handler) return xpcall(f, handler) end
return env, hooks, run
