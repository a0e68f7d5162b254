//! Shell completions and man pages from the command line's own definition,
//! for the release packages: `NSTRAIL_WRITE_ASSETS=DIR nstrail` (a binary
//! built with `--features dist`, as `cargo xtask dist` does) writes
//! DIR/completions/{nstrail.bash,_nstrail,nstrail.fish} and
//! DIR/man/nstrail*.1, then exits.

use std::{path::Path, process::ExitCode};

use clap::CommandFactory as _;

pub const ENV: &str = "NSTRAIL_WRITE_ASSETS";

pub fn write(dir: &Path) -> ExitCode {
    match generate(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nstrail: error: writing completions and man pages to {}: {err}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn generate(dir: &Path) -> std::io::Result<()> {
    let mut command = crate::cli::Cli::command();
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, "nstrail", &completions)?;
    }
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    // One page per subcommand, none for `help` (a fresh command: generating
    // the completions built the first one, help subcommand included).
    clap_mangen::generate_to(crate::cli::Cli::command().disable_help_subcommand(true), &man)
}
