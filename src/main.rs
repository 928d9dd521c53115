//! The `licensync` binary: parse the configuration, start logging, run the
//! command, and map failures to the exit codes of the contract (cli.md).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use licensync::cli::Cli;
use licensync::config::Config;
use licensync::error::{EXIT_USAGE, exit_code};
use licensync::secret::redact;

fn main() -> ExitCode {
    // A panic message can quote a value that held a secret: scrub it like any error.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("licensync panicked: {}", redact(&info.to_string()))
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let config = match Config::from_settings(&cli.settings, std::io::stderr().is_terminal()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {}", redact(&format!("{e:#}")));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    licensync::logging::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(licensync::app::run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", redact(&format!("{e:#}")));
            exit_code(&e)
        }
    }
}
