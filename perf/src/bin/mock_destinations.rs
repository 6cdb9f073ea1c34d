//! `mock-destinations`: strict mock PostHog and Mixpanel servers with fault injection, for
//! black-box tests and load runs of the events router.
//!
//! Prints one JSON line with the two base URLs on start, then (with `--print-stats-every`)
//! one JSON line of counters per interval. Faults, latency and stats are driven over
//! `/__admin/*` on either port (see the `perf::mock` docs). Stops on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use perf::mock::{MockConfig, MockDestinations, Retention, ServiceAccount};

/// What is kept of each request.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RetentionArg {
    /// Every request with the accepted JSON values.
    Full,
    /// Every request with only the ids of the accepted items.
    IdsOnly,
    /// Counters and duplicate detection only.
    CountsOnly,
}

/// Strict mock PostHog and Mixpanel servers with fault injection.
#[derive(Debug, Parser)]
#[command(name = "mock-destinations", version)]
struct Args {
    /// Address of the mock PostHog (port 0: one the OS picks).
    #[arg(long, default_value = "127.0.0.1:0")]
    posthog_listen: SocketAddr,
    /// Address of the mock Mixpanel (port 0: one the OS picks).
    #[arg(long, default_value = "127.0.0.1:0")]
    mixpanel_listen: SocketAddr,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// PostHog project API key events must carry.
    #[arg(long, env = "POSTHOG_API_KEY", default_value = perf::mock::config::DEFAULT_POSTHOG_API_KEY)]
    posthog_api_key: String,
    /// Accept (and count) PostHog tokens other than the project key instead of answering 401.
    #[arg(long)]
    allow_unknown_token: bool,
    /// Mixpanel project token.
    #[arg(long, env = "MIXPANEL_TOKEN", default_value = perf::mock::config::DEFAULT_MIXPANEL_TOKEN)]
    mixpanel_token: String,
    /// Mixpanel service account accepted on /import, as USER:SECRET (needs --mixpanel-project-id).
    #[arg(long, requires = "mixpanel_project_id")]
    mixpanel_service_account: Option<String>,
    /// Mixpanel project id expected as ?project_id= with the service account.
    #[arg(long, env = "MIXPANEL_PROJECT")]
    mixpanel_project_id: Option<String>,
    /// Legacy Mixpanel API secret accepted as the Basic user on /import.
    #[arg(long, env = "MIXPANEL_API_SECRET")]
    mixpanel_api_secret: Option<String>,
    /// Mixpanel /import cap on the uncompressed body, in bytes.
    #[arg(long, default_value_t = perf::mock::config::MIXPANEL_IMPORT_BYTES)]
    max_import_bytes: usize,
    /// Mixpanel cap on items per request.
    #[arg(long, default_value_t = perf::mock::config::MIXPANEL_MAX_ITEMS)]
    max_items: usize,
    /// Accept Mixpanel /import without strict=1.
    #[arg(long)]
    allow_non_strict: bool,
    /// What is kept of each request.
    #[arg(long, value_enum, default_value = "full")]
    retention: RetentionArg,
    /// Print the counters as one JSON line every N seconds (0: never).
    #[arg(long, default_value_t = 0)]
    print_stats_every: u64,
}

fn config(args: &Args) -> Result<MockConfig, String> {
    let mut config = MockConfig {
        posthog_listen: args.posthog_listen,
        mixpanel_listen: args.mixpanel_listen,
        latency: Duration::from_millis(args.latency_ms),
        retention: match args.retention {
            RetentionArg::Full => Retention::Full,
            RetentionArg::IdsOnly => Retention::IdsOnly,
            RetentionArg::CountsOnly => Retention::CountsOnly,
        },
        ..MockConfig::default()
    };
    config.posthog.api_key = args.posthog_api_key.clone();
    config.posthog.require_known_token = !args.allow_unknown_token;
    config.mixpanel.token = args.mixpanel_token.clone();
    config.mixpanel.api_secret = args.mixpanel_api_secret.clone();
    config.mixpanel.max_import_bytes = args.max_import_bytes;
    config.mixpanel.max_items = args.max_items;
    config.mixpanel.require_strict = !args.allow_non_strict;
    if let Some(sa) = &args.mixpanel_service_account {
        let (username, secret) = sa
            .split_once(':')
            .ok_or_else(|| "--mixpanel-service-account must be USER:SECRET".to_owned())?;
        config.mixpanel.service_account = Some(ServiceAccount {
            username: username.to_owned(),
            secret: secret.to_owned(),
            project_id: args.mixpanel_project_id.clone().unwrap_or_default(),
        });
    }
    Ok(config)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mock-destinations: {e}");
            return ExitCode::from(2);
        }
    };
    let mock = match MockDestinations::start(config).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mock-destinations: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{}",
        serde_json::json!({"posthog_url": mock.posthog_url(), "mixpanel_url": mock.mixpanel_url()})
    );
    let every = Duration::from_secs(args.print_stats_every);
    let printer = async {
        if every.is_zero() {
            std::future::pending::<()>().await;
        }
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match serde_json::to_string(&mock.stats()) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("mock-destinations: cannot encode stats: {e}"),
            }
        }
    };
    tokio::select! {
        () = shutdown_signal() => {}
        () = printer => {}
    }
    if let Ok(line) = serde_json::to_string(&mock.stats()) {
        println!("{line}");
    }
    mock.shutdown().await;
    ExitCode::SUCCESS
}
