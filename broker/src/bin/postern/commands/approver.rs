//! `postern approver`: the people who approve requests in the web UI, and what they cover.

use anyhow::Result;
use approvals::time::now;
use serde_json::json;

use super::output::print_qr;
use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &ApproverAction) -> Result<()> {
    match action {
        ApproverAction::Add {
            name,
            sites,
            regions,
        } => {
            let creds = ApproverCredentials::new(name)?;
            env.actions()
                .add_approver(
                    &operator(),
                    name,
                    &creds.hash,
                    &creds.secret,
                    sites,
                    regions,
                    now(),
                )
                .await?;
            creds.show(env, name, "added");
        }
        ApproverAction::Reset { name } => {
            let creds = ApproverCredentials::new(name)?;
            env.actions()
                .reset_approver(&operator(), name, &creds.hash, &creds.secret)
                .await?;
            creds.show(env, name, "reset; signed out everywhere");
        }
        ApproverAction::Disable { name } => {
            env.actions().disable_approver(&operator(), name).await?;
            println!("approver {name} disabled and signed out");
        }
        ApproverAction::Update {
            name,
            sites,
            regions,
        } => {
            let clean = |l: &Option<Vec<String>>| {
                l.as_ref().map(|l| {
                    l.iter()
                        .map(|x| x.trim().to_owned())
                        .filter(|x| !x.is_empty())
                        .collect::<Vec<_>>()
                })
            };
            let (sites, regions) = (clean(sites), clean(regions));
            let a = env
                .actions()
                .update_approver(&operator(), name, sites.as_deref(), regions.as_deref())
                .await?;
            if env.json {
                println!("{}", serde_json::to_string(&a)?);
            } else {
                println!(
                    "approver {name} now covers sites [{}] and regions [{}]; in effect at once",
                    a.sites, a.regions
                );
            }
        }
        ApproverAction::List => {
            let rows = env.store.approvers().await?;
            env.print_list(&rows, &["APPROVER", "SITES", "REGIONS", "STATUS"], |a| {
                vec![
                    a.name.clone(),
                    a.sites.clone(),
                    a.regions.clone(),
                    if a.disabled {
                        "disabled".into()
                    } else {
                        "active".into()
                    },
                ]
            })?;
        }
    }
    Ok(())
}

/// A new approver password (random, shown once; only its argon2 hash is stored) and TOTP secret.
struct ApproverCredentials {
    password: String,
    hash: String,
    secret: String,
    uri: String,
}

impl ApproverCredentials {
    fn new(name: &str) -> Result<ApproverCredentials> {
        let password = hex::encode(rand::random::<[u8; 12]>());
        let hash = approvals::approvers::hash_password(&password)?;
        let secret = approvals::totp::new_secret();
        let uri = approvals::totp::otpauth_uri(&secret, name)?;
        Ok(ApproverCredentials {
            password,
            hash,
            secret,
            uri,
        })
    }

    fn show(&self, env: &Env, name: &str, what: &str) {
        if env.json {
            println!(
                "{}",
                json!({"approver": name, "password": self.password, "otpauth": self.uri})
            );
        } else {
            println!("approver {name} {what}.");
            println!("password (shown once): {}", self.password);
            println!(
                "TOTP enrolment (shown once; scan it in an authenticator app):\n{}\n",
                self.uri
            );
            print_qr(&self.uri);
        }
    }
}
