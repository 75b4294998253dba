//! The operator commands, one module each. A command opens the data directory, does one thing
//! through `approvals::Actions` (audited, or not done), and prints a result: a table, or JSON
//! with `--json`. Errors reach `main` and become one line on stderr.

pub mod approver;
pub mod audit;
pub mod ca;
pub mod command_log;
pub mod device;
pub mod device_rotate;
pub mod edge;
pub mod function;
pub mod grant;
pub mod invite;
pub mod keys;
pub mod lists;
pub mod output;
pub mod replay;
pub mod report;
pub mod request;
pub mod scan;
pub mod serve;
pub mod sessions;
pub mod site;
pub mod vendor;
pub mod verify;

use std::process::ExitCode;

use anyhow::Result;
use approvals::audit::AuditEvent;
use broker::Node;
use broker::config::DataDir;
use serde_json::Value;

use crate::args::{CheckpointsAction, Cli, Command, DemoAction, KeysAction, RootAction};
use output::print_table;

/// An opened data directory, with how the operator wants results printed.
pub struct Env {
    pub node: Node,
    pub json: bool,
}

impl std::ops::Deref for Env {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Env {
    pub async fn open(cli: &Cli) -> Result<Env> {
        let node = Node::open(&cli.data, cli.config.as_deref()).await?;
        Ok(Env {
            node,
            json: cli.json,
        })
    }

    /// Records an operator action; the command fails if the audit log cannot be written.
    pub fn audit(&self, event: AuditEvent, fields: Value) -> Result<()> {
        Ok(self.node.audit_as(&operator(), event, fields)?)
    }

    fn print_list<T: serde::Serialize>(
        &self,
        rows: &[T],
        headers: &[&str],
        cells: impl Fn(&T) -> Vec<String>,
    ) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(rows)?);
            return Ok(());
        }
        let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
        print_table(headers, &body);
        Ok(())
    }
}

/// The operator running this command, as the actor of an action: the Unix user of the process's
/// uid (not `$USER`, which may be unset or anything).
pub fn operator() -> approvals::Actor {
    approvals::Actor::operator(&broker::sys::login_name())
}

/// Runs the command the operator gave.
pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init => init(&cli).await,
        Command::Demo { action, ssh, web } => {
            let code_of = action
                .as_ref()
                .map(|DemoAction::Code { approver }| *approver);
            crate::sim::demo::run(&cli, code_of, ssh, web.as_deref()).await
        }
        Command::Serve { ssh, web, edge } => {
            serve::run(Env::open(&cli).await?, ssh, web, edge).await
        }
        Command::Edge {
            action:
                action @ (crate::args::EdgeAction::Join { .. } | crate::args::EdgeAction::Run { .. }),
        } => edge::at_site(&cli, action).await,
        Command::Verify {
            file: Some(file),
            public_key,
            keyring,
            root,
            expect_session,
            ..
        } => {
            let trust = verify::FileTrust::of(public_key, keyring, root)?;
            verify::verify_standalone(file, &trust, expect_session.as_deref(), cli.json)
        }
        Command::SealKey { current } => {
            keys::seal_key(&DataDir::new(&cli.data), *current, cli.json)
        }
        Command::Keys {
            action:
                KeysAction::Root {
                    action: RootAction::Init { out },
                },
        } => keys::root_init(&DataDir::new(&cli.data), out),
        Command::BenchLoad { .. }
        | Command::BenchEdges { .. }
        | Command::Simulate { .. }
        | Command::DeviceSim { .. } => crate::sim::run(&cli).await,
        _ => {
            let env = Env::open(&cli).await?;
            let code = with_env(&env, &cli.command).await;
            env.store.close().await;
            code
        }
    }
}

/// `postern init`.
async fn init(cli: &Cli) -> Result<ExitCode> {
    let data = DataDir::new(&cli.data);
    broker::init::init(&data, &operator()).await?;
    println!("initialised {}", data.root.display());
    println!(
        "vendor CA public key: {}",
        data.ca_key().with_extension("pub").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The commands that work on an opened data directory.
async fn with_env(env: &Env, command: &Command) -> Result<ExitCode> {
    match command {
        Command::Vendor { action } => vendor::run(env, action).await?,
        Command::Site { action } => site::run(env, action).await?,
        Command::Edge { action } => edge::run(env, action).await?,
        Command::Device { action } => device::run(env, action).await?,
        Command::Function { action } => function::run(env, action).await?,
        Command::Grant { action } => grant::run(env, action).await?,
        Command::Approver { action } => approver::run(env, action).await?,
        Command::Request { action } => request::run(env, action).await?,
        Command::Sessions { live, action } => sessions::run(env, *live, action.as_ref()).await?,
        Command::Replay {
            id,
            speed,
            idle_limit,
            at,
            input,
        } => replay::replay(env, id, *speed, *idle_limit, *at, *input).await?,
        Command::Export { id, input } => replay::export(env, id, *input).await?,
        Command::Notifications => lists::notifications(env).await?,
        Command::Breakglass => lists::breakglass(env).await?,
        Command::Exceptions { site } => lists::exceptions(env, site.as_deref()).await?,
        Command::Report { since } => report::report(env, since).await?,
        Command::Commands {
            vendor,
            site,
            device,
            since,
            grep,
        } => {
            let filter = command_log::Filter {
                vendor: vendor.as_deref(),
                site: site.as_deref(),
                device: device.as_deref(),
                since: since.as_deref(),
                grep: grep.as_deref(),
            };
            command_log::run(env, &filter).await?
        }
        Command::Audit { follow, since } => audit::run(env, *follow, since.as_deref()).await?,
        Command::Verify {
            id,
            root,
            checkpoints,
            ..
        } => return verify::run(env, id.as_deref(), root.as_deref(), checkpoints.as_deref()).await,
        Command::Keys { action } => keys::run(env, action).await?,
        Command::Ca { action } => ca::run(env, action).await?,
        Command::Checkpoints {
            action: CheckpointsAction::Export { node },
        } => lists::checkpoints(env, node.as_deref()).await?,
        Command::Scan {
            site,
            list,
            remove,
            all_at,
            concurrency,
        } => {
            let mode = match (list, remove, all_at) {
                (true, ..) => scan::Mode::List,
                (_, Some(fp), _) => scan::Mode::Remove(fp),
                (_, _, Some(target)) => scan::Mode::AllAt(target),
                _ => scan::Mode::Scan {
                    site: site.as_deref(),
                },
            };
            scan::run(env, mode, *concurrency).await?
        }
        Command::Init
        | Command::Demo { .. }
        | Command::Serve { .. }
        | Command::DeviceSim { .. }
        | Command::Simulate { .. }
        | Command::BenchLoad { .. }
        | Command::BenchEdges { .. }
        | Command::SealKey { .. } => unreachable!("handled in dispatch"),
    }
    Ok(ExitCode::SUCCESS)
}
