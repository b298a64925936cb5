//! `offstate`: the session layer's command-line tool for the person on
//! call. It takes the same store URLs as the cart example
//! ([`offstate::connect`]) and does what the admin API does, without an app:
//!
//! ```text
//! offstate --store redis://127.0.0.1:6379 sessions --user alice
//! offstate --store redis://127.0.0.1:6379 revoke --user alice
//! offstate --store redis://127.0.0.1:6379 revoke --key <hashed key>
//! offstate --store dynamodb:///sessions stats
//! offstate ping --store memcached://10.0.0.5:11211
//! ```
//!
//! `--json` prints the admin API's JSON (`offstate_admin` schema) for
//! scripts; a progress bar shows on long operations when stderr is a
//! terminal. Exit codes: 0 done; 1 the store failed or did not answer;
//! 2 bad usage or a bad store URL; 3 the store cannot do this (listing on
//! memcached). Errors are one line on stderr.
//!
//! # Layout
//!
//! - `main.rs`: the command line, dispatch, exit codes.
//! - `stats.rs`: server statistics per backend.
//! - `progress.rs`: the progress bar (hidden for `--json` and pipes).

mod progress;
mod stats;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use offstate::connect::{self, Backend, StoreOptions, StoreSetupError};
use offstate_admin::{AdminError, SessionList, ops};
use offstate_core::Sessions;

/// The session layer's tool for operators: list and revoke a user's
/// sessions, read store statistics, check that the store answers.
#[derive(Debug, Parser)]
#[command(name = "offstate", version)]
struct Cli {
    /// Where sessions live: redis://host:port, rediss://..., `memcached://h:p[,h:p]`,
    /// dynamodb://host:port/table (local), dynamodb:///table (AWS), memory://.
    #[arg(long, global = true, env = "OFFSTATE_STORE")]
    store: Option<String>,
    /// Print JSON (the admin API's schema) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List a user's live sessions: hashed key, created, last write,
    /// deadlines, size, key names (never values or IDs).
    Sessions {
        /// The principal (user) whose sessions to list.
        #[arg(long, allow_hyphen_values = true)]
        user: String,
        /// List one page of at most this many sessions (1 to 1000), in the
        /// order of their keys; without it, every session.
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this cursor (printed at the end of a page).
        // Keys and cursors are base64url, so they may start with '-'.
        #[arg(long, requires = "limit", allow_hyphen_values = true)]
        cursor: Option<String>,
    },
    /// End sessions: all of one or more users, or one by its hashed key.
    Revoke {
        /// A principal whose sessions to end (repeat for several).
        #[arg(
            long,
            required_unless_present_any = ["key", "users_from"],
            allow_hyphen_values = true
        )]
        user: Vec<String>,
        /// A file with one principal per line (an incident's list).
        #[arg(long)]
        users_from: Option<std::path::PathBuf>,
        /// The hashed key of one session (from `offstate sessions`).
        #[arg(
            long,
            conflicts_with_all = ["user", "users_from"],
            allow_hyphen_values = true
        )]
        key: Option<String>,
    },
    /// The store server's statistics (memory, items, hit rate, evictions).
    Stats,
    /// Check that the store answers: exit 0 if it does, 1 with a one-line
    /// reason if it does not.
    Ping,
}

/// A failure, with the exit code it gives.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    fn store(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<AdminError> for Failure {
    fn from(error: AdminError) -> Self {
        let code = match error {
            AdminError::Unsupported { .. } => 3,
            AdminError::BadKey(_) | AdminError::BadCursor(_) | AdminError::BadLimit(_) => 2,
            _ => 1,
        };
        Self {
            code,
            message: ops::error_line(&error),
        }
    }
}

impl From<StoreSetupError> for Failure {
    fn from(error: StoreSetupError) -> Self {
        let code = match error {
            StoreSetupError::Connect { .. } => 1,
            _ => 2,
        };
        Self {
            code,
            message: ops::error_line(&error),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("offstate: cannot start: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // One line, whatever the error said.
            eprintln!("offstate: {}", failure.message.replace('\n', " "));
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let url = cli
        .store
        .as_deref()
        .ok_or_else(|| Failure::usage("no store: pass --store URL or set OFFSTATE_STORE"))?;
    // A tool reads and revokes; it never creates a DynamoDB table.
    let options = StoreOptions::default().with_create_table(false);
    let backend = connect::connect(url, &options).await?;
    let sessions = backend.clone().into_sessions(&options)?;
    match cli.command {
        Command::Ping => ping(&sessions, cli.json).await,
        Command::Sessions {
            user,
            limit,
            cursor,
        } => {
            let page = match limit {
                Some(limit) => {
                    let page = ops::Page::first(limit)?;
                    Some(match cursor {
                        Some(cursor) => page.after(&cursor)?,
                        None => page,
                    })
                }
                None => None,
            };
            list(&sessions, &user, page.as_ref(), cli.json).await
        }
        Command::Revoke {
            user,
            users_from,
            key,
        } => match key {
            Some(key) => revoke_key(&sessions, &key, cli.json).await,
            None => {
                let mut users = user;
                if let Some(path) = users_from {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        Failure::usage(format!("cannot read {}: {e}", path.display()))
                    })?;
                    users.extend(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(str::to_owned),
                    );
                }
                revoke_users(&sessions, &users, cli.json).await
            }
        },
        Command::Stats => stats_command(&backend, &sessions, cli.json).await,
    }
}

async fn ping(sessions: &Sessions, json: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let health = ops::health(sessions).await;
    if json {
        print_json(&health);
    }
    match health.error {
        None => {
            if !json {
                println!(
                    "ok: the {} store answered in {:.1} ms",
                    health.store,
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            Ok(())
        }
        Some(reason) => Err(Failure::store(format!(
            "the {} store does not answer: {reason}",
            health.store
        ))),
    }
}

async fn list(
    sessions: &Sessions,
    user: &str,
    page: Option<&ops::Page>,
    json: bool,
) -> Result<(), Failure> {
    let bar = progress::bar(json, "reading sessions");
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let list = match page {
        Some(page) => ops::list_page(sessions, user, page, progress).await,
        None => ops::list_sessions(sessions, user, progress).await,
    };
    bar.finish_and_clear();
    let list = list?;
    if json {
        print_json(&list);
    } else {
        print_list(&list);
    }
    Ok(())
}

fn print_list(list: &SessionList) {
    println!(
        "{} live session(s) of {:?} on {}{}",
        list.sessions.len(),
        list.principal,
        list.store,
        if list.consistent {
            ""
        } else {
            " (index is eventually consistent: a session created a moment ago may be missing)"
        }
    );
    if !list.sessions.is_empty() {
        println!(
            "{:<43}  {:<20}  {:<20}  {:<20}  {:>7}  keys",
            "key", "created", "last write", "expires", "bytes"
        );
    }
    for s in &list.sessions {
        println!(
            "{:<43}  {:<20}  {:<20}  {:<20}  {:>7}  {}",
            s.key,
            stats::utc(Some(s.created_at_ms)),
            stats::utc(s.last_write_at_ms),
            stats::utc(s.expires_at_ms),
            s.size_bytes,
            s.keys.join(",")
        );
    }
    if let Some(cursor) = &list.next_cursor {
        println!("more: --limit <n> --cursor {cursor}");
    }
}

async fn revoke_key(sessions: &Sessions, key: &str, json: bool) -> Result<(), Failure> {
    let key = ops::parse_key(key)?;
    let revoked = ops::revoke_one(sessions, &key).await?;
    if json {
        print_json(&revoked);
    } else if revoked.revoked {
        println!("revoked session {}", revoked.key);
    } else {
        println!("no live session {} (already ended)", revoked.key);
    }
    Ok(())
}

async fn revoke_users(sessions: &Sessions, users: &[String], json: bool) -> Result<(), Failure> {
    if users.is_empty() {
        return Err(Failure::usage("no user to revoke"));
    }
    let bar = progress::bar(json, "revoking");
    bar.set_length(users.len() as u64);
    let mut results = Vec::with_capacity(users.len());
    for user in users {
        match ops::revoke_all(sessions, user).await {
            Ok(done) => results.push(done),
            Err(error) => {
                bar.abandon();
                // Say how far it got: what was revoked stays revoked, and
                // running the same command again finishes the job.
                let mut failure = Failure::from(error);
                failure.message = format!(
                    "{} (revoked {} of {} users before this; run again to finish)",
                    failure.message,
                    results.len(),
                    users.len()
                );
                return Err(failure);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if json {
        if results.len() == 1 {
            print_json(&results[0]);
        } else {
            print_json(&results);
        }
    } else {
        for r in &results {
            match r.revoked {
                Some(n) => println!("revoked {n} session(s) of {:?}", r.principal),
                None => println!(
                    "revoked every session of {:?} (this store does not count them)",
                    r.principal
                ),
            }
        }
    }
    Ok(())
}

async fn stats_command(backend: &Backend, sessions: &Sessions, json: bool) -> Result<(), Failure> {
    let bar = progress::spinner(json, "reading statistics");
    let report = stats::collect(backend, &bar).await;
    bar.finish_and_clear();
    let report = report.map_err(|e| {
        Failure::store(format!(
            "the {} store does not answer: {e}",
            sessions.store_name()
        ))
    })?;
    if json {
        print_json(&report);
    } else {
        stats::print(&report);
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("offstate: cannot print JSON: {error}"),
    }
}
