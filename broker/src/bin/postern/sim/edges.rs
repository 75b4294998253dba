//! `postern bench-edges`: many site edges from one process, for the edge benchmark. Each edge gets
//! a site of its own and a registration (through `approvals::Actions`, audited, as `edge add`
//! does), joins the central with its token like `postern edge join`, then keeps its link up with
//! the same code as `postern edge run`. Benchmark use only: it writes sites and edges into the
//! data dir.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use approvals::store::NewEdge;
use approvals::time::now;
use broker::edge::ca::EdgeCa;
use broker::edge::token::JoinToken;
use tokio::sync::Semaphore;

use crate::commands::{Env, operator};

/// Registers and joins `count` edges (`PREFIX-0000`... for sites of the same names), `parallel`
/// joins at a time, under `dir`; then runs them all until the process is stopped.
pub async fn run(env: &Env, central: &str, count: usize, prefix: &str, dir: &Path) -> Result<()> {
    broker::sys::raise_open_files_limit();
    let ca = EdgeCa::load_or_create(&env.node.data.keys())?;
    let pin = ca.pin()?;
    let actions = env.actions();
    let mut tokens = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}-{i:04}");
        if env.store.edge(&name).await?.is_some() {
            continue;
        }
        actions
            .add_site(&operator(), &name, Some("bench"), now())
            .await?;
        let token = JoinToken::new(&name, &pin);
        let hash = JoinToken::secret_hash(&token.secret);
        let sites = [name.clone()];
        let edge = NewEdge {
            name: &name,
            region: Some("bench"),
            sites: &sites,
            token_hash: &hash,
            token_expires: now() + 3600,
            ttl: 86_400,
        };
        actions.add_edge(&operator(), &edge, now()).await?;
        tokens.push((name, token.to_string()));
    }
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(16));
    let mut joins = tokio::task::JoinSet::new();
    for (name, token) in tokens {
        let (gate, central, data) = (gate.clone(), central.to_owned(), dir.join(&name));
        joins.spawn(async move {
            let _slot = gate.acquire_owned().await;
            broker::edge::join::join(&central, &token, &data)
                .await
                .with_context(|| format!("joining {name}"))
        });
    }
    while let Some(joined) = joins.join_next().await {
        joined??;
    }
    println!(
        "bench-edges: {count} edges joined in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut links = tokio::task::JoinSet::new();
    for i in 0..count {
        let data = dir.join(format!("{prefix}-{i:04}"));
        links.spawn(async move { broker::edge::agent::run(&data).await });
    }
    println!("bench-edges: {count} edges running");
    if let Some(ended) = links.join_next().await {
        ended??;
    }
    Ok(())
}
