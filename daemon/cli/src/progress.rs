//! Fetch progress: a bar on a terminal, plain lines otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub enum Progress {
    Bar(ProgressBar),
    Lines { label: String, last_tenth: Option<u64> },
}

impl Progress {
    pub fn new(label: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            Progress::Bar(bar)
        } else {
            Progress::Lines { label: label.to_string(), last_tenth: None }
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            Progress::Lines { label, last_tenth } => {
                // One line per tenth, so logs stay short.
                let tenth = done.saturating_mul(10).checked_div(total).unwrap_or(10);
                if *last_tenth != Some(tenth) {
                    *last_tenth = Some(tenth);
                    eprintln!("{label}: {done} / {total} bytes");
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
