//! The `dlv` binary: argument parsing, output formatting and wiring of the library crates.

mod cmd;
mod desc;
mod diff;
mod html;
mod output;
mod progress;
mod query;
mod remote;
mod train;

use std::path::PathBuf;

// Tensor coding allocates chunk-sized buffers over and over; the system allocator returns them
// to the kernel each time and page-faults them back (a fifth of the codec's time, measured).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// dlv: version control for deep-learning models.
#[derive(Debug, Parser)]
#[command(name = "dlv", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Repository folder (default: the nearest `.dlv` upward from the current folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Less output (no progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository in the current (or --repo) folder.
    Init,
    /// Stage network, weights, solver, log and other files for the next commit.
    Add {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Unstage files (all of them without arguments).
    Reset { files: Vec<PathBuf> },
    /// Show what is staged.
    Status,
    /// Record a version from the staged files.
    Commit(CommitArgs),
    /// List versions, lineage shown as a tree.
    List(ListArgs),
    /// Describe one version: record, network, parameters, footprint, metrics, weight statistics.
    Desc(DescArgs),
    /// Compare two or more versions: aligned networks, weights, metadata, metrics.
    Diff(DiffArgs),
    /// Write a version out as files (prototxt, safetensors, associated files).
    Checkout(CheckoutArgs),
    /// Run a DQL query (select, slice, construct, evaluate); see `docs/DQL.md`.
    Query(query::QueryArgs),
    /// Train from a version; the result (and snapshots, if asked) committed as its children.
    Train(train::TrainArgs),
    /// Test versions: accuracy, loss, optionally activation statistics; results recorded.
    Eval(train::EvalArgs),
    /// Verify every record, reference and object.
    Fsck,
    /// Remove objects that no version references.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// First re-plan the delta bases of every tensor (bounded chains, smallest estimated
        /// size), rewriting objects whose base changes; then remove what is no longer needed.
        #[arg(long, conflicts_with = "dry_run")]
        repack: bool,
        /// With --repack: rewrite every tensor object, not only those whose base changes, so
        /// that the current storage settings (such as `storage.compression`) apply to all.
        #[arg(long, requires = "repack")]
        recode: bool,
    },
    /// Configure hubs: `dlv remote add NAME URL`, `dlv remote list`, `dlv remote remove NAME`.
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Store an API token for a hub.
    Login(remote::LoginArgs),
    /// Upload a version and its lineage to a hub (only what the hub lacks).
    Publish(remote::PublishArgs),
    /// Search a hub's models.
    Search(remote::SearchArgs),
    /// Download OWNER/NAME[@ID] and its lineage from a hub.
    Pull(remote::PullArgs),
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// Commit message.
    #[arg(short, long)]
    pub message: String,
    /// Model name.
    #[arg(long)]
    pub name: String,
    /// Parent version(s); default: the newest version of the same name.
    #[arg(long = "parent", value_name = "REF")]
    pub parents: Vec<String>,
    /// Author (default: $DLV_AUTHOR, else $USER).
    #[arg(long)]
    pub author: Option<String>,
    /// Creation time (RFC 3339 or YYYY-MM-DD; default: now).
    #[arg(long)]
    pub date: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only versions whose name matches (substring, or glob with * and ?).
    #[arg(long = "model_name", alias = "model-name", alias = "name")]
    pub model_name: Option<String>,
    /// Only versions whose message contains this text.
    #[arg(long = "commit_msg", alias = "commit-msg")]
    pub commit_msg: Option<String>,
    /// Only the last N versions.
    #[arg(long)]
    pub last: Option<usize>,
}

#[derive(Debug, Args)]
pub struct DescArgs {
    /// Version: NAME, NAME~N, NAME@PREFIX or an id prefix.
    pub rev: Option<String>,
    /// Output format: text, json, or html FILE (also html=FILE; - for stdout).
    #[arg(long, num_args = 1..=2, value_names = ["FORMAT", "FILE"])]
    pub output: Vec<String>,
    /// File for html output (same as the FILE of --output html FILE).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Layer whose activation maps the html report draws (default: the first convolution).
    #[arg(long, value_name = "NAME")]
    pub layer: Option<String>,
    /// Do not run the network to time a forward pass (and draw no activations).
    #[arg(long)]
    pub no_forward: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Versions to compare; the first is the base the others are aligned to.
    pub refs: Vec<String>,
    /// Models to compare by name (their newest versions); repeat or separate with commas.
    #[arg(long = "model_names", alias = "model-names", value_name = "NAMES")]
    pub model_names: Vec<String>,
    /// Versions to compare (refs or ids); repeat or separate with commas.
    #[arg(long, value_name = "REFS")]
    pub versions: Vec<String>,
    /// Output format: text, json, or html FILE (also html=FILE; - for stdout).
    #[arg(long, num_args = 1..=2, value_names = ["FORMAT", "FILE"])]
    pub output: Vec<String>,
    /// File for html output (same as the FILE of --output html FILE).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Command-line positions of `refs` (to put back a ref that `--output text` took).
    #[arg(skip)]
    pub ref_indices: Vec<usize>,
    #[arg(skip)]
    pub output_index: Option<usize>,
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    pub rev: String,
    /// Destination folder (default: the current folder).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Precision of float tensors: fp32 (as stored), bf16 or fp16.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// mimalloc's `purge_delay` option (its position in `mi_option_t`, mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc to keep freed memory instead of handing it back to the kernel 10 ms later.
/// Every candle op and every codec chunk allocates a fresh buffer; returned pages are faulted in
/// and zeroed again by the kernel on the next use, which took 19% of an AlexNet training step
/// (98,700 to 276,000 page faults in 6 steps, more the slower the steps ran; about 1,200
/// without purging; measured with `perf stat`). A `dlv`
/// process is short-lived, so holding its peak is the right trade. `MIMALLOC_PURGE_DELAY` in the
/// environment still wins.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer option; mimalloc is the global allocator
        // and already initialised, and the option is read on each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    // candle runs large elementwise ops on a pool of spinning threads of its own, beside rayon's
    // (matrix products and the trainer's own ops): on a few cores the two pools spin against
    // each other, and a LeNet step lost a quarter of its time at that pool's barrier (measured).
    // Those adds and multiplies are memory-bound, so they stay on one thread unless the user
    // says otherwise. Set here, before any thread exists, because the environment is shared.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_freed_memory();
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let (Command::Diff(d), Some(("diff", m))) = (&mut cli.command, matches.subcommand()) {
        d.ref_indices = m.indices_of("refs").map(|i| i.collect()).unwrap_or_default();
        d.output_index = m.indices_of("output").and_then(|mut i| i.nth(1));
    }
    init_tracing(cli.verbose);
    match cmd::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if output::is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            output::report_error(&e);
            ExitCode::from(output::exit_code(&e))
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
