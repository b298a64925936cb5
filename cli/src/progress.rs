//! The progress bar on long operations: on stderr, and only for people
//! (hidden with `--json`, and by indicatif when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar with a count, for work of known size.
pub(crate) fn bar(json: bool, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), target(json));
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar
}

/// A spinner with a count, for work of unknown size (a key scan).
pub(crate) fn spinner(json: bool, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target(json));
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {pos}") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar
}

fn target(json: bool) -> ProgressDrawTarget {
    if json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}
