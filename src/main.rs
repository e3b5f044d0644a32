//! The keel server binary: parses etcd's flags, then runs a member.

mod config;

use clap::Parser;

fn main() {
    let flags = config::Flags::parse();
    let level = flags.log_level.clone();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::log_filter(&level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
