//! The keel server binary: parses etcd's flags, then runs a member.

mod compat;
mod config;
mod logging;
mod snapshot_cli;
mod srv;

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
    let args = config::go_style(std::env::args().collect());
    let (args, file_unknown) = match config::with_config_file(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keel: {e}");
            std::process::exit(1);
        }
    };
    if file_unknown.is_some() {
        // etcd: with a configuration file, other flags and the environment
        // are ignored.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                std::env::remove_var(k);
            }
        }
    }
    let flags = config::Flags::parse_from(args);
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
    let flags_config_file = flags.config_file.clone();
    let cfg = match flags.into_node_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: {e}");
            std::process::exit(1);
        }
    };
    if let (Some(file), Some(unknown)) = (&flags_config_file, &file_unknown) {
        tracing::info!(
            path = %file.display(),
            "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"
        );
        for key in unknown {
            tracing::warn!("--config-file: {key} is not a setting keel knows; ignored");
        }
    }
    tracing::info!(name = %cfg.name, data_dir = %cfg.data_dir.display(), "starting keel");
    if let Err(e) = keel_actors::node::run(cfg) {
        eprintln!("keel: {e}");
        std::process::exit(1);
    }
}
