//! The pages and form actions of the web UI, one module per part of it; the error pages and the
//! checks every form shares are here.

mod dashboard;
mod grants;
mod requests;
mod sessions;
mod signin;

pub use dashboard::{DashboardFigures, dashboard};
pub use grants::{grants, mark_reviewed, review, revoke};
pub use requests::{approve, deny, requests};
pub use sessions::{session_detail, sessions, terminate};
pub use signin::{login, login_form, logout};

use crate::audit::AuditEvent;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::html;
use super::{Signed, WebState, same_token};
use crate::actions::ActionError;
use crate::store::StoreError;

type St = State<Arc<WebState>>;
type Page = Result<Response, Response>;

/// Turns a store error into a page: what the approver did wrong, or that the control plane failed.
fn store_error(e: StoreError) -> Response {
    let status = match &e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Db(_)
        | StoreError::Migrate(_)
        | StoreError::Timeout
        | StoreError::Secret(_) => {
            warn!(error = %e, "web: database error");
            return html::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The control plane is unavailable; nothing was changed. Try again shortly.",
            );
        }
    };
    html::error(status, &e.to_string())
}

/// Turns a refused action into a page; nothing was changed in any case.
fn action_error(e: ActionError) -> Response {
    let status = match &e {
        ActionError::NotFound(_) => StatusCode::NOT_FOUND,
        ActionError::Conflict(_) => StatusCode::CONFLICT,
        ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
        ActionError::NotCovered(_) => StatusCode::FORBIDDEN,
        ActionError::AuditUnwritable(_) => {
            warn!(error = %e, "web: action refused");
            return audit_failed();
        }
        ActionError::Unavailable(_) => {
            warn!(error = %e, "web: action refused");
            return html::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The control plane is unavailable; nothing was changed. Try again shortly.",
            );
        }
    };
    html::error(status, &e.to_string())
}

fn audit_failed() -> Response {
    html::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The audit log cannot be written, so nothing was changed.",
    )
}

/// Refuses a form whose CSRF token is missing or not this sign-in's, and records the attempt.
async fn check_csrf(
    state: &WebState,
    s: &Signed,
    token: &str,
    action: AuditEvent,
) -> Result<(), Response> {
    if same_token(token, &s.login.csrf) {
        return Ok(());
    }
    state
        .audit(
            AuditEvent::WebCsrfRefused,
            s.name(),
            json!({"action": action.name(), "token": if token.is_empty() { "missing" } else { "wrong" }}),
        )
        .await;
    Err(html::error(
        StatusCode::FORBIDDEN,
        "This form did not come from your Postern session (its CSRF token is missing or wrong). Reload the page and try again.",
    ))
}

/// The sites an approver answers for, with each site's region.
struct Scope {
    regions: HashMap<String, Option<String>>,
}

impl Scope {
    async fn load(state: &WebState) -> Result<Scope, Response> {
        let sites = state.store.sites().await.map_err(store_error)?;
        Ok(Scope {
            regions: sites.into_iter().map(|s| (s.name, s.region)).collect(),
        })
    }

    fn covers(&self, s: &Signed, site: &str) -> bool {
        let region = self.regions.get(site).and_then(|r| r.as_deref());
        s.login.approver.covers(site, region)
    }
}

fn not_yours(what: &str, id: &str) -> Response {
    html::error(
        StatusCode::NOT_FOUND,
        &format!("There is no {what} {id} among your sites."),
    )
}

fn back(to: &str) -> Response {
    Redirect::to(to).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfOnly {
    csrf: String,
}

// ---- static files (our own) ----

pub async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/style.css"),
    )
        .into_response()
}

pub async fn replay_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/replay.js"),
    )
        .into_response()
}
