//! The `assent` binary: `assent serve` runs the server, the other subcommands call it.
//!
//! Its exit status tells a script why a command failed (`assent::cli::ExitStatus`, listed in
//! `assent --help`): 1 usage, 2 unreachable or unauthenticated, 3 a failed check, 4 refused by
//! the server, 5 anything else.

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the request path allocates small objects at a
/// high rate, and the cache holds millions of them; mimalloc is faster at the first and wastes
/// less memory on the second (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = assent::cli::parse_or_exit();
    let json = cli.json;
    let ran = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| anyhow::Error::new(error).context("cannot start the async runtime"))
        .and_then(|runtime| runtime.block_on(assent::cli::run(cli)));
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let failure = assent::cli::Failure::of(&error);
            failure.report(json);
            ExitCode::from(failure.exit_code())
        }
    }
}
