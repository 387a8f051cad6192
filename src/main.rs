use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dkim_relay::cli::Cli::parse();
    match dkim_relay::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dkim-relay: {}", dkim_relay::cli::error_text(&e));
            match e.downcast_ref::<dkim_relay::cli::Exit>() {
                Some(exit) => std::process::ExitCode::from(exit.status),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
