//! `postern`: the broker binary and the operator CLI. `main` only sets up logging and the
//! runtime and dispatches; each subcommand is a module in `commands/`, the device simulator, the
//! demo and the load generator are in `sim/`, and the data plane is the `broker` library.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod sim;

use clap::Parser;

use args::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Serve { .. }
            | Command::Edge {
                action: args::EdgeAction::Run { .. }
            }
            | Command::Demo { action: None, .. }
            | Command::DeviceSim { .. }
            | Command::Simulate { .. }
            | Command::BenchEdges { .. }
    );
    if !serving && !matches!(cli.command, Command::BenchLoad { .. }) {
        // Rust ignores SIGPIPE, so printing to a closed pipe (`postern commands | head -1`)
        // panics. A one-shot command instead ends quietly, as Unix tools do, when its reader has
        // gone. Serving processes keep ignoring it: a vendor hanging up must not stop the broker.
        broker::sys::default_sigpipe();
    }
    let default = if serving {
        "info,russh=warn"
    } else {
        "warn,russh=error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("postern: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One clear line: the error and its causes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                msg.push_str(": ");
                msg.push_str(&cause.to_string());
            }
            eprintln!("postern: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
