//! `--wait`: following a task to its end, with a progress bar when stdout
//! is a terminal and plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use control::{Client, Reply, Request, Response, TaskInfo, TaskState};
use indicatif::{ProgressBar, ProgressStyle};

use super::exit::Failure;
use super::render::{kind, task_line};

/// How often the task is asked for (well within the server's rate).
const POLL: Duration = Duration::from_millis(250);

/// How progress is shown while waiting.
enum Display {
    /// Nothing (`--json`: only the final response).
    Quiet,
    /// A line whenever the whole percentage or the state changes.
    Lines { last: Option<(TaskState, u32)> },
    /// A progress bar.
    Bar(ProgressBar),
}

impl Display {
    fn new(json: bool) -> Self {
        if json {
            Display::Quiet
        } else if std::io::stdout().is_terminal() {
            let bar = ProgressBar::new(1000);
            if let Ok(style) = ProgressStyle::with_template("{msg} [{wide_bar}] {percent:>3}%") {
                bar.set_style(style);
            }
            Display::Bar(bar)
        } else {
            Display::Lines { last: None }
        }
    }

    fn show(&mut self, t: &TaskInfo) {
        match self {
            Display::Quiet => {}
            Display::Lines { last } => {
                let now = (t.state, (t.progress * 100.0).floor() as u32);
                if *last != Some(now) && !t.state.is_final() {
                    *last = Some(now);
                    if !crate::output::write_text(&format!("{}\n", task_line(t))) {
                        // Nobody reads stdout any more: go on waiting quietly.
                        *self = Display::Quiet;
                    }
                }
            }
            Display::Bar(bar) => {
                bar.set_position((t.progress * 1000.0).round() as u64);
                let eta = t
                    .eta_secs
                    .map(|s| {
                        format!(
                            " eta {}",
                            humantime::format_duration(Duration::from_secs(s))
                        )
                    })
                    .unwrap_or_default();
                let detail = t
                    .detail
                    .as_ref()
                    .map(|d| format!(" {d}"))
                    .unwrap_or_default();
                bar.set_message(format!(
                    "task {} {} {}{detail}{eta}",
                    t.id,
                    kind(t),
                    t.target
                ));
            }
        }
    }

    fn finish(self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Follows `task` until it ends. Returns the last response line and the
/// task as it ended; a task that failed or was cancelled is a [`Failure`]
/// (after the line is printed by the caller).
pub fn follow(
    client: &mut Client,
    task: TaskInfo,
    json: bool,
) -> Result<(String, TaskInfo), Failure> {
    let mut display = Display::new(json);
    let mut t = task;
    let mut line = None;
    while !t.state.is_final() {
        display.show(&t);
        std::thread::sleep(POLL);
        let (raw, response) = client.call(&Request::TaskGet { task: t.id })?;
        t = match response {
            Response::Result(Reply::Task(next)) => next,
            Response::Result(other) => {
                return Err(Failure::Client(control::ClientError::Protocol(format!(
                    "task.get answered {other:?}"
                ))))
            }
            Response::Error(e) => {
                display.finish();
                return Err(Failure::Refused(e));
            }
        };
        line = Some(raw);
    }
    display.finish();
    let line = line.unwrap_or_else(|| {
        serde_json::to_string(&Response::Result(Reply::Task(t.clone()))).unwrap_or_default()
    });
    Ok((line, t))
}
