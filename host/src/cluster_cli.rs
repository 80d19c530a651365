//! The command line of cluster mode: `cairn serve`'s cluster flags
//! (`ClusterArgs`, flattened into `serve`) and `cairn cluster status`, a
//! client of `GET /v1/cluster`.

use serde_json::Value;

/// Cluster mode: several hosts over one PostgreSQL store (`--store postgres://…`).
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Join a cluster of hosts sharing the PostgreSQL store under this node name (unique in the cluster).
    #[arg(long, env = "CAIRN_NODE")]
    pub node: Option<String>,
    /// The address other hosts and clients reach this host's API at (default: http://LISTEN).
    #[arg(long, requires = "node")]
    pub advertise: Option<String>,
    /// How long a partition lease lasts without renewal, in milliseconds (renewed every third of it).
    #[arg(long, default_value_t = 3_000, requires = "node", value_parser = clap::value_parser!(u64).range(300..=600_000))]
    pub lease_ms: u64,
    /// The partition count, if this host creates the cluster (the first host fixes it for good).
    #[arg(long, default_value_t = 64, requires = "node", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
}

impl ClusterArgs {
    /// The service's cluster configuration, if `--node` was given.
    pub fn config(&self, listen: &str) -> Option<cairn_store::cluster::ClusterConfig> {
        let node = self.node.clone()?;
        Some(cairn_store::cluster::ClusterConfig {
            node,
            advertise: self.advertise.clone().unwrap_or_else(|| format!("http://{listen}")),
            partitions: self.partitions,
            lease_ms: self.lease_ms,
        })
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Nodes, partitions, their owners, epochs and lease ages.
    Status {
        /// Print the answer of `GET /v1/cluster` as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Prints `GET /v1/cluster`'s answer: a table of nodes, then one of partitions.
pub fn print_status(v: &Value, json: bool) -> i32 {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return 0;
    }
    println!(
        "cluster of {} partitions, lease {} ms (answered by {})",
        v["partitions"],
        v["lease_ms"],
        v["node"].as_str().unwrap_or("")
    );
    println!("{:<20} {:<32} {:>10} {:>6} {:>10}", "NODE", "ADVERTISE", "PARTITIONS", "LIVE", "HEARTBEAT");
    for n in v["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<32} {:>10} {:>6} {:>8}ms",
            n["name"].as_str().unwrap_or(""),
            n["advertise"].as_str().unwrap_or(""),
            n["partitions"].to_string(),
            if n["live"].as_bool() == Some(true) { "yes" } else { "no" },
            n["heartbeat_age_ms"].to_string()
        );
    }
    println!();
    println!("{:>9} {:<20} {:>6} {:>12} {:>12}", "PARTITION", "OWNER", "EPOCH", "LEASE LEFT", "LEASE AGE");
    for p in v["owners"].as_array().into_iter().flatten() {
        let remaining = p["lease_remaining_ms"].as_i64().unwrap_or(0);
        let owner = p["owner"].as_str().filter(|_| remaining > 0).unwrap_or("-");
        let age = p["lease_age_ms"].as_i64().map_or("-".to_string(), |a| format!("{a}ms"));
        println!("{:>9} {:<20} {:>6} {:>10}ms {:>12}", p["partition"].to_string(), owner, p["epoch"].to_string(), remaining.max(0), age);
    }
    0
}
