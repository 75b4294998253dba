//! The few calls into the operating system that need `unsafe`: the open-files limit, the
//! SIGPIPE disposition and the terminal mode replay uses. Everything else in Postern is safe Rust
//! (`unsafe_code` is forbidden in `recorder` and `approvals` and denied in the rest of the broker).

#![allow(unsafe_code)]

/// Every session holds two sockets (vendor and device): raise the soft limit on open files to
/// the hard one, as servers do, so thousands of sessions fit.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Restores the default SIGPIPE disposition (Rust ignores it): a one-shot command then ends
/// quietly when its reader has gone, as Unix tools do. Call before any thread starts.
pub fn default_sigpipe() {
    // SAFETY: restores the default disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The terminal on stdin switched to unbuffered, no-echo input until dropped (for replay's
/// keyboard control). `None` if stdin is not a terminal.
pub struct RawInput {
    saved: libc::termios,
}

impl RawInput {
    pub fn take() -> Option<RawInput> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios struct.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Some(RawInput { saved })
        }
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read in `take`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// The login name of the user running this process, from its real uid (never from `$USER`,
/// which anyone can set or unset). Run as root through `sudo`, the user who ran sudo
/// (`SUDO_UID`: only root can set it for a root process). A uid with no passwd entry is named
/// `uid:N`, so the audit log always says who acted.
pub fn login_name() -> String {
    // SAFETY: getuid cannot fail and has no preconditions.
    let uid = unsafe { libc::getuid() };
    let uid = match std::env::var("SUDO_UID")
        .ok()
        .map(|s| s.parse::<libc::uid_t>())
    {
        Some(Ok(sudoer)) if uid == 0 => sudoer,
        _ => uid,
    };
    user_name(uid).unwrap_or_else(|| format!("uid:{uid}"))
}

/// The passwd name of `uid`, if it has one.
pub fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: a zeroed passwd is a valid out-parameter; getpwuid_r writes into it and `buf`
        // (whose length we pass) and sets `found` to it or to null.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pw.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        return Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_has_a_name_and_the_current_user_too() {
        assert_eq!(super::user_name(0).as_deref(), Some("root"));
        assert!(!super::login_name().is_empty());
    }
}
