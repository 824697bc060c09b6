//! Maintainer tasks for the library-sync workspace, run as `cargo xtask <command>`.
//!
//! Every subcommand is declared here, in one place. Benchmarks print `bench: name = value` lines
//! and always measure their baseline in the same run, so the ratios mean something on any
//! machine.
#![deny(missing_docs)]

mod bench_commit;
mod bench_failover;
mod bench_lag;
mod bench_log;
mod bench_proto;
mod demo;
mod sync_cluster;

use clap::{Parser, Subcommand};

/// Maintainer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "Maintainer tasks for library-sync")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Shows, honestly, what works so far: a sync log and the write path on a temp directory.
    Demo,
    /// Runs a benchmark (build is release; ratios are against a baseline in the same run).
    Bench {
        /// Measure with this (debug) build instead of re-running in release; for smoke tests.
        #[arg(long)]
        debug: bool,
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Sync-log append versus plain diesel inserts of the same rows.
    LogAppend {
        /// Rows to append.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
    },
    /// TransactionManager commit and apply versus plain diesel inserts.
    Commit,
    /// Protocol round trips and throughput over iroh on loopback versus a bare stream.
    Proto,
    /// Sync lag and sustained rate over iroh on loopback, one leader and two followers.
    Lag,
    /// Time to a new leader after the leader's endpoint closes; writes lost (must be 0).
    Failover,
}

/// Benchmarks mean nothing in a debug build: run the same command line again from a release
/// build of xtask.
fn rerun_in_release() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .status()?;
    if !status.success() {
        anyhow::bail!("release benchmark run failed: {status}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => demo::run(),
        Command::Bench { debug, .. } if cfg!(debug_assertions) && !debug => rerun_in_release(),
        Command::Bench { which, .. } => match which {
            Bench::LogAppend { rows } => bench_log::run(rows),
            Bench::Commit => bench_commit::run(),
            Bench::Proto => bench_proto::run(),
            Bench::Lag => bench_lag::run(),
            Bench::Failover => bench_failover::run(),
        },
    }
}
