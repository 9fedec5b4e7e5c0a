//! The `vigil` program: its command line and its commands.
//!
//! The `vigil` program: the command line (`cli`), which turns `vigil serve`'s flags into the
//! `server` crate's configuration, and the side commands: the node agent (`agent`), the
//! benchmark client ([`bench`]), the GPU node check (`gpu_check`), the tokenizer export
//! (`export_tokenizer`). `main.rs` is a thin wrapper
//! around [`run`].

mod agent;
mod bench;
mod cli;
mod env_file;
mod export_tokenizer;
mod gpu_check;
mod gpu_profile;
mod logging;
mod top;

pub use agent::passthrough::Relay;
pub use cli::Cli;
pub use logging::init as init_logging;

use anyhow::Context;

/// Runs the command the user asked for.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Serve(args) => {
            // Name the CPU backend's workers so the eBPF probe can tell them apart (the kernel
            // keeps 15 bytes of a thread name: "vigil-compute-N").
            rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("vigil-compute-{i}"))
                .build_global()
                .context("starting the compute thread pool")?;
            http_runtime()?.block_on(server::serve(args.into_config()))
        }
        cli::Command::Bench(cli::BenchCommand::Serve(args)) => bench::run(*args),
        cli::Command::Probe(args) => http_runtime()?.block_on(agent::run(*args)),
        cli::Command::SchedLatency(args) => {
            let probe = probes::SchedProbe::attach(args.pid).map_err(|state| {
                anyhow::anyhow!("the eBPF probe cannot run here ({})", state.describe())
            })?;
            eprintln!(
                "attached to {}; measuring for {:?}",
                match args.pid {
                    0 => "every process".to_owned(),
                    pid => format!("process {pid}"),
                },
                args.duration
            );
            std::thread::sleep(args.duration);
            let snap = probe.read().map_err(anyhow::Error::msg)?;
            print!("{}", probes::format_sched_report(&snap));
            Ok(())
        }
        cli::Command::EnvFile => {
            print!("{}", env_file::render());
            Ok(())
        }
        cli::Command::CheckGpu(args) => gpu_check::run(&args),
        cli::Command::GpuProfile(args) => gpu_profile::run(&args),
        cli::Command::ExportTokenizer(args) => export_tokenizer::run(&args.model, &args.dir),
        cli::Command::Top(args) => top::run(&args),
    }
}

/// The tokio runtime of the HTTP servers; its workers are named `vigil-http` so that the eBPF
/// probe counts them under the `http` role.
fn http_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigil-http")
        .build()
        .context("starting the tokio runtime")
}
