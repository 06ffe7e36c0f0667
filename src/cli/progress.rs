//! [`Bars`]: the command line's [`Progress`], drawn with indicatif on stderr. On a terminal
//! each stage is a bar with its count, rate and ETA (a spinner when the total is unknown);
//! otherwise indicatif hides the bars and each finished stage is one summary line on stderr
//! (`copying keys: 7/7 in 0.3 s (23.1/s)`), so scripts and tests read plain lines. With
//! `--json` nothing at all is shown: standard output carries the JSON document alone.

use hsm_kms::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress bars on stderr.
pub(crate) struct Bars {
    /// Whether anything is shown (false for `--json`).
    shown: bool,
    /// Whether stderr is a terminal (bars) or not (summary lines).
    terminal: bool,
    current: Option<Stage>,
}

struct Stage {
    what: String,
    total: u64,
    done: u64,
    started: Instant,
    bar: ProgressBar,
}

impl Bars {
    /// Bars (or summary lines) unless `quiet`.
    pub(crate) fn new(quiet: bool) -> Bars {
        Bars {
            shown: !quiet,
            terminal: std::io::stderr().is_terminal(),
            current: None,
        }
    }

    fn bar(&self, what: &str, total: u64) -> ProgressBar {
        if !self.shown {
            return ProgressBar::hidden();
        }
        // indicatif hides a stderr target that is not a terminal by itself.
        let bar = if total > 0 {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:<32} [{bar:30}] {pos}/{len} ({per_sec}, {elapsed} elapsed, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        } else {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}: {pos} done ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        };
        bar.set_message(what.to_string());
        bar
    }
}

impl Progress for Bars {
    fn stage(&mut self, what: &str, total: u64) {
        self.finish();
        self.current = Some(Stage {
            what: what.to_string(),
            total,
            done: 0,
            started: Instant::now(),
            bar: self.bar(what, total),
        });
    }

    fn advance(&mut self, n: u64) {
        if let Some(s) = self.current.as_mut() {
            s.done += n;
            s.bar.inc(n);
        }
    }

    fn finish(&mut self) {
        let Some(s) = self.current.take() else {
            return;
        };
        s.bar.finish();
        if self.shown && !self.terminal {
            let secs = s.started.elapsed().as_secs_f64();
            if s.total > 0 {
                eprintln!(
                    "{}: {}/{} in {secs:.1} s ({:.1}/s)",
                    s.what,
                    s.done,
                    s.total,
                    s.done as f64 / secs.max(1e-3)
                );
            } else if s.done > 0 {
                eprintln!(
                    "{}: {} done in {secs:.1} s ({:.1}/s)",
                    s.what,
                    s.done,
                    s.done as f64 / secs.max(1e-3)
                );
            } else {
                eprintln!("{} ({secs:.1} s)", s.what);
            }
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
