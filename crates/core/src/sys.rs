//! The only unsafe code in vap: thin, safe wrappers over the few libc calls it needs
//! (signals, the exit hook, the parent-death signal, account lookup, socket options), and the
//! one lock policy.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

pub use libc::{SIGKILL, SIGQUIT, SIGTERM};

/// Locks `m`. A holder that panicked is already taking its service down (owned tasks end the
/// process), and every value vap keeps behind a lock stays consistent between statements, so
/// the data is used as it is rather than spreading the panic.
#[allow(clippy::disallowed_methods)]
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `signal` to process `pid`; false when there is no such process or it is not ours.
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a positive pid
    // names one process (never a group).
    pid > 0 && unsafe { libc::kill(pid, signal) } == 0
}

/// Whether `pid` is gone for certain (ESRCH; a process we may not signal still exists).
pub fn is_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
    // SAFETY: signal 0 only checks that the process exists; no memory is involved.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Reaps `pid` if it is our exited child, without blocking.
pub fn reap_if_exited(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: a null status pointer is allowed by waitpid(2); WNOHANG never blocks.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
}

/// Runs `hook` when the process exits normally (after main returns, or `exit`).
pub fn at_exit(hook: extern "C" fn()) {
    // SAFETY: `hook` is a plain function with the C ABI and no arguments, as atexit(3) wants.
    unsafe { libc::atexit(hook) };
}

/// Makes the child get `signal` when the thread that spawned it exits.
pub fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: the closure runs between fork and exec and calls only prctl(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the account `name`.
pub fn account_ids(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid C string for the call; the result is null or points to a
    // static passwd record that we read at once, before any other getpw* call could reuse it.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// An integer socket option of descriptor `fd`; `None` when `fd` is not a socket or lacks it.
pub fn socket_option(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` live across the call and `len` is the size of `value`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
    (rc == 0).then_some(value)
}

/// Sets an integer socket option of descriptor `fd`.
pub fn set_socket_option(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `value` lives across the call and the length given is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// This host's name (read once): a local runner's node, a runner instance's name.
pub fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_a_child_and_its_end_is_seen() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(!is_gone(child.id()));
        assert!(signal(child.id(), SIGTERM));
        child.wait().unwrap();
        assert!(is_gone(child.id()));
        assert!(!signal(child.id(), SIGTERM));
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 1);
    }
}
