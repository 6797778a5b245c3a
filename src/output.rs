//! Standard output of the CLI commands. A reader that goes away (`opie
//! initiator ls | head -1`) is not an error of the command and must not
//! panic it, as `print!` would: writes report whether stdout still takes
//! them, and the `out!`/`outln!` macros drop what a closed stdout cannot
//! take.

use std::fmt;
use std::io::Write;

/// Writes `text` to stdout and flushes it; false once stdout is closed.
pub fn write_text(text: &str) -> bool {
    write_fmt(format_args!("{text}"))
}

/// Writes formatted text to stdout and flushes it; false once stdout is
/// closed (or failed otherwise: nothing more can be shown there).
pub fn write_fmt(args: fmt::Arguments<'_>) -> bool {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush()).is_ok()
}

/// `print!` that never panics: see the module doc.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = $crate::output::write_fmt(format_args!($($arg)*));
    }};
}

/// `println!` that never panics: see the module doc.
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => {{
        let _ = $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

pub(crate) use out;
pub(crate) use outln;
