//! What Postern ships to try it and to measure it, kept out of the data plane: a simulated
//! device and fleet (`postern simulate`, `postern device-sim`), `postern demo`, and the load
//! generator the benchmarks drive (`postern bench-load`, hidden). Everything here is a client of
//! the `broker` library, never the other way round.

pub mod demo;
pub mod device;
pub mod edges;
pub mod load;
pub mod scripted;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::args::{Cli, Command};
use crate::commands::Env;

/// `postern simulate`, `postern device-sim`, `postern bench-load`, `postern bench-edges`.
pub async fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::BenchLoad {
            broker,
            target,
            sessions,
            parallel,
            hold,
            every,
            report,
            typists,
        } => {
            let env = Env::open(cli).await?;
            let activity = load::Activity {
                hold: Duration::from_secs(*hold),
                every: (*every > 0.0).then(|| Duration::from_secs_f64(*every)),
                report: Duration::from_secs((*report).max(1)),
                typists: *typists,
            };
            load::run(&env, *broker, target, *sessions, *parallel, activity).await?;
        }
        Command::BenchEdges {
            central,
            edges,
            prefix,
            dir,
        } => {
            let env = Env::open(cli).await?;
            edges::run(&env, central, *edges, prefix, dir).await?;
        }
        Command::Simulate {
            sites,
            devices,
            authorized_key,
            out,
            homes,
            scripted,
        } => {
            let homes = homes.clone().unwrap_or_else(|| out.with_extension("homes"));
            device::run_fleet(*sites, *devices, authorized_key, out, &homes, *scripted).await?
        }
        Command::DeviceSim {
            listen,
            host_key,
            authorized_key,
            home,
        } => device::run_standalone(listen, host_key, authorized_key, home).await?,
        _ => anyhow::bail!("not a simulator command"),
    }
    Ok(ExitCode::SUCCESS)
}
