//! Database rows to model types. The schema keeps flags as 0/1 integers and kinds and states as
//! text (one set of queries serves SQLite and PostgreSQL through the Any driver); the model has
//! `bool`s and enums. A stored value no enum knows fails the row's decoding instead of passing
//! for something it is not.

use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::model::{
    AccessRequestRow, Approver, Device, Function, IssuedCertificate, Session, Vendor, VendorCa,
};

/// A 0/1 flag column.
fn flag(row: &AnyRow, column: &str) -> sqlx::Result<bool> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

/// A text column holding one of an enum's names.
fn named<T>(row: &AnyRow, column: &str) -> sqlx::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    row.try_get::<String, _>(column)?
        .parse()
        .map_err(|e: T::Err| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
}

impl FromRow<'_, AnyRow> for Vendor {
    fn from_row(row: &AnyRow) -> sqlx::Result<Vendor> {
        Ok(Vendor {
            name: row.try_get("name")?,
            org: row.try_get("org")?,
            contract_end: row.try_get("contract_end")?,
            disabled: flag(row, "disabled")?,
            totp_secret: row.try_get("totp_secret")?,
            totp_last_step: row.try_get("totp_last_step")?,
            created: row.try_get("created")?,
        })
    }
}

impl FromRow<'_, AnyRow> for Device {
    fn from_row(row: &AnyRow) -> sqlx::Result<Device> {
        Ok(Device {
            site: row.try_get("site")?,
            name: row.try_get("name")?,
            addr: row.try_get("addr")?,
            login: row.try_get("login")?,
            credential_kind: named(row, "credential_kind")?,
            credential: row.try_get("credential")?,
            host_key: row.try_get("host_key")?,
            created: row.try_get("created")?,
        })
    }
}

impl FromRow<'_, AnyRow> for Function {
    fn from_row(row: &AnyRow) -> sqlx::Result<Function> {
        Ok(Function {
            name: row.try_get("name")?,
            allow: row.try_get("allow")?,
            login: row.try_get("login")?,
            max_window: row.try_get("max_window")?,
            emergency: flag(row, "emergency")?,
            created: row.try_get("created")?,
            emergency_orgs: row.try_get("emergency_orgs")?,
            offline_ok: flag(row, "offline_ok")?,
        })
    }
}

impl FromRow<'_, AnyRow> for Session {
    fn from_row(row: &AnyRow) -> sqlx::Result<Session> {
        Ok(Session {
            id: row.try_get("id")?,
            vendor: row.try_get("vendor")?,
            site: row.try_get("site")?,
            device: row.try_get("device")?,
            function: row.try_get("function")?,
            grant_id: row.try_get("grant_id")?,
            node: row.try_get("node")?,
            source: row.try_get("source")?,
            recording: row.try_get("recording")?,
            started: row.try_get("started")?,
            ended: row.try_get("ended")?,
            end_reason: row.try_get("end_reason")?,
            kill_requested: flag(row, "kill_requested")?,
            records: row.try_get("records")?,
            final_hash: row.try_get("final_hash")?,
            breakglass: row.try_get("breakglass")?,
        })
    }
}

impl FromRow<'_, AnyRow> for IssuedCertificate {
    fn from_row(row: &AnyRow) -> sqlx::Result<IssuedCertificate> {
        Ok(IssuedCertificate {
            serial: row.try_get("serial")?,
            vendor: row.try_get("vendor")?,
            key_id: row.try_get("key_id")?,
            key_fingerprint: row.try_get("key_fingerprint")?,
            valid_after: row.try_get("valid_after")?,
            valid_before: row.try_get("valid_before")?,
            revoked: flag(row, "revoked")?,
            created: row.try_get("created")?,
            ca: row.try_get("ca")?,
        })
    }
}

impl FromRow<'_, AnyRow> for VendorCa {
    fn from_row(row: &AnyRow) -> sqlx::Result<VendorCa> {
        Ok(VendorCa {
            public_key: row.try_get("public_key")?,
            node: row.try_get("node")?,
            created: row.try_get("created")?,
            retired: row.try_get("retired")?,
        })
    }
}

impl FromRow<'_, AnyRow> for Approver {
    fn from_row(row: &AnyRow) -> sqlx::Result<Approver> {
        Ok(Approver {
            name: row.try_get("name")?,
            password_hash: row.try_get("password_hash")?,
            totp_secret: row.try_get("totp_secret")?,
            totp_last_step: row.try_get("totp_last_step")?,
            sites: row.try_get("sites")?,
            regions: row.try_get("regions")?,
            disabled: flag(row, "disabled")?,
            created: row.try_get("created")?,
        })
    }
}

impl FromRow<'_, AnyRow> for AccessRequestRow {
    fn from_row(row: &AnyRow) -> sqlx::Result<AccessRequestRow> {
        Ok(AccessRequestRow {
            id: row.try_get("id")?,
            vendor: row.try_get("vendor")?,
            site: row.try_get("site")?,
            device: row.try_get("device")?,
            function: row.try_get("function")?,
            reason: row.try_get("reason")?,
            duration: row.try_get("duration")?,
            status: named(row, "status")?,
            created: row.try_get("created")?,
            decided_at: row.try_get("decided_at")?,
            decided_by: row.try_get("decided_by")?,
            decision_reason: row.try_get("decision_reason")?,
            grant_id: row.try_get("grant_id")?,
            escalated_at: row.try_get("escalated_at")?,
        })
    }
}
