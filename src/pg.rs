//! Private PostgreSQL clusters run from the server binaries installed on the
//! machine: the embedded database of the binary (no `DATABASE_URL`) and the
//! throwaway cluster of the test harness share this discovery and start-up
//! code. It owns finding `initdb`/`pg_ctl`, running them as an unprivileged
//! user when we are root (PostgreSQL refuses to run as root), and starting a
//! server that listens on a Unix socket only.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Raised when the machine has no PostgreSQL server binaries; the caller
/// turns it into a configuration error (exit 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "no PostgreSQL server binaries found (looked for `initdb` and `pg_ctl` on PATH, in `pg_config --bindir` and in /usr/lib/postgresql/*/bin). \
     Install them (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql@15`) \
     or set DATABASE_URL to an existing server"
)]
pub struct NoServerBinaries;

/// Where the server binaries live.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub bindir: PathBuf,
}

impl Binaries {
    /// Finds `initdb` and `pg_ctl`: on PATH, then `pg_config --bindir`, then
    /// the newest `/usr/lib/postgresql/<version>/bin` (Debian keeps the
    /// server binaries off PATH).
    pub fn discover() -> Result<Binaries, NoServerBinaries> {
        let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if has_both(&dir) {
                    return Ok(Binaries { bindir: dir });
                }
            }
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_both(&dir) {
                return Ok(Binaries { bindir: dir });
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, dir)| has_both(dir))
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, bindir)| Binaries { bindir })
            .ok_or(NoServerBinaries)
    }

    fn command(&self, program: &str, run_as: Option<&RunAs>) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        if let Some(user) = run_as {
            cmd.uid(user.uid).gid(user.gid);
            // libpq and the server read $HOME; root's is not readable by them.
            cmd.env("HOME", "/tmp");
        }
        cmd.env_remove("PGDATA").env_remove("PGHOST").env_remove("PGPORT");
        cmd
    }
}

/// The unprivileged account the server runs as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn current_uid() -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the process's effective uid: no libc needed.
    Ok(std::fs::metadata("/proc/self")
        .context("reading the current user id from /proc/self")?
        .uid())
}

/// `None` when not root; the `postgres` account (created by the Debian
/// package) when root; an error saying so when there is no such account.
fn run_as() -> Result<Option<RunAs>> {
    if current_uid()? != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == "postgres" {
            let uid = fields[2]
                .parse()
                .context("parsing the uid of user postgres in /etc/passwd")?;
            let gid = fields[3]
                .parse()
                .context("parsing the gid of user postgres in /etc/passwd")?;
            return Ok(Some(RunAs { uid, gid }));
        }
    }
    bail!(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user to run it as; \
         create one (`useradd --system postgres`, or install the `postgresql` package which creates it) or run licensync as a normal user"
    )
}

fn check(output: Output, what: &str) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim(),
        String::from_utf8_lossy(&output.stdout).trim()
    )
}

/// A cluster in `dir` (data in `dir/data`, socket in `dir/socket`).
#[derive(Debug)]
pub struct Cluster {
    binaries: Binaries,
    run_as: Option<RunAs>,
    dir: PathBuf,
}

/// Extra server settings for throwaway clusters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// `fsync=off` and friends: for tests only, a crash loses data.
    pub unsafe_fast: bool,
}

impl Cluster {
    pub fn new(binaries: Binaries, dir: impl Into<PathBuf>) -> Result<Cluster> {
        let dir = dir.into();
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()?.join(dir)
        };
        Ok(Cluster {
            binaries,
            run_as: run_as()?,
            dir,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// A libpq URL for `database` over the Unix socket.
    pub fn url(&self, database: &str) -> String {
        let host: String =
            url::form_urlencoded::byte_serialize(self.socket_dir().as_os_str().as_encoded_bytes()).collect();
        format!("postgres:///{database}?host={host}&user=postgres")
    }

    /// Creates the cluster unless it exists, then starts the server unless it
    /// runs already (a previous process that died without stopping it).
    pub fn ensure_running(&self, tuning: Tuning) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::create_dir_all(self.socket_dir())?;
        if let Some(user) = self.run_as {
            for dir in [self.dir.clone(), self.socket_dir()] {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("giving {} to the postgres user", dir.display()))?;
            }
            self.check_reachable()?;
        }
        std::fs::set_permissions(self.socket_dir(), std::fs::Permissions::from_mode(0o700))?;
        if !self.data_dir().join("PG_VERSION").exists() {
            let out = self
                .binaries
                .command("initdb", self.run_as.as_ref())
                .arg("-D")
                .arg(self.data_dir())
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ])
                .stdin(Stdio::null())
                .output()
                .context("running initdb")?;
            check(out, "initdb")?;
        }
        if self.is_running()? {
            return Ok(());
        }
        let mut options = format!("-c listen_addresses='' -k {}", quote_path(&self.socket_dir()));
        if tuning.unsafe_fast {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200");
        }
        let log = self.dir.join("server.log");
        let start = [
            "-l".as_ref(),
            log.as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-o".as_ref(),
            options.as_ref(),
        ];
        let out = self.pg_ctl("start", &start)?;
        check(out, &format!("starting PostgreSQL (server log: {})", log.display()))
    }

    pub fn is_running(&self) -> Result<bool> {
        Ok(self.pg_ctl("status", &[])?.status.success())
    }

    /// Stops the server; `immediate` skips the shutdown checkpoint (tests).
    pub fn stop(&self, immediate: bool) -> Result<()> {
        let mode = if immediate { "immediate" } else { "fast" };
        let out = self.pg_ctl("stop", &["-w".as_ref(), "-m".as_ref(), mode.as_ref()])?;
        check(out, "stopping PostgreSQL")
    }

    /// `pg_ctl -D <data> <options> <action>`, as the server's user.
    fn pg_ctl(&self, action: &str, options: &[&std::ffi::OsStr]) -> Result<Output> {
        self.binaries
            .command("pg_ctl", self.run_as.as_ref())
            .arg("-D")
            .arg(self.data_dir())
            .args(options)
            .arg(action)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running pg_ctl {action}"))
    }

    /// The postgres user must be able to walk down to the data directory;
    /// say so plainly instead of letting initdb fail with EACCES.
    fn check_reachable(&self) -> Result<()> {
        let mut dir = self.dir.clone();
        while let Some(parent) = dir.parent() {
            let mode = std::fs::metadata(parent)?.permissions().mode();
            if mode & 0o001 == 0 {
                bail!(
                    "the data directory {} is inside {}, which the unprivileged `postgres` user cannot enter (mode {:o}); \
                     choose a --data-dir outside it (e.g. under /var/lib or /tmp) or set DATABASE_URL",
                    self.dir.display(),
                    parent.display(),
                    mode & 0o777
                );
            }
            dir = parent.to_path_buf();
        }
        Ok(())
    }
}

fn quote_path(path: &Path) -> String {
    // pg_ctl passes -o through a shell-like split: quote the path.
    format!("'{}'", path.as_os_str().to_string_lossy().replace('\'', "'\\''"))
}
