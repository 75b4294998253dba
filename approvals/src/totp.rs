//! TOTP second factor: enrolment secrets, otpauth URIs and checking a code.
//! Single use is enforced by [`crate::Store::consume_totp_step`]; this module only does the maths.

use totp_rs::{Builder, Secret, Totp};

/// Why a TOTP operation failed: the stored secret (or the account name) is unusable, never the
/// vendor's code (a wrong code is `Ok(None)`). Each carries the library's own explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("stored TOTP secret is unreadable: {0}")]
    UnreadableSecret(String),
    #[error("TOTP setup: {0}")]
    Setup(String),
    #[error("TOTP URI: {0}")]
    Uri(String),
}

fn build(secret_b32: &str, account: &str) -> Result<Totp, TotpError> {
    let secret = Secret::try_from_base32(secret_b32)
        .map_err(|e| TotpError::UnreadableSecret(e.to_string()))?;
    Builder::new()
        .with_secret(secret)
        .with_issuer(Some("Postern"))
        .with_account_name(account)
        .build()
        .map_err(|e| TotpError::Setup(e.to_string()))
}

/// A new random secret (160 bits), base32.
pub fn new_secret() -> String {
    Secret::generate().to_base32()
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(secret_b32: &str, account: &str) -> Result<String, TotpError> {
    build(secret_b32, account)?
        .to_url()
        .map_err(|e| TotpError::Uri(e.to_string()))
}

/// The time step a code matches (current, one before or one after), if any.
pub fn check(secret_b32: &str, code: &str, unix_time: u64) -> Result<Option<u64>, TotpError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(build(secret_b32, "x")?.check(code, unix_time))
}

/// The code for a given time (for tests, the demo, and scripted clients).
pub fn code_at(secret_b32: &str, unix_time: u64) -> Result<String, TotpError> {
    Ok(build(secret_b32, "x")?.generate(unix_time).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_neighbours_only() {
        let s = new_secret();
        let t = 1_800_000_000u64;
        let code = code_at(&s, t).unwrap();
        assert_eq!(check(&s, &code, t).unwrap(), Some(t / 30));
        assert_eq!(check(&s, &code, t + 30).unwrap(), Some(t / 30));
        assert_eq!(check(&s, &code, t + 90).unwrap(), None);
        assert_eq!(check(&s, "12345", t).unwrap(), None);
        assert_eq!(check(&s, "abcdef", t).unwrap(), None);
        assert!(
            otpauth_uri(&s, "alice")
                .unwrap()
                .starts_with("otpauth://totp/Postern:alice?")
        );
    }

    #[test]
    fn an_unreadable_secret_is_an_error_not_a_wrong_code() {
        let e = check("not base32!", "123456", 1_800_000_000).unwrap_err();
        assert!(matches!(e, TotpError::UnreadableSecret(_)));
        assert!(
            e.to_string()
                .starts_with("stored TOTP secret is unreadable: ")
        );
        assert!(matches!(
            code_at("not base32!", 0),
            Err(TotpError::UnreadableSecret(_))
        ));
    }
}
