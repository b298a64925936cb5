//! Counting what the apps ask of Redis: `CONFIG RESETSTAT` before a run,
//! `INFO commandstats` after it. It is the bench's own server, so resetting
//! its statistics disturbs nobody.

use std::collections::BTreeMap;

use offstate_redis::redis;

use crate::BenchError;

/// Commands the bench itself sends to read and reset the statistics; not
/// counted, subcommands included (Redis 7 names `CONFIG RESETSTAT`
/// `config|resetstat`).
const OWN_COMMANDS: &[&str] = &["info", "config"];

/// A connection used only to read and reset the server's statistics.
#[derive(Debug)]
pub struct CommandStats {
    connection: redis::aio::MultiplexedConnection,
}

impl CommandStats {
    /// Connects to the server at `url`.
    ///
    /// # Errors
    ///
    /// [`BenchError::Redis`] when it cannot connect.
    pub async fn connect(url: &str) -> Result<Self, BenchError> {
        let client = redis::Client::open(url)?;
        let connection = client.get_multiplexed_async_connection().await?;
        Ok(Self { connection })
    }

    /// Zeroes the server's command counters.
    ///
    /// # Errors
    ///
    /// [`BenchError::Redis`] when the command fails.
    pub async fn reset(&mut self) -> Result<(), BenchError> {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Sends `ECHO text` and waits for the answer.
    ///
    /// # Errors
    ///
    /// [`BenchError::Redis`] when the command fails.
    pub async fn echo(&mut self, text: &str) -> Result<(), BenchError> {
        redis::cmd("ECHO")
            .arg(text)
            .query_async::<String>(&mut self.connection)
            .await?;
        Ok(())
    }

    /// CPU seconds (user + system) the server has used since it started,
    /// from `INFO cpu`.
    ///
    /// # Errors
    ///
    /// [`BenchError::Redis`] when the command fails.
    pub async fn cpu_seconds(&mut self) -> Result<f64, BenchError> {
        let text: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.connection)
            .await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.trim().split_once(':')?;
                matches!(name, "used_cpu_user" | "used_cpu_sys")
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum())
    }

    /// Calls per command since the last reset, apart from the bench's own
    /// `INFO` and `CONFIG`.
    ///
    /// # Errors
    ///
    /// [`BenchError::Redis`] when the command fails.
    pub async fn calls(&mut self) -> Result<BTreeMap<String, u64>, BenchError> {
        let text: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.connection)
            .await?;
        Ok(parse_commandstats(&text))
    }
}

/// Commands offstate's Lua scripts run inside Redis. They appear in
/// `INFO commandstats` (and in `total_commands_processed`) but cost no
/// round trip: the client sent one `EVALSHA`. `publish` is the write
/// scripts' announcements (the invalidation channel's own heartbeat
/// `PUBLISH`, one per process per second, is left out with them); `zadd`
/// and `zremrangebyscore` the principal index's inside the write scripts.
/// `get` is not here: clients send it too (see [`script_gets`]).
pub const SCRIPT_INTERNAL: &[&str] = &[
    "type",
    "getrange",
    "set",
    "hgetall",
    "hmget",
    "hset",
    "hdel",
    "pexpireat",
    "persist",
    "del",
    "publish",
    "exists",
    "zadd",
    "zrem",
    "zrange",
    "zremrangebyscore",
];

/// `GET`s offstate's scripts run inside Redis: every session script reads
/// its session once first, the common save with a `GETRANGE` of its header
/// and the others with a `GET` (the index's own script, run only on a
/// cluster, reads none, and the bench's Redis is standalone). The `GET`s
/// clients sent are the rest. A save that falls through from the common
/// case (a principal, a later stored idle deadline) or meets a conflict
/// reads again, so a run of those would show an extra `GET` per save as a
/// round trip; the bench's saves take the common case.
#[must_use]
pub fn script_gets(calls: &BTreeMap<String, u64>) -> u64 {
    scripts(calls).saturating_sub(calls.get("getrange").copied().unwrap_or(0))
}

/// Scripts clients ran (`EVALSHA`, `EVAL`).
fn scripts(calls: &BTreeMap<String, u64>) -> u64 {
    calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0)
}

/// Commands clients sent (round trips): all of `calls`, less the commands
/// run inside scripts when scripts ran (no client of the bench sends those
/// commands directly).
#[must_use]
pub fn client_commands(calls: &BTreeMap<String, u64>) -> u64 {
    let scripts = scripts(calls);
    let sent: u64 = calls
        .iter()
        .filter(|(name, _)| {
            scripts == 0 || (!SCRIPT_INTERNAL.contains(&name.as_str()) && *name != "get")
        })
        .map(|(_, n)| n)
        .sum();
    sent + client_gets(calls)
}

/// The `GET`s clients sent when scripts ran (every `GET` when none did,
/// which [`client_commands`] counts with the rest).
fn client_gets(calls: &BTreeMap<String, u64>) -> u64 {
    if scripts(calls) == 0 {
        return 0;
    }
    calls
        .get("get")
        .copied()
        .unwrap_or(0)
        .saturating_sub(script_gets(calls))
}

/// Commands an offstate client sends itself, each a round trip: offstate's
/// store sends `GET` (a load) and `EVALSHA` (every write, with a one-time
/// `SCRIPT LOAD` per script and server) and a `PING` after a write that
/// ends a session when it announces its writes; the cache's invalidation
/// channel sends `SUBSCRIBE`. Every other command in `INFO commandstats`
/// (the scripts' own `GET`, `SET`, `DEL`, `ZADD`, and `PUBLISH` of the
/// announcements...) runs inside a script and costs Redis CPU, not a
/// round trip; the channel's heartbeat `PUBLISH` (one per process per
/// second) is left out with them. For clients that send plain commands
/// too (the peer's), see [`client_commands`].
#[must_use]
pub fn round_trips(calls: &BTreeMap<String, u64>) -> u64 {
    const SENT: &[&str] = &["evalsha", "eval", "script|load", "subscribe", "ping"];
    let gets = if scripts(calls) == 0 {
        calls.get("get").copied().unwrap_or(0)
    } else {
        client_gets(calls)
    };
    calls
        .iter()
        .filter(|(name, _)| SENT.contains(&name.as_str()))
        .map(|(_, n)| n)
        .sum::<u64>()
        + gets
}

/// `cmdstat_hgetall:calls=12,usec=...` lines to `{"hgetall": 12}`.
#[must_use]
pub fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let command = name.split_once('|').map_or(name, |(command, _)| command);
        if OWN_COMMANDS.contains(&command) {
            continue;
        }
        let count = fields
            .split(',')
            .find_map(|field| field.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(count) = count {
            calls.insert(name.to_owned(), count);
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_output() {
        let text = "# Commandstats\r\ncmdstat_hgetall:calls=10,usec=5,usec_per_call=0.5\r\ncmdstat_info:calls=3,usec=1\r\ncmdstat_client|setinfo:calls=2,usec=0\r\ncmdstat_config|resetstat:calls=1,usec=9\r\n";
        let calls = parse_commandstats(text);
        assert_eq!(calls.get("hgetall"), Some(&10));
        assert_eq!(calls.get("client|setinfo"), Some(&2));
        assert!(!calls.contains_key("info"));
        assert!(
            !calls.contains_key("config|resetstat"),
            "the bench's own reset"
        );
    }

    #[test]
    fn a_save_that_reads_its_header_is_one_round_trip_after_the_load() {
        // Adds: a client GET (the load), then EVALSHA running GETRANGE + SET.
        let calls: BTreeMap<String, u64> =
            [("get", 10), ("evalsha", 10), ("getrange", 10), ("set", 10)]
                .into_iter()
                .map(|(k, n)| (k.to_owned(), n))
                .collect();
        assert_eq!(client_commands(&calls), 20);
        assert_eq!(round_trips(&calls), 20);
    }

    #[test]
    fn gets_inside_scripts_are_not_round_trips() {
        // 10 loads, 5 saves (each with one GET and one SET inside).
        let calls: BTreeMap<String, u64> = [("get", 15), ("evalsha", 5), ("set", 5)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(round_trips(&calls), 15);
        assert_eq!(client_commands(&calls), 15);
        // Plain commands only (the peer's): all of them.
        let plain: BTreeMap<String, u64> = [("get", 10), ("set", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(round_trips(&plain), 10);
        assert_eq!(client_commands(&plain), 11);
    }
}
