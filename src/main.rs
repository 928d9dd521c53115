//! The `licensync` binary: parse the command line, build the configuration,
//! start logging and the runtime, run the command, and map its outcome to
//! the exit codes of the contract (cli.md) in `licensync::error`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use licensync::cmd::Cli;
use licensync::config::Config;
use licensync::error::{exit_code, usage};
use licensync::secret::redact;
use licensync::shutdown::Shutdown;

fn main() -> ExitCode {
    // A panic message can quote a value that held a secret: scrub it like any error.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("licensync panicked: {}", redact(&info.to_string()))
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout and usage errors to stderr.
            let _ = e.print();
            return exit_code(&e.into());
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", redact(&format!("{e:#}")));
            exit_code(&e)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_settings(&cli.settings, std::io::stderr().is_terminal()).map_err(usage)?;
    licensync::logging::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Only the commands that stop cleanly take over SIGTERM/SIGINT.
        let shutdown = if cli.command.stops_on_signal() {
            Shutdown::on_signal()
        } else {
            Shutdown::never()
        };
        cli.command.run(&config, shutdown).await
    })
}
