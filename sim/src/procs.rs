//! Long-lived helper processes (pods, routers): started fully detached from the invoking CLI (own
//! session, stdin/stdout/stderr on /dev/null, so a caller reading the CLI's pipes to EOF never waits
//! on them), checked for liveness through `/proc`, and stopped by process group.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use crate::error::{Context, Result};

/// Starts `convox <args>` (this same binary) detached; returns its pid.
pub fn spawn_daemon(home: &Path, args: &[String]) -> Result<u32> {
    spawn_daemon_with_env(home, args, &BTreeMap::new())
}

/// Like `spawn_daemon`, with extra environment variables for it (and what it runs).
pub fn spawn_daemon_with_env(
    home: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<u32> {
    let exe = std::env::current_exe().context(|| "finding the convox binary itself".to_string())?;
    let mut child = Command::new(&exe)
        .args(args)
        .envs(env)
        .env("CONVOX_SIM_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let pid = child.id();
    // Reap it if it exits while this invocation is still running, so it never lingers as a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// Called first thing by every daemon: leave the caller's session and terminal.
pub fn detach_from_caller() {
    let _ = rustix::process::setsid();
}

fn pid_of(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    match stat.rsplit_once(')') {
        Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None),
        None => false,
    }
}

/// Whether `pid` is alive and its argv contains `marker` (guards against a reused pid).
pub fn is_ours(pid: u32, marker: &str) -> bool {
    if pid == 0 || !is_alive(pid) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| raw.split(|b| *b == 0).any(|part| part == marker.as_bytes()))
        .unwrap_or(false)
}

/// Stops a daemon and everything it started (its process group): TERM, then KILL after `grace`.
pub fn stop_group(pid: u32, grace: Duration) {
    let Some(target) = pid_of(pid) else { return };
    let _ = kill_process_group(target, Signal::TERM);
    let _ = kill_process(target, Signal::TERM);
    let deadline = Instant::now() + grace;
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if is_alive(pid) {
        let _ = kill_process_group(target, Signal::KILL);
        let _ = kill_process(target, Signal::KILL);
    }
}

/// A free loopback port right now (the OS picks it).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context(|| "finding a free loopback port".to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .context(|| "finding a free loopback port".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn own_process_is_alive_and_nonsense_pid_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX - 1));
        assert!(!is_ours(0, "x"));
    }

    #[test]
    fn stopping_a_group_ends_a_child_and_zombies_count_as_dead() {
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(is_alive(pid));
        stop_group(pid, Duration::from_secs(2));
        // Until reaped it is a zombie, which must already read as dead.
        assert!(!is_alive(pid));
        let _ = child.wait();
    }
}
