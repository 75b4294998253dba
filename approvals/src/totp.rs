//! TOTP second factor: enrolment secrets, otpauth URIs and checking a code.
//! Single use is enforced by [`crate::Store::consume_totp_step`]; this module only does the maths.

use totp_rs::{Builder, Secret, Totp};

fn build(secret_b32: &str, account: &str) -> Result<Totp, String> {
    let secret = Secret::try_from_base32(secret_b32)
        .map_err(|e| format!("stored TOTP secret is unreadable: {e}"))?;
    Builder::new()
        .with_secret(secret)
        .with_issuer(Some("Postern"))
        .with_account_name(account)
        .build()
        .map_err(|e| format!("TOTP setup: {e}"))
}

/// A new random secret (160 bits), base32.
pub fn new_secret() -> String {
    Secret::generate().to_base32()
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(secret_b32: &str, account: &str) -> Result<String, String> {
    build(secret_b32, account)?
        .to_url()
        .map_err(|e| format!("TOTP URI: {e}"))
}

/// The time step a code matches (current, one before or one after), if any.
pub fn check(secret_b32: &str, code: &str, unix_time: u64) -> Result<Option<u64>, String> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(build(secret_b32, "x")?.check(code, unix_time))
}

/// The code for a given time (for tests, the demo, and scripted clients).
pub fn code_at(secret_b32: &str, unix_time: u64) -> Result<String, String> {
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
}
