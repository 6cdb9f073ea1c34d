//! The `events-router` binary: `route`, `check` (and, as they land, `serve`, `buffer`, `dlq`).

mod config;
mod route;

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use router_core::{Pipeline, Timestamp};

use crate::config::{Config, ProcessEnv};

/// mimalloc: the pipeline allocates many small strings per event; mimalloc's thread-local
/// free lists make the core pipeline about 25% faster than glibc malloc (PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events router: takes analytics events over HTTP, routes them by rules, keeps them durably
/// and delivers them in batches to PostHog and Mixpanel.
#[derive(Parser, Debug)]
#[command(name = "events-router", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show where each event of a JSON Lines input would be routed.
    ///
    /// Each input line is an event in the router's own schema, or an array of them. One JSON
    /// object per event is printed, in input order:
    /// {"index":0,"event":"Sign Up","destinations":["mixpanel"],"rules":["product"]}.
    /// Invalid events print {"index":N,"error":"...","field":"..."}; exit 0 unless the
    /// input cannot be read or a line is not JSON.
    Route {
        /// Config file (TOML); the embedded defaults when absent.
        #[arg(long, env = "ROUTER_CONFIG")]
        config: Option<PathBuf>,
        /// Add the canonical event and every rule's verdict.
        #[arg(long)]
        explain: bool,
        /// Add the exact records each destination would receive.
        #[arg(long)]
        payloads: bool,
        /// Input file; stdin when absent or `-`.
        input: Option<PathBuf>,
    },
    /// Inspect the durable buffer (read-only; safe while the router runs).
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
    /// Validate a config file and print the effective routing table.
    Check {
        /// Config file (TOML); the embedded defaults when absent.
        #[arg(long, env = "ROUTER_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum BufferCommand {
    /// Segments, sizes, per-destination cursor and backlog, oldest unacknowledged age, corrupt
    /// records found. Reads only; never truncates or locks the log.
    Inspect {
        /// Data directory (the buffer is its `buffer/` folder).
        #[arg(long, env = "ROUTER_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms)
        .unwrap_or_else(|| Timestamp::from_millis(0).unwrap_or_else(|| unreachable!()))
}

fn load(path: Option<&PathBuf>) -> Result<(Config, Pipeline), String> {
    let config =
        Config::load(path.map(PathBuf::as_path), &ProcessEnv).map_err(|e| e.to_string())?;
    let core = config.core().map_err(|e| e.to_string())?;
    let pipeline = Pipeline::new(&core).map_err(|e| e.to_string())?;
    Ok((config, pipeline))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Route {
            config,
            explain,
            payloads,
            input,
        } => (|| {
            let (_, pipeline) = load(config.as_ref())?;
            let opts = route::RouteOptions { explain, payloads };
            let stdout = std::io::stdout().lock();
            match input.filter(|p| p.as_os_str() != "-") {
                Some(path) => {
                    let f = std::fs::File::open(&path)
                        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                    route::run(&pipeline, BufReader::new(f), stdout, opts, now())
                }
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("reading events from stdin (one JSON object or array per line; Ctrl-D ends)");
                    }
                    route::run(&pipeline, std::io::stdin().lock(), stdout, opts, now())
                }
            }
            .map(|_| ())
            .map_err(|e| e.to_string())
        })(),
        Command::Buffer {
            command: BufferCommand::Inspect { data_dir, json },
        } => {
            let dir = data_dir.join("buffer");
            router_sinks::buffer::inspect(&dir)
                .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))
                .map(|report| {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                    } else {
                        println!("{report}");
                    }
                })
        }
        Command::Check { config } => load(config.as_ref()).map(|(c, p)| {
            println!(
                "config ok ({})",
                config
                    .as_ref()
                    .map_or("embedded defaults".into(), |p| p.display().to_string())
            );
            println!("listen: {}", c.listen);
            println!("data_dir: {}", c.data_dir.display());
            println!(
                "posthog: {}",
                if c.posthog.api_key.is_some() {
                    c.posthog.host.clone()
                } else {
                    "no api_key: outbox file".into()
                }
            );
            let mp_creds = c.mixpanel.token.is_some() || c.mixpanel.api_secret.is_some();
            println!(
                "mixpanel: {}",
                if mp_creds {
                    c.mixpanel.host.clone()
                } else {
                    "no token: outbox file".into()
                }
            );
            println!("routing:");
            println!("{}", p.router());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("events-router: {e}");
            ExitCode::from(2)
        }
    }
}
