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

    /// Commands clients sent since the last reset (see [`parse_sent`]).
    ///
    /// # Errors
    ///
    /// [`BenchError::Redis`] when the command fails.
    pub async fn sent(&mut self) -> Result<u64, BenchError> {
        let text: String = redis::cmd("INFO")
            .arg("stats")
            .arg("commandstats")
            .query_async(&mut self.connection)
            .await?;
        Ok(parse_sent(&text))
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

/// Commands clients sent since the last reset, apart from the bench's own
/// `INFO` and `CONFIG`, from an `INFO stats commandstats` reply: each is a
/// round trip. Redis counts a script once in `total_commands_processed`
/// and does not count the commands it runs inside Redis (`GET`, `SET`,
/// `PUBLISH`...), which `commandstats` lists. The cache's invalidation
/// channel's heartbeat `PUBLISH` (one per process per second) and its
/// `SUBSCRIBE` are counted.
#[must_use]
pub fn parse_sent(text: &str) -> u64 {
    let mut total: u64 = 0;
    let mut own: u64 = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("total_commands_processed:") {
            total = n.parse().unwrap_or(0);
        }
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        let command = name.split_once('|').map_or(name, |(command, _)| command);
        if OWN_COMMANDS.contains(&command) {
            own += fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total.saturating_sub(own)
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
    fn sent_commands_leave_out_the_bench_s_own() {
        let text = "# Stats\r\ntotal_commands_processed:14\r\n# Commandstats\r\ncmdstat_get:calls=20,usec=5\r\ncmdstat_evalsha:calls=10,usec=5\r\ncmdstat_info:calls=3,usec=1\r\ncmdstat_config|resetstat:calls=1,usec=9\r\n";
        // 14 processed: 10 scripts (whose 20 GETs inside are not counted), 3 INFOs, 1 reset.
        assert_eq!(parse_sent(text), 10);
    }
}
