//! The end-to-end tests, linked as one test binary (`e2e`) so that CI links once: the real
//! `postern` binary, real OpenSSH clients, a real `sshd` as the device, all on loopback.
//!
//! `cargo test --workspace` runs them with everything else; `cargo test -p broker --test e2e`
//! runs only these, and a module name filters one area: `cargo test -p broker --test e2e
//! hardening::` (or a single test by its name).
//!
//! The tests run in parallel threads of this one process, so none may change what the process
//! shares: no `std::env::set_var`, no change of directory, no fixed port (the harness binds port
//! 0), no signal handlers, and names outside a test's own temporary directory (PostgreSQL
//! databases, files in /tmp) carry something unique to the test, not only the process id.

mod harness;

mod actions;
mod backpressure;
mod browser;
mod certificates;
mod checkpoints;
mod cli;
mod commands;
mod crash;
mod demo;
mod denials;
mod device_web;
mod disk_full;
mod edge_policy;
mod edge_site;
mod edges;
mod enrolment;
mod escalation;
mod evidence;
mod evidence_store;
mod exceptions;
mod faults;
mod fleet;
mod hardening;
mod insider;
mod keyring;
mod lifecycle;
mod metrics;
mod monitoring;
mod multinode;
mod password_rotation;
mod requests;
mod rotation;
mod rotation_schedule;
mod scan;
mod scope;
mod secrets;
mod ssh_sessions;
mod supervision;
mod web;
