//! Command-line flags and environment variables. Flags win over the
//! environment, and everything has a default, so `cargo run -p
//! offstate-example-cart` just works.

use std::net::SocketAddr;
use std::time::Duration;

use offstate_core::ExpiryPolicy;

/// Settings of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Where to listen (`--listen`, `OFFSTATE_LISTEN`; default 127.0.0.1:3000).
    pub listen: SocketAddr,
    /// The name shown on every page (`--instance`, `OFFSTATE_INSTANCE`;
    /// default `hostname:port`).
    pub instance: String,
    /// Where sessions live (`--store`, `OFFSTATE_STORE`; default `memory://`).
    pub store: String,
    /// Whether the cookie is `Secure` (`--secure-cookies true|false`,
    /// `OFFSTATE_SECURE_COOKIES`; default: off on a loopback address, where
    /// the demo runs over plain HTTP, on everywhere else).
    pub secure_cookies: bool,
    /// Whether a local cache sits in front of the store (`--cache`,
    /// `OFFSTATE_CACHE=true`; default off).
    pub cache: bool,
    /// How long a session lives without a request (`--idle-timeout SECS`,
    /// `OFFSTATE_IDLE_TIMEOUT`; `0` for none; default 30 minutes).
    pub idle_timeout: Option<Duration>,
    /// How long a session lives at most, whatever its traffic
    /// (`--absolute-timeout SECS`, `OFFSTATE_ABSOLUTE_TIMEOUT`; `0` for
    /// none; default 24 hours).
    pub absolute_timeout: Option<Duration>,
    /// Secret for signed session IDs (`OFFSTATE_SIGNING_KEY`, at least 32
    /// bytes; every instance needs the same one). Environment only, so it
    /// does not show in `ps`.
    pub signing_key: Option<String>,
    /// Where to serve Prometheus metrics (`--metrics-addr`,
    /// `OFFSTATE_METRICS_ADDR`; default: not served).
    pub metrics_addr: Option<SocketAddr>,
}

/// The command line or environment cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A flag nobody knows.
    #[error("unknown argument {0:?}; try --help")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A value that does not parse.
    #[error("bad value {value:?} for {name}")]
    BadValue {
        /// The flag or variable.
        name: String,
        /// What was given.
        value: String,
    },
    /// `--help` was asked for.
    #[error("{USAGE}")]
    Help,
}

/// Usage text for `--help`.
pub const USAGE: &str = "\
offstate-example-cart: a shopping cart whose sessions live outside the instance

USAGE: offstate-example-cart [--listen ADDR] [--instance NAME] [--store URL] [--cache]
                             [--secure-cookies BOOL] [--idle-timeout SECS]
                             [--absolute-timeout SECS] [--metrics-addr ADDR]

  --listen ADDR          listen address (env OFFSTATE_LISTEN, default 127.0.0.1:3000)
  --instance NAME        name shown on every page (env OFFSTATE_INSTANCE, default hostname:port)
  --store URL            where sessions live (env OFFSTATE_STORE):
                           memory://                        this process only (default)
                           redis://host:port, rediss://...  Redis / ElastiCache
                           dynamodb://host:port/table       local DynamoDB (moto); AWS_* from env
                           dynamodb:///table                AWS DynamoDB
                           memcached://host:port,host:port  Memcached nodes
  --cache                a local cache in front of the store: coherent on Redis
                         (pub/sub invalidations), bounded staleness elsewhere
                         (env OFFSTATE_CACHE=true)
  --secure-cookies BOOL  Secure cookie attribute (env OFFSTATE_SECURE_COOKIES,
                         default false on loopback, true elsewhere)
  --idle-timeout SECS    a session ends after this long without a request
                         (env OFFSTATE_IDLE_TIMEOUT, 0 = never, default 1800)
  --absolute-timeout SECS  a session ends this long after it began, whatever
                         its traffic (env OFFSTATE_ABSOLUTE_TIMEOUT, 0 = never,
                         default 86400)
  --metrics-addr ADDR    serve Prometheus metrics at http://ADDR/metrics
                         (env OFFSTATE_METRICS_ADDR, default off)
  env OFFSTATE_SIGNING_KEY  sign session IDs with this secret (>= 32 bytes)";

impl Settings {
    /// Settings from the process's arguments and environment.
    ///
    /// # Errors
    ///
    /// [`SettingsError`] for unknown flags and bad values.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::parse(std::env::args().skip(1), |name| std::env::var(name).ok())
    }

    /// Settings from `args` (without the program name) and a variable lookup.
    ///
    /// ```
    /// use offstate_example_cart::config::Settings;
    ///
    /// let settings = Settings::parse(
    ///     ["--listen", "127.0.0.1:4000", "--instance", "a"].map(String::from),
    ///     |_| None,
    /// ).unwrap();
    /// assert_eq!(settings.listen.port(), 4000);
    /// assert_eq!(settings.instance, "a");
    /// assert_eq!(settings.store, "memory://");
    /// assert!(!settings.secure_cookies);
    /// ```
    ///
    /// # Errors
    ///
    /// [`SettingsError`] for unknown flags and bad values.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let mut listen = var("OFFSTATE_LISTEN").map(|v| ("OFFSTATE_LISTEN".to_owned(), v));
        let mut instance = var("OFFSTATE_INSTANCE");
        let mut store = var("OFFSTATE_STORE");
        let mut cache = var("OFFSTATE_CACHE").map(|v| ("OFFSTATE_CACHE".to_owned(), v));
        let mut metrics =
            var("OFFSTATE_METRICS_ADDR").map(|v| ("OFFSTATE_METRICS_ADDR".to_owned(), v));
        let mut secure =
            var("OFFSTATE_SECURE_COOKIES").map(|v| ("OFFSTATE_SECURE_COOKIES".to_owned(), v));
        let mut idle =
            var("OFFSTATE_IDLE_TIMEOUT").map(|v| ("OFFSTATE_IDLE_TIMEOUT".to_owned(), v));
        let mut absolute =
            var("OFFSTATE_ABSOLUTE_TIMEOUT").map(|v| ("OFFSTATE_ABSOLUTE_TIMEOUT".to_owned(), v));
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (arg.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(SettingsError::Help);
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| SettingsError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "--listen" => listen = Some((flag.clone(), value()?)),
                "--instance" => instance = Some(value()?),
                "--store" => store = Some(value()?),
                "--secure-cookies" => secure = Some((flag.clone(), value()?)),
                "--idle-timeout" => idle = Some((flag.clone(), value()?)),
                "--absolute-timeout" => absolute = Some((flag.clone(), value()?)),
                "--metrics-addr" => metrics = Some((flag.clone(), value()?)),
                // A switch: `--cache` alone, or `--cache=BOOL`.
                "--cache" => cache = Some((flag.clone(), inline.unwrap_or_else(|| "true".into()))),
                _ => return Err(SettingsError::Unknown(arg)),
            }
        }
        let listen = match listen {
            Some((name, value)) => value
                .parse::<SocketAddr>()
                .map_err(|_| SettingsError::BadValue { name, value })?,
            None => SocketAddr::from(([127, 0, 0, 1], 3000)),
        };
        let secure_cookies = match secure {
            Some((name, value)) => boolean(name, value)?,
            None => !listen.ip().is_loopback(),
        };
        let cache = match cache {
            Some((name, value)) => boolean(name, value)?,
            None => false,
        };
        let metrics_addr = match metrics {
            Some((name, value)) if !value.is_empty() => Some(
                value
                    .parse::<SocketAddr>()
                    .map_err(|_| SettingsError::BadValue { name, value })?,
            ),
            _ => None,
        };
        let instance = instance
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| format!("{}:{}", hostname(), listen.port()));
        Ok(Self {
            listen,
            instance,
            store: store.unwrap_or_else(|| "memory://".to_owned()),
            secure_cookies,
            cache,
            idle_timeout: idle.map(seconds).transpose()?,
            absolute_timeout: absolute.map(seconds).transpose()?,
            signing_key: var("OFFSTATE_SIGNING_KEY").filter(|k| !k.is_empty()),
            metrics_addr,
        })
    }
}

impl Settings {
    /// The default expiry policy with the timeouts these settings give.
    ///
    /// ```
    /// use std::time::Duration;
    /// use offstate_example_cart::config::Settings;
    ///
    /// let s = Settings::parse(["--idle-timeout=60", "--absolute-timeout=0"].map(String::from), |_| None).unwrap();
    /// let expiry = s.expiry();
    /// assert_eq!(expiry.idle(), Some(Duration::from_secs(60)));
    /// assert_eq!(expiry.absolute(), None);
    /// ```
    #[must_use]
    pub fn expiry(&self) -> ExpiryPolicy {
        let mut expiry = ExpiryPolicy::default();
        let or_none = |d: Duration| (!d.is_zero()).then_some(d);
        if let Some(idle) = self.idle_timeout {
            expiry = expiry.with_idle(or_none(idle));
        }
        if let Some(absolute) = self.absolute_timeout {
            expiry = expiry.with_absolute(or_none(absolute));
        }
        expiry
    }
}

/// A whole number of seconds.
fn seconds((name, value): (String, String)) -> Result<Duration, SettingsError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| SettingsError::BadValue { name, value })
}

/// A yes/no value.
fn boolean(name: String, value: String) -> Result<bool, SettingsError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(SettingsError::BadValue { name, value }),
    }
}

/// This machine's name, or `localhost` if it cannot be found.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_beat_the_environment() {
        let env = |name: &str| match name {
            "OFFSTATE_LISTEN" => Some("0.0.0.0:8080".to_owned()),
            "OFFSTATE_INSTANCE" => Some("from-env".to_owned()),
            _ => None,
        };
        let s = Settings::parse(args(&["--instance=from-flag"]), env).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.instance, "from-flag");
        assert!(s.secure_cookies, "not loopback: Secure by default");
        assert!(!s.cache);
    }

    #[test]
    fn cache_is_a_switch() {
        let s = Settings::parse(args(&["--cache", "--store", "redis://h:1"]), |_| None).unwrap();
        assert!(s.cache);
        assert_eq!(s.store, "redis://h:1");
        assert_eq!(s.metrics_addr, None);
        let s = Settings::parse(args(&["--cache=false"]), |_| None).unwrap();
        assert!(!s.cache);
        let env = |name: &str| (name == "OFFSTATE_CACHE").then(|| "yes".to_owned());
        assert!(Settings::parse(args(&[]), env).unwrap().cache);
    }

    #[test]
    fn timeouts_come_from_flags_or_the_environment() {
        let env = |name: &str| match name {
            "OFFSTATE_IDLE_TIMEOUT" => Some("90".to_owned()),
            "OFFSTATE_ABSOLUTE_TIMEOUT" => Some("3600".to_owned()),
            _ => None,
        };
        let s = Settings::parse(args(&["--idle-timeout", "5"]), env).unwrap();
        assert_eq!(s.expiry().idle(), Some(Duration::from_secs(5)));
        assert_eq!(s.expiry().absolute(), Some(Duration::from_secs(3600)));
        let s = Settings::parse(args(&[]), |_| None).unwrap();
        assert_eq!(s.expiry(), ExpiryPolicy::default());
        assert!(matches!(
            Settings::parse(args(&["--idle-timeout", "soon"]), |_| None),
            Err(SettingsError::BadValue { .. })
        ));
        assert!(USAGE.contains("--idle-timeout") && USAGE.contains("--absolute-timeout"));
    }

    #[test]
    fn metrics_addr_from_flag_or_environment() {
        let env =
            |name: &str| (name == "OFFSTATE_METRICS_ADDR").then(|| "127.0.0.1:9100".to_owned());
        let s = Settings::parse(args(&[]), env).unwrap();
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        let s = Settings::parse(args(&["--metrics-addr", "0.0.0.0:9200"]), env).unwrap();
        assert_eq!(s.metrics_addr, Some("0.0.0.0:9200".parse().unwrap()));
        assert!(matches!(
            Settings::parse(args(&["--metrics-addr=nope"]), |_| None),
            Err(SettingsError::BadValue { .. })
        ));
    }

    #[test]
    fn defaults_and_errors() {
        let s = Settings::parse(args(&[]), |_| None).unwrap();
        assert_eq!(s.listen, "127.0.0.1:3000".parse().unwrap());
        assert!(s.instance.ends_with(":3000"));
        assert!(matches!(
            Settings::parse(args(&["--listen"]), |_| None),
            Err(SettingsError::MissingValue(_))
        ));
        assert!(matches!(
            Settings::parse(args(&["--listen", "nope"]), |_| None),
            Err(SettingsError::BadValue { .. })
        ));
        assert!(matches!(
            Settings::parse(args(&["--frobnicate"]), |_| None),
            Err(SettingsError::Unknown(_))
        ));
        assert!(matches!(
            Settings::parse(args(&["--secure-cookies", "maybe"]), |_| None),
            Err(SettingsError::BadValue { .. })
        ));
    }
}
