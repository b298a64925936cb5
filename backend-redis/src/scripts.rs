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
//! **The stored session** is one string (see `codec`): a fixed header,
//! read with one `struct.unpack`, the principal and index names, then the
//! data pairs. A script never parses the data unless a save gives it only
//! the changed keys. A session written by an earlier offstate as a hash is
//! still read, and becomes a string at its first save or touch.
//!
//! **The common save costs least.** A writer that read the version it
//! saves, of a session with no principal, sends the whole string it built
//! and the header of the string it read ([`SAVE_BUILT`]): the script
//! compares that header with the stored one and, when they are equal,
//! stores the string as it is. Its arguments are few and all bytes:
//! Redis makes a Lua string of every argument, and every number a script
//! parses or formats costs a `strtod` or a `printf`. Counted by callgrind
//! in redis-server with the bench's cart: 38.0k instructions per save;
//! 62.7k when the same check ran at the head of the general script with
//! its eleven arguments; 93.1k for the general script's own path; 10.4k
//! for a plain `SET` with `PXAT`. Anything else (another version, a later
//! idle deadline, a principal, an earlier offstate's hash) is decided from
//! what that script returns or by [`SAVE`], which unpacks, packs and
//! concatenates in Redis.
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
/// (neither a session string nor a session hash, or one that does not
/// decode) or `live`, and returns `version, idle, abs, principal, ix` as
/// `m[1]..m[5]` (numbers, 0 for no deadline; strings, '' for none; `ix`:
/// the name of the principal's index, kept on a standalone Redis so that
/// the scripts can update the index in the same step; see the `index`
/// module), with `created`, and `raw` and `data` (the string and where its
/// data starts) or `hash` (a session hash of an earlier offstate).
const PRELUDE: &str = r"
local HEADER = '>BddddI4I4'
local HEADER_LEN = 41

local function state(key, now)
  local s = redis.pcall('GET', key)
  if not s then return 'absent', {} end
  local m
  if type(s) == 'table' then
    -- Not a string: a session hash of an earlier offstate, or another type.
    local h = redis.pcall('HMGET', key, 'version', 'idle', 'abs', 'principal', 'ix', 'created')
    if h.err then return 'corrupt', {} end
    local idle, abs = tonumber(h[2] or '0'), tonumber(h[3] or '0')
    if not tonumber(h[1] or '') or not tonumber(h[6] or '') or not idle or not abs then
      return 'corrupt', {}
    end
    m = {tonumber(h[1]), idle, abs, h[4] or '', h[5] or '', created = tonumber(h[6]), hash = true}
  else
    if #s < HEADER_LEN or string.byte(s, 1) ~= 1 then return 'corrupt', {} end
    local _, version, created, idle, abs, plen, xlen, pos = struct.unpack(HEADER, s)
    if pos + plen + xlen - 1 > #s then return 'corrupt', {} end
    m = {version, idle, abs, '', '', created = created, raw = s, data = pos + plen + xlen}
    if plen > 0 then m[4] = string.sub(s, pos, pos + plen - 1) end
    if xlen > 0 then m[5] = string.sub(s, pos + plen, pos + plen + xlen - 1) end
  end
  local expires = m[2]
  if expires == 0 or (m[3] ~= 0 and m[3] < expires) then expires = m[3] end
  if expires ~= 0 and now >= expires then return 'expired', m end
  return 'live', m
end

-- A number of ms as Redis and the client read it ('' for 0: none).
local function ms(n)
  if n == 0 then return '' end
  return string.format('%.0f', n)
end

-- The session as a conflict returns it: the string, or a hash's fields.
local function current(key, m)
  if m.hash then return redis.call('HGETALL', key) end
  return m.raw
end

-- The session string: header, principal, index name, data.
local function session(version, created, idle, abs, principal, ix, data)
  return struct.pack(HEADER, 1, version, created, idle, abs, #principal, #ix) .. principal .. ix .. data
end

-- The stored data pairs, those whose key is in `drop` left out; nil when
-- the stored data does not parse.
local function data_without(key, m, drop)
  local keep = {}
  if m.hash then
    local h = redis.call('HGETALL', key)
    for i = 1, #h, 2 do
      if string.sub(h[i], 1, 2) == 'd:' then
        local k = string.sub(h[i], 3)
        if not drop[k] then keep[#keep + 1] = #k .. ':' .. k .. #h[i + 1] .. ':' .. h[i + 1] end
      end
    end
    return table.concat(keep)
  end
  local s, pos, n = m.raw, m.data, #m.raw
  if next(drop) == nil then return string.sub(s, pos) end
  while pos <= n do
    local c = string.find(s, ':', pos, true)
    local len = c and tonumber(string.sub(s, pos, c - 1))
    if not len or c + len > n then return nil end
    local k = string.sub(s, c + 1, c + len)
    local v = c + len + 1
    c = string.find(s, ':', v, true)
    len = c and tonumber(string.sub(s, v, c - 1))
    if not len or c + len > n then return nil end
    if not drop[k] then keep[#keep + 1] = string.sub(s, pos, c + len) end
    pos = c + len + 1
  end
  return table.concat(keep)
end

-- Writes the session string with its TTL (0 = none); a hash goes first.
-- A number argument reaches Redis as its shortest decimal: a whole number
-- of ms below 2^53 as its digits, without a string.format here.
local function put(key, m, value, at)
  if m.hash then redis.call('DEL', key) end
  if at == 0 then
    redis.call('SET', key, value)
  else
    redis.call('SET', key, value, 'PXAT', at)
  end
end

-- Deadlines never move backwards: the later of the stored and the asked
-- idle deadline; no idle deadline (0) counts as the latest.
local function later_idle(stored, asked)
  if stored == 0 or asked == 0 then return 0 end
  if asked > stored then return asked end
  return stored
end

-- When a session with these idle and absolute deadlines ends (0 = never).
local function ends_at(idle, abs)
  if idle == 0 then return abs end
  if abs == 0 then return idle end
  if abs < idle then return abs end
  return idle
end

local function expire_at(key, at)
  if at == 0 then redis.call('PERSIST', key) else redis.call('PEXPIREAT', key, at) end
end

-- The principal index (see INDEX_ADD): adds or raises `member` to the
-- score of a session ending at `at` (ms, '' = never), trims what ended
-- before `now`, and lets the index expire with its latest session.
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
  if fold ~= '1' or not m[5] or m[5] == '' then return 0 end
  index_add(m[5], member, ms(at), now)
  return 1
end

-- Removes the entry of a session that left its principal, where it can.
local function unfollow(fold, m, member)
  if not m[4] or m[4] == '' then return 1 end
  if fold ~= '1' or not m[5] or m[5] == '' then return 0 end
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
put(KEYS[1], m, ARGV[4], tonumber(ARGV[2]) or 0)
if KEYS[2] then index_add(KEYS[2], ARGV[3], ARGV[2], ARGV[1]) end
return 1
";

/// KEYS: session, and on a standalone Redis with principal op 's' the new
/// principal's index. ARGV: now, expected version, next version,
/// announcement channel ('' = none), idle deadline ('' = none), session
/// key, principal op ('k' keep, 's' set, 'c' clear), principal, fold ('1'
/// on a standalone Redis: update the index here), 'w' or 'p', then:
/// - with 'w' (the writer read this version), the whole session string
///   the writer built, and the idle deadline is the one in it (the later
///   of the read one and the asked one);
/// - with 'p', the data pairs set, then every data key set or removed: the
///   stored pairs of other keys stay, and the idle deadline is the asked one.
///
/// Deadlines never move backwards: the idle deadline becomes the later of
/// the stored and the given one, the absolute one stays. Returns {0} gone,
/// {1, session} conflict, {2, old principal, expires-at (ms, 0 = none), 1
/// if the index was updated here} saved, {3} corrupt.
const SAVE: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
if st == 'absent' or st == 'expired' then return {0} end
if st == 'corrupt' then return {3} end
if m[1] ~= tonumber(ARGV[2]) then return {1, current(KEYS[1], m)} end
local data = ARGV[11]
if ARGV[10] == 'w' then
  -- The writer's session string: only its data is taken here.
  local _, _, _, _, _, vp, vx, vpos = struct.unpack(HEADER, data)
  data = string.sub(data, vpos + vp + vx)
else
  local drop = {}
  for i = 12, #ARGV do drop[ARGV[i]] = true end
  local kept = data_without(KEYS[1], m, drop)
  if not kept then return {3} end
  data = kept .. data
end
local idle = later_idle(m[2], tonumber(ARGV[5]) or 0)
local principal, ix = m[4], m[5]
if ARGV[7] == 's' then
  principal, ix = ARGV[8], KEYS[2] or ''
elseif ARGV[7] == 'c' then
  principal, ix = '', ''
end
local at = ends_at(idle, m[3])
put(KEYS[1], m, session(tonumber(ARGV[3]), m.created, idle, m[3], principal, ix, data), at)
local folded = 0
if ARGV[7] == 'k' then
  folded = follow(ARGV[9], m, ARGV[6], at, ARGV[1])
elseif ARGV[7] == 'c' then
  folded = unfollow(ARGV[9], m, ARGV[6])
elseif KEYS[2] then
  index_add(KEYS[2], ARGV[6], ms(at), ARGV[1])
  if m[4] == ARGV[8] then
    folded = 1
  else
    folded = unfollow(ARGV[9], m, ARGV[6])
  end
end
announce(ARGV[4], ARGV[6], ARGV[3])
return {2, m[4], at, folded}
";

/// The common save, tried first: the writer's whole new string, stored
/// only if the stored header is byte for byte the header of the session
/// the writer read. KEYS: session. ARGV: that header (41 bytes), the
/// string to store, its expire-at in ms ('' = none), and when caches are
/// told, the announcement channel and message.
///
/// An equal header means the same version, creation time and deadlines,
/// and no principal (the writer sends this only for a session without
/// one, and only when it has not expired by the writer's clock). Then the
/// general [`SAVE`] would store exactly the writer's string, with exactly
/// this expiry: the later idle deadline is the writer's (it took the later
/// of the read and the asked one), the absolute deadline is unchanged. So
/// the script only compares and writes: no number is parsed or formatted,
/// and the header is read with `GETRANGE`, so its cost does not grow with
/// the session.
///
/// Returns 2 stored; otherwise what is stored now, for the caller to
/// decide as [`SAVE`] would from the same snapshot (nil: gone; another
/// version: conflict; expired: gone); -1 for a value that is not a string
/// (a hash of an earlier offstate), which [`SAVE`] then handles.
const SAVE_BUILT: &str = r"
local s = redis.pcall('GETRANGE', KEYS[1], '0', '40')
if s ~= ARGV[1] then
  if type(s) ~= 'string' then return -1 end
  return redis.call('GET', KEYS[1])
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
end
if ARGV[4] then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 2
";

/// KEYS: session. ARGV: now, asked idle deadline, announcement channel,
/// session key, fold ('1' on a standalone Redis). Rewrites only `idle`
/// (when the asked one is later) and the TTL (and turns a hash of an
/// earlier version into a string, its data unchanged); announces the unchanged
/// version; with fold, raises (or re-adds) the index entry in the same
/// step. Returns {0} gone, {1, principal, expires-at (ms, 0 = none), 1 if
/// the index was updated here} touched, {3} corrupt.
const TOUCH: &str = r"
local st, m = state(KEYS[1], tonumber(ARGV[1]))
if st == 'absent' or st == 'expired' then return {0} end
if st == 'corrupt' then return {3} end
local idle = later_idle(m[2], tonumber(ARGV[2]) or 0)
local at = ends_at(idle, m[3])
if m.hash then
  -- A hash of an earlier version becomes a string: its reads are one GET.
  put(KEYS[1], m, session(m[1], m.created, idle, m[3], m[4], m[5], data_without(KEYS[1], m, {})), at)
elseif idle ~= m[2] then
  put(KEYS[1], m, session(m[1], m.created, idle, m[3], m[4], m[5], string.sub(m.raw, m.data)), at)
else
  expire_at(KEYS[1], at)
end
local folded = follow(ARGV[5], m, ARGV[4], at, ARGV[1])
announce(ARGV[3], ARGV[4], string.format('%.0f', m[1]))
return {1, m[4], at, folded}
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
if m[1] ~= tonumber(ARGV[2]) then return {1, current(KEYS[1], m)} end
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
    pub(crate) save_built: Lua,
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
            save_built: Lua(Script::new(SAVE_BUILT)),
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
                // Boxed: rare, and its future would double every call's.
                Box::pin(async {
                    script.load_async(con).await?;
                    command.query_async(con).await
                })
                .await
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
