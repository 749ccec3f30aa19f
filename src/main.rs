//! `steward`: parse the command line, load settings, start logging, run.

use clap::Parser;
use steward::cli::{self, Cli};
use steward::config::Settings;
use steward::telemetry::init_logging;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            init_logging("json", "info");
            tracing::error!(error = %err, "invalid configuration");
            eprintln!("steward: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&settings.telemetry.log_format, &settings.telemetry.log_level);
    match cli::run(cli, settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "steward failed");
            eprintln!("steward: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
