//! RabbitMQ's own CLI, for what a client cannot do to a broker: closing another process's
//! connection, as the broker does when it restarts or an operator steps in.

/// RabbitMQ's CLI: `rabbitmqctl`, or what `RABBITMQCTL` says (e.g. `docker compose exec -T
/// rabbitmq rabbitmqctl` when the broker runs in Docker).
fn rabbitmqctl(args: &[&str]) -> tokio::process::Command {
    let line = super::env_or("RABBITMQCTL", "rabbitmqctl");
    let mut words = line.split_whitespace();
    let mut command = tokio::process::Command::new(words.next().unwrap_or("rabbitmqctl"));
    command.args(words).args(args);
    command
}

/// Has RabbitMQ close every connection whose client-given name contains `needle`; returns how
/// many it closed.
pub async fn close_rabbitmq_connections(needle: &str) -> usize {
    let listed = rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .output()
    .await
    .expect("rabbitmqctl (RabbitMQ's own CLI) runs here");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let mut closed = 0;
    for line in listed.lines().filter(|l| l.contains(needle)) {
        let pid = line.split_whitespace().next().expect("a pid");
        let status = rabbitmqctl(&["-q", "close_connection", pid, "fault injected by a test"])
            .status()
            .await
            .expect("rabbitmqctl close_connection");
        assert!(status.success());
        closed += 1;
    }
    closed
}
