//! The server-side Lua scripts: every session write is one script, so its
//! check (exists, version, not expired) and its effect happen atomically.
//! A read needs none: it is a plain `GET` (see `codec`).
//!
//! "Now" is always an argument, the caller's clock reading, never
//! the server's `TIME`: deadlines are decided by the same clock everywhere.
//! Each script touches exactly one key, so it runs in Redis Cluster too
//! (the principal index lives in another slot and has its own script).
//! A [`Lua`] run sends `EVALSHA` and loads the script on `NOSCRIPT`.
//!
//! **The stored session** is one string (see `codec`): `<len>:<bytes>`
//! items, field/value pairs, the metadata first and the data (`d:` fields)
//! after it. A script parses the metadata only, and the data only when a
//! save changes some of it. A session written by an earlier offstate as a
//! hash is still read, and becomes a string at its first save.
//!
//! **Announcements.** Every script that changes or ends a session takes a
//! channel name and the session's key (as the caches know it); when the
//! channel is not empty, the script `PUBLISH`es the invalidation on it in
//! the wire form of [`offstate_core::Invalidation`] (`k <key> <version>`,
//! `k <key> -`). The write and its announcement are one atomic step: Redis
//! queues the message for every subscriber while it runs the script, before
//! it replies to the writer.

use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// Shared helpers, put in front of every session script.
///
/// `state` classifies the session at `now`: `absent`, `expired`, `corrupt`
/// (neither a session string nor a session hash, or metadata that does not
/// parse) or `live`, and returns `version, idle, abs, principal, ix` (`ix`:
/// the name of the principal's index, kept on a standalone Redis so that
/// the scripts can update the index in the same step; see the `index`
/// module), with `created`, `extra` (metadata fields this version does not
/// know, kept as they are), and `raw` and `data` (the string and where its
/// data starts) or `hash` (a session hash of an earlier offstate).
const PRELUDE: &str = r"
local function item(s) return #s .. ':' .. s end

-- The item at `pos` of `s`: its text and the position after it, or nil.
local function item_at(s, pos)
  local c = string.find(s, ':', pos, true)
  if not c or c == pos or c - pos > 10 then return nil end
  local len = tonumber(string.sub(s, pos, c - 1))
  if not len or len < 0 or c + len > #s then return nil end
  return string.sub(s, c + 1, c + len), c + len + 1
end

local KNOWN = {version = 1, idle = 2, abs = 3, principal = 4, ix = 5}

-- The metadata of a session string, or nil when it does not parse.
local function parse(s)
  local m, extra, pos, n = {}, {}, 1, #s
  while pos <= n do
    -- The first data field ends the metadata.
    local c = string.find(s, ':', pos, true)
    if c and string.sub(s, c + 1, c + 2) == 'd:' then break end
    local field, value, after
    field, after = item_at(s, pos)
    if not field then return nil end
    value, after = item_at(s, after)
    if not value then return nil end
    local slot = KNOWN[field]
    if slot then
      m[slot] = value
    elseif field == 'created' then
      m.created = value
    else
      extra[#extra + 1] = item(field) .. item(value)
    end
    pos = after
  end
  m.extra = table.concat(extra)
  m.data = pos
  return m
end

local function state(key, now)
  local s = redis.pcall('GET', key)
  local m
  if not s then return 'absent', {} end
  if type(s) == 'table' then
    -- Not a string: a session hash of an earlier offstate, or another type.
    local h = redis.pcall('HMGET', key, 'version', 'idle', 'abs', 'principal', 'ix', 'created')
    if h.err then return 'corrupt', {} end
    m = {h[1], h[2], h[3], h[4], h[5], created = h[6], extra = '', hash = true}
  else
    m = parse(s)
    if not m then return 'corrupt', {} end
    m.raw = s
  end
  if not m[1] or not tonumber(m[1]) or not m.created then return 'corrupt', m end
  local expires = nil
  for i = 2, 3 do
    if m[i] then
      local at = tonumber(m[i])
      if not at then return 'corrupt', m end
      if not expires or at < expires then expires = at end
    end
  end
  if expires and now >= expires then return 'expired', m end
  return 'live', m
end

-- The session as a conflict returns it: the string, or a hash's fields.
local function current(key, m)
  if m.hash then return redis.call('HGETALL', key) end
  return m.raw
end

-- The metadata items of a session, in the order `parse` and the client read.
local function metadata(version, created, idle, abs, principal, ix, extra)
  local t = {'7:version', item(version), '7:created', item(created)}
  if idle and idle ~= '' then t[#t + 1] = '4:idle' .. item(idle) end
  if abs and abs ~= '' then t[#t + 1] = '3:abs' .. item(abs) end
  if principal and principal ~= '' then t[#t + 1] = '9:principal' .. item(principal) end
  if ix and ix ~= '' then t[#t + 1] = '2:ix' .. item(ix) end
  t[#t + 1] = extra
  return table.concat(t)
end

-- The stored data pairs minus those whose field is in `drop`, packed; nil
-- when the stored data does not parse.
local function data_without(key, m, drop)
  local keep = {}
  if m.hash then
    local h = redis.call('HGETALL', key)
    for i = 1, #h, 2 do
      if string.sub(h[i], 1, 2) == 'd:' and not drop[h[i]] then
        keep[#keep + 1] = item(h[i]) .. item(h[i + 1])
      end
    end
    return table.concat(keep)
  end
  local s, pos = m.raw, m.data
  if next(drop) == nil then return string.sub(s, pos) end
  while pos <= #s do
    local field, value, after
    field, after = item_at(s, pos)
    if not field then return nil end
    value, after = item_at(s, after)
    if not value then return nil end
    if not drop[field] then keep[#keep + 1] = string.sub(s, pos, after - 1) end
    pos = after
  end
  return table.concat(keep)
end

-- Writes the session string with its TTL ('' = none); a hash goes first.
local function put(key, m, value, at)
  if m.hash then redis.call('DEL', key) end
  if at == '' then
    redis.call('SET', key, value)
  else
    redis.call('SET', key, value, 'PXAT', at)
  end
end

-- Deadlines never move backwards: the later of the stored and the asked
-- idle deadline; no idle deadline ('' or nil) counts as the latest.
local function later_idle(stored, asked)
  if not stored or stored == '' or asked == '' then return '' end
  if tonumber(asked) > tonumber(stored) then return asked end
  return stored
end

-- When a session with these idle and absolute deadlines ends ('' = never).
local function ends_at(idle, abs)
  if idle == '' then return abs end
  if abs == '' then return idle end
  if tonumber(abs) < tonumber(idle) then return abs end
  return idle
end

local function expire_at(key, at)
  if at == '' then redis.call('PERSIST', key) else redis.call('PEXPIREAT', key, at) end
end

-- The principal index (see INDEX_ADD): adds or raises `member` to the
-- score of a session ending at `at` ('' = never), trims what ended before
-- `now`, and lets the index expire with its latest session.
local function index_add(index, member, at, now)
  local score = at
  if score == '' then score = '+inf' end
  redis.call('ZADD', index, 'GT', score, member)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. now)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if not top[2] then return end
  if top[2] == 'inf' then redis.call('PERSIST', index) else redis.call('PEXPIREAT', index, top[2]) end
end

-- Keeps the index of a session that keeps its principal in step (`fold`
-- is '1' on a standalone Redis). Returns 1 when done here, 0 when the
-- client has to do it (a cluster, or a session written before `ix`).
local function follow(fold, m, member, at, now)
  if not m[4] or m[4] == '' then return 1 end
  if fold ~= '1' or not m[5] then return 0 end
  index_add(m[5], member, at, now)
  return 1
end

-- Removes the entry of a session that left its principal, where it can.
local function unfollow(fold, m, member)
  if not m[4] or m[4] == '' then return 1 end
  if fold ~= '1' or not m[5] then return 0 end
  redis.call('ZREM', m[5], member)
  return 1
end

-- Announces a write ('<version>') or an end ('-') of session `member` on
-- `channel`, unless no channel is configured ('').
local function announce(channel, member, version)
  if channel ~= '' then redis.call('PUBLISH', channel, 'k ' .. member .. ' ' .. version) end
end

";

/// KEYS: session, and on a standalone Redis the principal's index when the
/// record has a principal. ARGV: now, expire-at ('' = none), session key,
/// the session string (with `ix` when the index is given). With the index,
/// the entry is added in the same step. Returns 1 when created, 0 when a
/// live (or undecodable) session is there.
const CREATE: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
if st == 'live' or st == 'corrupt' then return 0 end
put(KEYS[1], m, ARGV[4], ARGV[2])
if KEYS[2] then index_add(KEYS[2], ARGV[3], ARGV[2], ARGV[1]) end
return 1
";

/// KEYS: session, and on a standalone Redis with principal op 's' the new
/// principal's index. ARGV: now, expected version, next version,
/// announcement channel ('' = none), asked idle deadline ('' = none),
/// session key, principal op ('k' keep, 's' set, 'c' clear), principal,
/// fold ('1' on a standalone Redis: update the index here), the set data
/// pairs packed, then every data field set or removed. Deadlines never
/// move backwards: the idle deadline becomes the later of the stored and
/// the asked one, the absolute one stays. Returns {0} gone, {1, session}
/// conflict, {2, old principal, expires-at ('' = none), 1 if the index was
/// updated here} saved, {3} corrupt.
const SAVE: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
if st == 'absent' or st == 'expired' then return {0} end
if st == 'corrupt' then return {3} end
if m[1] ~= ARGV[2] then return {1, current(KEYS[1], m)} end
local drop = {}
for i = 11, #ARGV do drop[ARGV[i]] = true end
local kept = data_without(KEYS[1], m, drop)
if not kept then return {3} end
local idle = later_idle(m[2], ARGV[5])
local principal, ix = m[4], m[5]
if ARGV[7] == 's' then
  principal, ix = ARGV[8], KEYS[2]
elseif ARGV[7] == 'c' then
  principal, ix = nil, nil
end
local at = ends_at(idle, m[3] or '')
put(KEYS[1], m, metadata(ARGV[3], m.created, idle, m[3], principal, ix, m.extra) .. kept .. ARGV[10], at)
local folded = 0
if ARGV[7] == 'k' then
  folded = follow(ARGV[9], m, ARGV[6], at, ARGV[1])
elseif ARGV[7] == 'c' then
  folded = unfollow(ARGV[9], m, ARGV[6])
elseif KEYS[2] then
  index_add(KEYS[2], ARGV[6], at, ARGV[1])
  if m[4] == ARGV[8] then
    folded = 1
  else
    folded = unfollow(ARGV[9], m, ARGV[6])
  end
end
announce(ARGV[4], ARGV[6], ARGV[3])
return {2, m[4] or '', at, folded}
";

/// KEYS: session. ARGV: now, asked idle deadline, announcement channel,
/// session key, fold ('1' on a standalone Redis). Rewrites only `idle`
/// (when the asked one is later) and the TTL; announces the unchanged
/// version; with fold, raises (or re-adds) the index entry in the same
/// step. Returns {0} gone, {1, principal, expires-at ('' = none), 1 if the
/// index was updated here} touched, {3} corrupt.
const TOUCH: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
if st == 'absent' or st == 'expired' then return {0} end
if st == 'corrupt' then return {3} end
local idle = later_idle(m[2], ARGV[2])
local at = ends_at(idle, m[3] or '')
if idle ~= '' and idle ~= m[2] and not m.hash then
  local value = metadata(m[1], m.created, idle, m[3], m[4], m[5], m.extra) .. string.sub(m.raw, m.data)
  put(KEYS[1], m, value, at)
else
  if idle ~= '' and idle ~= m[2] then redis.call('HSET', KEYS[1], 'idle', idle) end
  expire_at(KEYS[1], at)
end
local folded = follow(ARGV[5], m, ARGV[4], at, ARGV[1])
announce(ARGV[3], ARGV[4], m[1])
return {1, m[4] or '', at, folded}
";

/// KEYS: session. ARGV: now, announcement channel, session key, fold.
/// Announces the end even when nothing was there (a peer may still have
/// it cached); with fold, removes the index entry in the same step.
/// Returns {1 if something live or undecodable was deleted else 0,
/// principal, 1 if the index was updated here}.
const DELETE: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
announce(ARGV[2], ARGV[3], '-')
if st == 'absent' then return {0, '', 1} end
redis.call('DEL', KEYS[1])
local was = 0
if st == 'live' or st == 'corrupt' then was = 1 end
return {was, m[4] or '', unfollow(ARGV[4], m, ARGV[3])}
";

/// KEYS: session. ARGV: now, expected version, announcement channel,
/// session key, fold. Deletes a live session only at that version;
/// announces the end when it deleted or found nothing live. Returns {0}
/// gone, {1, session} conflict, {2, principal, 1 if the index was updated
/// here} deleted, {3} corrupt.
const DELETE_IF_VERSION: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
if st == 'absent' or st == 'expired' then
  announce(ARGV[3], ARGV[4], '-')
  return {0}
end
if st == 'corrupt' then return {3} end
if m[1] ~= ARGV[2] then return {1, current(KEYS[1], m)} end
redis.call('DEL', KEYS[1])
announce(ARGV[3], ARGV[4], '-')
return {2, m[4] or '', unfollow(ARGV[5], m, ARGV[4])}
";

/// KEYS: session, and on a standalone Redis the principal's index. ARGV:
/// now, principal, announcement channel, session key. Deletes (and
/// announces the end of) the session only if it (still) belongs to the
/// principal; with the index given, removes the session's entry in the
/// same step, so a revoke cut short between the two never leaves an entry
/// behind for a session it deleted. Returns 1 deleted a live session, 2
/// deleted an expired one, 0 no session, -1 another principal's or none.
const REVOKE_ONE: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
if st == 'absent' then return 0 end
if m[4] ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1])
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[4]) end
announce(ARGV[3], ARGV[4], '-')
if st == 'live' then return 1 end
return 2
";

/// KEYS: principal index. ARGV: score (ms or '+inf'), member, now (ms).
/// Adds the entry when it is missing (its entry or the whole index may have
/// been lost: eviction, failover, a failed earlier update) and otherwise
/// only raises its score (GT). Every add also trims the entries whose
/// session ended before `now`, so the index holds no more than the
/// principal's live sessions. The index expires with its latest session.
const INDEX_ADD: &str = r"
index_add(KEYS[1], ARGV[2], ARGV[1], ARGV[3])
return 1
";

/// The compiled scripts (each knows its SHA-1).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) create: Lua,
    pub(crate) save: Lua,
    pub(crate) touch: Lua,
    pub(crate) delete: Lua,
    pub(crate) delete_if_version: Lua,
    pub(crate) revoke_one: Lua,
    pub(crate) index_add: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let session = |body: &str| Lua(Script::new(&format!("{PRELUDE}{body}")));
        Self {
            create: session(CREATE),
            save: session(SAVE),
            touch: session(TOUCH),
            delete: session(DELETE),
            delete_if_version: session(DELETE_IF_VERSION),
            revoke_one: session(REVOKE_ONE),
            index_add: session(INDEX_ADD),
        }
    }
}

/// One compiled script.
#[derive(Debug)]
pub(crate) struct Lua(Script);

impl Lua {
    /// A run of the script with `key` as its first key.
    pub(crate) fn key<T: ToRedisArgs>(&self, key: T) -> Invocation<'_> {
        let mut call = self.prepare_invoke();
        call.key(key);
        call
    }

    /// A run of the script, keys first, then arguments.
    pub(crate) fn prepare_invoke(&self) -> Invocation<'_> {
        Invocation {
            script: &self.0,
            keys: Cmd::new(),
            command: None,
        }
    }
}

/// One run of a script: its `EVALSHA` written straight into one command,
/// where redis-rs's `ScriptInvocation` keeps every argument in a vector of
/// its own and copies them all again per call (about 3k instructions per
/// save, `scripts/icount.sh add`).
pub(crate) struct Invocation<'a> {
    script: &'a Script,
    /// The keys, until the first argument writes the command.
    keys: Cmd,
    command: Option<Cmd>,
}

impl Invocation<'_> {
    /// Adds a key; every key comes before the first argument.
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        debug_assert!(self.command.is_none(), "a script's keys come first");
        self.keys.arg(key);
        self
    }

    /// Adds an argument.
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.command().arg(arg);
        self
    }

    fn command(&mut self) -> &mut Cmd {
        let Self {
            script,
            keys,
            command,
        } = self;
        command.get_or_insert_with(|| {
            let mut command = Cmd::with_capacity(16, 256);
            command
                .arg("EVALSHA")
                .arg(script.get_hash())
                .arg(keys.args_iter().len());
            for key in keys.args_iter() {
                if let Arg::Simple(key) = key {
                    command.arg(key);
                }
            }
            command
        })
    }

    /// Runs the script; on `NOSCRIPT` (a restarted or flushed server) loads
    /// it and runs it again.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &mut self,
        con: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        let script = self.script;
        let command = self.command();
        match command.query_async(con).await {
            Err(error) if error.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(con).await?;
                command.query_async(con).await
            }
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_one_evalsha_with_its_keys_counted_before_its_arguments() {
        let lua = Lua(Script::new("return 1"));
        let mut call = lua.key("k1");
        call.key("k2").arg(7).arg("x");
        let packed = call.command().get_packed_command();
        let expected = format!(
            "*7\r\n$7\r\nEVALSHA\r\n$40\r\n{}\r\n$1\r\n2\r\n$2\r\nk1\r\n$2\r\nk2\r\n$1\r\n7\r\n$1\r\nx\r\n",
            lua.0.get_hash()
        );
        assert_eq!(String::from_utf8(packed).unwrap(), expected);
        // A script without arguments still sends its keys.
        let mut load = lua.key("only");
        let packed = load.command().get_packed_command();
        assert!(
            String::from_utf8(packed)
                .unwrap()
                .starts_with("*4\r\n$7\r\nEVALSHA")
        );
    }
}
