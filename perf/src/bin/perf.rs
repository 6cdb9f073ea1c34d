//! `perf`: the load harness for the events router (see `perf::load`).

use std::process::ExitCode;

use clap::Parser;
use perf::load::{Options, run};

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("perf: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(report) => {
            print!("{}", report.table());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("perf: {error}");
            ExitCode::from(2)
        }
    }
}
