//! The `vigil` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    let cli = vigil::Cli::parse_args();
    vigil::init_logging(cli.log_format);
    match vigil::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
