use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dkim_relay::cli::Cli::parse();
    match dkim_relay::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dkim-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
