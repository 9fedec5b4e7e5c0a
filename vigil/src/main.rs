//! The `vigil` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    let cli = vigil::cli::Cli::parse_args();
    vigil::logging::init(cli.log_format);
    match vigil::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
