//! PostgreSQL, Redis and RabbitMQ of the fault suite's own: started from the installed server
//! programs in a temporary directory, on free ports of 127.0.0.1, so that the suite can stop and
//! restart them while the services every other test shares stay untouched. A restart brings a
//! service back on the same port with its data (PostgreSQL's cluster, RabbitMQ's durable queues
//! and persistent messages), as restarting a production service would; Redis keeps nothing, as
//! pub/sub needs nothing. Everything is stopped and the directory removed when the value is
//! dropped, also when the test fails (the logs are then kept, and their place printed, as
//! they are when `KEEP_FAULT_SUITE_LOGS` is set).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{Services, free_port, terminate, wait_until};

/// How long a service may take to start or stop; RabbitMQ boots in 5–25 s on a busy machine.
const SERVICE_PATIENCE: Duration = Duration::from_secs(120);

/// The programs the private services are started from.
struct Programs {
    /// Directory of `initdb`, `pg_ctl` and `postgres`.
    postgres_bin: PathBuf,
    redis_server: PathBuf,
    rabbitmq_server: PathBuf,
}

impl Programs {
    /// Finds the installed programs, or says which are missing.
    fn find() -> Result<Self, String> {
        let postgres_bin = std::env::var_os("PG_BIN")
            .map(PathBuf::from)
            .or_else(newest_postgres_bin)
            .or_else(|| on_path("pg_ctl").and_then(|p| p.parent().map(Path::to_path_buf)));
        // The Debian package's /usr/sbin/rabbitmq-server switches to the rabbitmq user, dropping
        // the environment that makes the node private; the script it wraps does not.
        let rabbitmq_server = Some(PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server"))
            .filter(|p| p.exists())
            .or_else(|| on_path("rabbitmq-server"));
        match (postgres_bin, on_path("redis-server"), rabbitmq_server) {
            (Some(postgres_bin), Some(redis_server), Some(rabbitmq_server)) => Ok(Self {
                postgres_bin,
                redis_server,
                rabbitmq_server,
            }),
            (postgres, redis, rabbitmq) => Err(format!(
                "the fault suite starts its own PostgreSQL, Redis and RabbitMQ and needs their \
                 server programs installed (missing: {}{}{}); SKIP_FAULT_SUITE=1 skips it",
                if postgres.is_none() {
                    "PostgreSQL's initdb/pg_ctl (or PG_BIN) "
                } else {
                    ""
                },
                if redis.is_none() { "redis-server " } else { "" },
                if rabbitmq.is_none() {
                    "rabbitmq-server"
                } else {
                    ""
                },
            )),
        }
    }
}

/// `/usr/lib/postgresql/<newest version>/bin`, where Debian puts PostgreSQL's programs.
fn newest_postgres_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Stops a service we run as a child (SIGTERM, as a service manager would).
async fn stop(child: &mut Option<Child>, what: &str) {
    if let Some(mut child) = child.take()
        && terminate(&mut child, SERVICE_PATIENCE).await.is_none()
    {
        eprintln!("{what} did not stop on SIGTERM in time; killed it");
    }
}

/// A PostgreSQL cluster of its own, run by the `postgres` user when the suite runs as root
/// (PostgreSQL refuses to run as root).
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    /// A cluster to be in `dir/postgres`; [`Self::init`] makes and starts it.
    fn new(bin: PathBuf, dir: &Path) -> Self {
        let home = dir.join("postgres");
        Self {
            bin,
            data: home.join("data"),
            log: home.join("postgres.log"),
            port: free_port(),
            as_postgres_user: is_root(),
        }
    }

    async fn init(&self) {
        let home = self.data.parent().expect("the cluster's directory");
        std::fs::create_dir(home).expect("creating PostgreSQL's directory");
        if self.as_postgres_user {
            let status = Command::new("chown")
                .args(["postgres:"])
                .arg(home)
                .status()
                .await
                .expect("chown");
            assert!(status.success(), "chown postgres {}", home.display());
        }
        let mut initdb = self.command("initdb");
        initdb
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "-D"])
            .arg(&self.data);
        succeeds(initdb, "initdb").await;
        self.start().await;
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    async fn pg_ctl(&self, args: &[&str]) {
        let timeout = SERVICE_PATIENCE.as_secs().to_string();
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(["-D"])
            .arg(&self.data)
            .args(["-w", "-t", &timeout])
            .args(args);
        succeeds(pg_ctl, &format!("pg_ctl {args:?}")).await;
    }

    async fn start(&self) {
        // TCP on 127.0.0.1 only, no Unix socket to place; fsync off since nothing here has to
        // outlive a crash of the machine (a shutdown still writes everything).
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off",
            self.port
        );
        let log = self.log.to_string_lossy().into_owned();
        self.pg_ctl(&["-l", &log, "-o", &options, "start"]).await;
    }

    async fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]).await;
    }
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A Redis server of its own, keeping nothing on disk.
struct Redis {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new(&self.program)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let url = self.url();
        wait_until("Redis to come up", SERVICE_PATIENCE, || async {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            match client.get_multiplexed_async_connection().await {
                Ok(mut connection) => redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    async fn stop(&mut self) {
        stop(&mut self.child, "Redis").await;
    }
}

/// A RabbitMQ node of its own: its own node name, ports, database, logs and configuration
/// (so neither the machine's `/etc/rabbitmq` nor its plugins, with their fixed ports, apply).
struct Rabbitmq {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

impl Rabbitmq {
    fn new(program: PathBuf, dir: &Path) -> Self {
        let dir = dir.join("rabbitmq");
        std::fs::create_dir(&dir).expect("creating RabbitMQ's directory");
        let port = free_port();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        )
        .expect("rabbitmq.conf");
        Self {
            program,
            dir,
            port,
            dist_port: free_port(),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn start(&mut self) {
        let dir = &self.dir;
        let node = format!(
            "killreport-faults-{}-{}@localhost",
            std::process::id(),
            self.port
        );
        let child = Command::new(&self.program)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // The Erlang cookie is made and read in $HOME.
            .env("HOME", dir)
            // The script then runs the Erlang VM in its place, so this child is the broker and
            // a SIGTERM stops it cleanly.
            .env("RUNNING_UNDER_SYSTEMD", "1")
            .env("RABBITMQ_NODENAME", node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("stdout.log")))
            .stderr(log_file(&dir.join("stdout.log")))
            .kill_on_drop(true)
            .spawn()
            .expect("starting rabbitmq-server");
        self.child = Some(child);
        let url = self.url();
        wait_until("RabbitMQ to come up", SERVICE_PATIENCE, || async {
            match killreport::queue::connect(&url, "fault suite: is RabbitMQ up").await {
                Ok(connection) => {
                    connection.close(200, "up").await.ok();
                    true
                }
                Err(_) => false,
            }
        })
        .await;
    }

    async fn stop(&mut self) {
        stop(&mut self.child, "RabbitMQ").await;
    }
}

/// The fault suite's own services; see the module's documentation.
pub struct PrivateServices {
    dir: PathBuf,
    postgres: Postgres,
    redis: Redis,
    rabbitmq: Rabbitmq,
}

impl PrivateServices {
    /// Whether the suite was asked to skip (for machines without the server programs).
    pub fn skipped() -> bool {
        std::env::var_os("SKIP_FAULT_SUITE").is_some_and(|v| v != "0")
    }

    /// Starts all three, each on a free port, and waits until they answer.
    pub async fn start() -> Self {
        let programs = Programs::find().unwrap_or_else(|missing| panic!("{missing}"));
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let dir = std::env::temp_dir().join(format!("killreport-faults-{id}"));
        std::fs::create_dir(&dir).expect("creating the services' directory");
        let redis = Redis {
            program: programs.redis_server,
            dir: dir.join("redis"),
            port: free_port(),
            child: None,
        };
        std::fs::create_dir(&redis.dir).expect("creating Redis's directory");
        // Made before anything starts, so that whatever has started is stopped by the drop if
        // another service fails to.
        let mut services = Self {
            postgres: Postgres::new(programs.postgres_bin, &dir),
            rabbitmq: Rabbitmq::new(programs.rabbitmq_server, &dir),
            redis,
            dir,
        };
        let Self {
            postgres,
            redis,
            rabbitmq,
            ..
        } = &mut services;
        // RabbitMQ is the slow one; the others start meanwhile.
        tokio::join!(rabbitmq.start(), redis.start(), postgres.init());
        services
    }

    pub fn services(&self) -> Services {
        Services {
            postgres: self.postgres.url(),
            redis: self.redis.url(),
            rabbitmq: self.rabbitmq.url(),
        }
    }

    /// Where the services' logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops PostgreSQL (`pg_ctl stop -m fast`: sessions are ended), leaves it down for
    /// `down`, and starts it again.
    pub async fn restart_postgres(&mut self, down: Duration) {
        self.postgres.stop().await;
        tokio::time::sleep(down).await;
        self.postgres.start().await;
    }

    /// Stops Redis (SIGTERM), leaves it down for `down`, and starts it again, empty.
    pub async fn restart_redis(&mut self, down: Duration) {
        self.redis.stop().await;
        tokio::time::sleep(down).await;
        self.redis.start().await;
    }

    /// Stops the RabbitMQ node (SIGTERM: connections closed, durable state written), leaves
    /// it down for `down`, and boots it again.
    pub async fn restart_rabbitmq(&mut self, down: Duration) {
        self.rabbitmq.stop().await;
        tokio::time::sleep(down).await;
        self.rabbitmq.start().await;
    }
}

impl Drop for PrivateServices {
    fn drop(&mut self) {
        // Synchronous, as a drop must be: killing the children needs no waiting (tokio reaps
        // them), and pg_ctl waits for PostgreSQL, which is not our child.
        for child in [self.redis.child.as_mut(), self.rabbitmq.child.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.start_kill();
        }
        let mut pg_ctl = if self.postgres.as_postgres_user {
            let mut command = std::process::Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.postgres.bin.join("pg_ctl"));
            command
        } else {
            std::process::Command::new(self.postgres.bin.join("pg_ctl"))
        };
        let _ = pg_ctl
            .arg("-D")
            .arg(&self.postgres.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() || std::env::var_os("KEEP_FAULT_SUITE_LOGS").is_some() {
            eprintln!("the fault suite's logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `command` to its end and asserts it succeeded, with its output when it did not.
async fn succeeds(mut command: Command, what: &str) {
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap_or_else(|error| panic!("running {what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
