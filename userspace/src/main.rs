//! The `nstrail` binary: argument parsing and error reporting around the library.

#[cfg(feature = "dist")]
mod assets;
mod cli;
mod ls;
mod show;
mod sysctl;
mod tail;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let journal = stderr_is_journal();
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.target(env_logger::Target::Stderr);
    if journal {
        logger.format(|buf, record| {
            use std::io::Write as _;
            writeln!(buf, "{}", journal_line(record.level(), record.target(), &record.args().to_string()))
        });
    }
    logger.init();
    #[cfg(feature = "dist")]
    if let Some(dir) = std::env::var_os(assets::ENV) {
        return assets::write(std::path::Path::new(&dir));
    }
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Ls(_) | cli::Command::Show(_) | cli::Command::Sysctl(_)) {
        // One answer printed and done: `nstrail show X | head` ends quietly
        // when head does, as other tools do (the agent and tail handle EPIPE).
        // SAFETY: at the start of main, before any thread; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let priority = if journal { "<3>" } else { "" };
            // Errors quote arguments and names from the system: shown, never sent raw.
            eprintln!("{priority}nstrail: error: {}", nstrail::event::text::terminal_safe(&describe(&err)));
            ExitCode::FAILURE
        }
    }
}

/// Whether stderr is a stream to the systemd journal: `JOURNAL_STREAM` names
/// its device and inode (sd-daemon(3)); a child that inherited the variable
/// but writes elsewhere does not match.
fn stderr_is_journal() -> bool {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    std::fs::File::from(fd).metadata().is_ok_and(|m| names_stream(&stream.to_string_lossy(), m.dev(), m.ino()))
}

fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// A log line for the journal: its priority as `<N>` (sd-daemon(3)) on
/// every line, no timestamp (the journal keeps its own); the module only
/// at debug and trace.
fn journal_line(level: log::Level, target: &str, message: &str) -> String {
    let priority = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    let message = if level >= log::Level::Debug { format!("{target}: {message}") } else { message.to_owned() };
    message.lines().map(|line| format!("<{priority}>{line}")).collect::<Vec<_>>().join("\n")
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message before it already quotes.
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_the_priority_on_every_line() {
        assert_eq!(journal_line(log::Level::Info, "nstrail::agent", "14 probes attached"), "<6>14 probes attached");
        assert_eq!(journal_line(log::Level::Warn, "x", "a\nb"), "<4>a\n<4>b");
        assert_eq!(journal_line(log::Level::Error, "x", "bad"), "<3>bad");
        assert_eq!(journal_line(log::Level::Debug, "nstrail::sys", "m"), "<7>nstrail::sys: m");
    }

    #[test]
    fn journal_stream_is_device_and_inode() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("garbage", 8, 1234));
    }
}
