//! A real systemd, booted with systemd-nspawn from the rootfs scripts/systemd-rootfs caches,
//! sharing the host's network and seeing the project read-only at its own path. Its system bus
//! is reachable from the host through a bound socket, exactly as vap drives a remote host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::TestApp;
use super::fleet::{orchestrator_config, runner_env, spawn_orchestrator_with_config};

/// vap-orchestrator with `backend = "systemd"` driving the container's bus: `section` adds keys
/// of `[orchestrator.systemd]`, `env` entries for the runners' environment.
pub fn spawn_systemd_orchestrator(
    app: &TestApp,
    ct: &Container,
    dir: &Path,
    max_workers: usize,
    section: &str,
    env: &[&str],
) -> Child {
    spawn_orchestrator_with_config(app, &systemd_orchestrator_config(app, ct, dir, max_workers, section, env))
}

/// The configuration `spawn_systemd_orchestrator` starts with, written into `dir`.
pub fn systemd_orchestrator_config(
    app: &TestApp,
    ct: &Container,
    dir: &Path,
    max_workers: usize,
    section: &str,
    env: &[&str],
) -> PathBuf {
    let mut runner_env = runner_env(app);
    runner_env.extend(env.iter().map(|e| e.to_string()));
    // A checkout under /tmp (CI clones there) would vanish behind a private /tmp, which a
    // dynamic user always has: there the runners run as `nobody` instead.
    let under_tmp = env!("CARGO_MANIFEST_DIR").starts_with("/tmp");
    let section = format!(
        "bus_address = \"{}\"\nnode_name = \"container\"\nrunner_bin = \"{}\"\nrunner_env = {}\nprivate_tmp = {}\n{}runner_key_file = \"{}\"\n{section}",
        ct.bus_address(),
        super::fleet::RUNNER_BIN,
        serde_json::to_string(&runner_env).unwrap(),
        !under_tmp,
        if under_tmp { "user = \"nobody\"\n" } else { "" },
        runner_key_file().display(),
    );
    orchestrator_config(dir, "systemd", max_workers, &section)
}

/// The runner key for systemd runners, at a path the containers see too (the project is bound
/// in at its own path): root-only, as Ansible installs it.
pub fn runner_key_file() -> PathBuf {
    static KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("runner-{}.key", std::process::id()));
        std::fs::write(&path, format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        path
    })
    .clone()
}

pub struct Container {
    child: Child,
    bus_dir: tempfile::TempDir,
    command: Vec<String>,
}

impl Container {
    /// The runner rootfs (scripts/systemd-rootfs), read-only with a throwaway overlay, with the
    /// project bound in read-only at its own path.
    pub fn boot() -> Container {
        let project = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rootfs = rootfs(&[]);
        Self::start(
            &rootfs,
            &["--read-only".into(), "--volatile=overlay".into(), format!("--bind-ro={}", project.display())],
        )
    }

    /// Boots `root` as it is, writable and kept across reboots: a provisioned host. `binds_ro`
    /// are host paths it sees read-only at the same path.
    pub fn boot_host(root: &Path, binds_ro: &[&Path]) -> Container {
        let args: Vec<String> = binds_ro.iter().map(|p| format!("--bind-ro={}", p.display())).collect();
        Self::start(root, &args)
    }

    fn start(root: &Path, args: &[String]) -> Container {
        let bus_dir = tempfile::tempdir().unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!("vap-test-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut command: Vec<String> = vec!["-D".into(), root.display().to_string()];
        command.extend(["--register=no", "--keep-unit", "-M", &name, "--console=pipe", "-q"].map(String::from));
        command.push(format!("--bind={}:/run/dbus", bus_dir.path().display()));
        command.extend(args.iter().cloned());
        command.push("-b".into());
        let child = spawn_nspawn(&command);
        let c = Container { child, bus_dir, command };
        c.wait_until_up();
        c
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.state().is_some_and(|s| s == "running" || s == "degraded") {
            assert!(Instant::now() < deadline, "the container's systemd did not come up (state {:?})", self.state());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `systemctl reboot` over the bus; systemd-nspawn ends with 133 when its container reboots,
    /// and is started again as a host's firmware would.
    pub fn reboot(&mut self) {
        self.ask_reboot();
        self.wait_rebooted();
    }

    /// The first half of `reboot`, so several hosts can go down together.
    pub fn ask_reboot(&self) {
        let asked = self.busctl(&[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Reboot",
        ]);
        assert!(asked.is_some(), "Reboot refused");
    }

    /// The second half of `reboot`: call it from the thread that booted the container.
    pub fn wait_rebooted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let jobs = self.exec(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "the container did not go down for the reboot; systemd's jobs:\n{}",
                    String::from_utf8_lossy(&jobs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(status.code(), Some(133), "systemd-nspawn's exit for a reboot");
        self.child = spawn_nspawn(&self.command);
        self.wait_until_up();
    }

    /// The D-Bus address of the container's system bus, as vap's configuration takes it.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}/system_bus_socket", self.bus_dir.path().display())
    }

    pub fn busctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("busctl")
            .arg(format!("--address={}", self.bus_address()))
            .arg("--json=short")
            .arg("--")
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// systemd's SystemState ("running" once booted).
    pub fn state(&self) -> Option<String> {
        let v = self.busctl(&[
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "SystemState",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&v).ok()?;
        v["data"].as_str().map(str::to_string)
    }

    /// The same bus reached the way `systemctl -H` reaches a remote host's, through
    /// `systemd-stdio-bridge` over a pipe, with nsenter standing in for ssh.
    pub fn stdio_bridge_address(&self) -> String {
        format!("unixexec:path=nsenter,argv1=-t,argv2={},argv3=-a,argv4=systemd-stdio-bridge", self.init_pid())
    }

    pub fn init_pid(&self) -> String {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id())).unwrap();
        children.split_whitespace().next().expect("the container's init").to_string()
    }

    /// Runs `command` inside the container (its PID 1's namespaces), as root; returns its
    /// status and output.
    pub fn exec(&self, command: &[&str]) -> std::process::Output {
        Command::new("nsenter").args(["-t", &self.init_pid(), "-a", "--"]).args(command).output().expect("nsenter")
    }

    /// What the container's journal holds of `unit` (systemd's lines and the unit's output).
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-o", "short-monotonic", "-u", unit]);
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// A property of a loaded unit, as busctl's JSON value (`None`: no such unit).
    pub fn unit_property(&self, unit: &str, interface: &str, property: &str) -> Option<serde_json::Value> {
        let path = self.busctl(&[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "GetUnit",
            "s",
            unit,
        ])?;
        let path: serde_json::Value = serde_json::from_str(&path).ok()?;
        let v =
            self.busctl(&["get-property", "org.freedesktop.systemd1", path["data"][0].as_str()?, interface, property])?;
        serde_json::from_str::<serde_json::Value>(&v).ok().map(|v| v["data"].clone())
    }

    /// `systemctl kill --kill-whom=main --signal=N unit`, over the bus.
    pub fn kill_unit(&self, unit: &str, signal: i32) {
        let out = self.busctl(&[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "KillUnit",
            "ssi",
            unit,
            "main",
            &signal.to_string(),
        ]);
        assert!(out.is_some(), "KillUnit {unit} failed");
    }

    /// Loaded units matching `pattern`, with their active state, as systemd itself reports them.
    pub fn units(&self, pattern: &str) -> Vec<(String, String, String)> {
        let Some(out) = self.busctl(&[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "ListUnitsByPatterns",
            "asas",
            "0",
            "1",
            pattern,
        ]) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["data"][0]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r[0].as_str().unwrap_or("").to_string(),
                            r[3].as_str().unwrap_or("").to_string(),
                            r[4].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The cached rootfs scripts/systemd-rootfs builds (`args`: its arguments).
pub fn rootfs(args: &[&str]) -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(project.join("scripts/systemd-rootfs"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/systemd-rootfs");
    assert!(out.status.success(), "building the rootfs failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The cgroup hierarchies a container gets a group of its own in (v1's named `systemd` one and
/// the unified one of a hybrid layout, or the one of a pure v2 layout).
fn cgroup_roots() -> Vec<PathBuf> {
    ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .filter(|root| root.join("cgroup.procs").exists())
        .collect()
}

/// systemd-nspawn in a cgroup of its own, `name`: started from a host whose init is not systemd,
/// it would otherwise put every container's payload in the same group, so two containers'
/// units of the same name would share one cgroup (not so on two real hosts).
fn spawn_nspawn(args: &[String]) -> Child {
    let name = args.iter().position(|a| a == "-M").and_then(|i| args.get(i + 1)).cloned().unwrap_or_default();
    let mut join = String::new();
    for root in cgroup_roots() {
        let group = root.join(&name);
        if std::fs::create_dir_all(&group).is_ok() {
            join += &format!("echo $$ > {}/cgroup.procs 2>/dev/null; ", group.display());
        }
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("{join}exec systemd-nspawn \"$@\"")).arg("sh");
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SIGTERM makes systemd-nspawn halt the container cleanly. It fires when the
    // spawning *thread* ends: boot from the test's own thread, not a pool thread.
    vap_core::sys::die_with_parent(&mut cmd, vap_core::sys::SIGTERM);
    cmd.spawn().expect("systemd-nspawn (scripts/setup installs systemd-container)")
}

impl Drop for Container {
    fn drop(&mut self) {
        vap_core::sys::signal(self.child.id(), vap_core::sys::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.remove_cgroups();
    }
}

impl Container {
    /// Its cgroups, once its processes are gone (best effort: a group still busy stays).
    fn remove_cgroups(&self) {
        fn remove(dir: &Path) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        let Some(name) = self.command.iter().position(|a| a == "-M").and_then(|i| self.command.get(i + 1)) else {
            return;
        };
        // The last processes may take a moment to leave their groups.
        let deadline = Instant::now() + Duration::from_secs(3);
        for root in cgroup_roots() {
            let group = root.join(name);
            remove(&group);
            while group.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                remove(&group);
            }
        }
    }
}
