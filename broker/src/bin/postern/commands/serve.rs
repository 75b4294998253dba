//! `postern serve`: run this node until SIGINT or SIGTERM.

use std::process::ExitCode;

use anyhow::Result;
use broker::Server;
use broker::server::{Listen, Listening};

use super::{Env, operator};

pub async fn run(
    env: Env,
    ssh: &Option<String>,
    web: &Option<String>,
    edge: &Option<String>,
) -> Result<ExitCode> {
    let ssh = ssh.clone().unwrap_or_else(|| env.cfg.ssh_listen.clone());
    let web = web.clone().unwrap_or_else(|| env.cfg.web_listen.clone());
    let edge = edge.clone().unwrap_or_else(|| env.cfg.edge_listen.clone());
    let metrics = env.cfg.metrics_listen.clone();
    serve(env, &ssh, &web, &edge, &metrics).await
}

/// Builds and runs the server; a listener that fails is a non-zero exit (so the service manager
/// restarts the node), a signal a clean one.
pub async fn serve(env: Env, ssh: &str, web: &str, edge: &str, metrics: &str) -> Result<ExitCode> {
    let listen = Listen {
        ssh,
        web,
        edge,
        metrics,
    };
    let server = Server::build(env.node, operator(), &listen).await?;
    let stopped = server.run(announce).await?;
    Ok(if stopped.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Tests and scripts wait for these lines (the vendors' line comes last).
fn announce(at: &Listening) {
    if at.web != "off" {
        println!("postern: web UI for approvers on {}", at.web);
    }
    if let Some(at) = at.web_devices {
        println!("postern: device web UIs on {at}");
    }
    if let Some(edge) = at.edge {
        println!("postern: listening for site edges on {edge}");
    }
    println!("postern: listening for vendors on {}", at.ssh);
}
