//! Host processes: liveness of a VMM by pid, and signals to it.

/// Is process `pid` alive? A zombie (exited, not yet reaped) is not.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    // Field 3 of /proc/PID/stat is the state; the command name before it may contain
    // spaces and parentheses, so look after the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends SIGKILL to `pid` if it is alive.
pub fn kill(pid: u32) {
    if pid_alive(pid) {
        // SAFETY: signalling a process we started (a domain's VMM); pid is non-zero.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_are_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for it to exit without reaping it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pid_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::yield_now();
        }
        // SAFETY: probing a pid we own; it is a zombie until waited for.
        assert_eq!(unsafe { libc::kill(pid as i32, 0) }, 0, "still a zombie");
        child.wait().unwrap();
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
