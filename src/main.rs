//! The keel server binary: parses etcd's flags, then runs a member.

mod config;
mod logging;
mod snapshot_cli;

use clap::Parser;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("snapshot") => std::process::exit(snapshot_cli::main(std::env::args().skip(1))),
        // etcd's `--version` (any spelling) and etcdutl-style `version`.
        Some("version" | "--version" | "-version" | "-V") => {
            println!("keel Version: {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API Version: {}", keel_actors::API_VERSION);
            println!("etcd Cluster Version: {}", keel_actors::CLUSTER_VERSION);
            return;
        }
        _ => {}
    }
    let flags = config::Flags::parse();
    let level = if flags.debug {
        "debug"
    } else {
        flags.log_level.as_str()
    };
    if let Err(e) = logging::parse_outputs(&flags.log_outputs)
        .and_then(|outputs| logging::init(&flags.logger, &outputs, &config::log_filter(level)))
    {
        eprintln!("keel: {e}");
        std::process::exit(1);
    }
    let env = std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    for var in config::unrecognized_env(env) {
        tracing::warn!("unrecognized environment variable {var}");
    }
    let cfg = match flags.into_node_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(name = %cfg.name, data_dir = %cfg.data_dir.display(), "starting keel");
    if let Err(e) = keel_actors::node::run(cfg) {
        eprintln!("keel: {e}");
        std::process::exit(1);
    }
}
