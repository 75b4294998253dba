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
