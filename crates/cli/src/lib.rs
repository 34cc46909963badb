//! The `ember` command line: one file per subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backend;
mod bench;
mod data;
mod eval;
mod eval_chat;
mod experiment;
mod export;
mod generate;
mod import;
mod logits;
mod record;
mod serve;
mod tokenizer;
mod train;
mod util;

/// Ember: distil big open-weight teachers into small, fast dense students.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch corpora and prepare packed token datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Train or inspect tokenizers.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Train a student with cross-entropy on a prepared dataset.
    Train(train::TrainArgs),
    /// Distil a student from a teacher: recorded logits (`[teacher] logits`) or a model run
    /// in-process (`[teacher] model`), with the loss of `[distill]`.
    Distill(train::TrainArgs),
    /// Validation loss and perplexity of a student on a prepared dataset, written as JSON.
    Eval(eval::EvalArgs),
    /// Held-out evaluation of an instruction-tuned student: answer loss and exact match of
    /// greedy answers (overall and per category), written as JSON.
    EvalChat(eval_chat::EvalChatArgs),
    /// Sample text from a student.
    Generate(generate::GenerateArgs),
    /// Record a teacher's top-k next-token log-probabilities over a prepared dataset (Arrow).
    Record(record::RecordArgs),
    /// Export a trained student for other runtimes (HF layout for transformers, llama.cpp's converter, candle).
    Export(export::ExportArgs),
    /// Convert recorded logits between formats, or export them to DistillKit.
    #[command(subcommand)]
    Logits(logits::LogitsCommand),
    /// Import teacher logits captured by other tools (DistillKit).
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Throughput benchmarks (teacher forward, distillation step).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Experiments over whole runs, with a report directory (JSON, CSV, SVG plots, Markdown).
    #[command(subcommand)]
    Experiment(experiment::ExperimentCommand),
    /// Serve a model over HTTP: OpenAI/vLLM `/v1/completions` (prompt_logprobs) and SGLang `/generate`.
    Serve(serve::ServeArgs),
}

/// Entry point of the `ember` binary: runs the command, prints the error chain on failure.
pub fn main() -> ExitCode {
    // before any thread starts: OpenBLAS reads its settings from the environment on load
    ember_teacher::init_blas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Tokenizer(cmd) => tokenizer::run(cmd),
        Command::Train(args) => train::run(args, false),
        Command::Distill(args) => train::run(args, true),
        Command::Eval(args) => eval::run(args),
        Command::EvalChat(args) => eval_chat::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Record(args) => record::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Import(cmd) => import::run(cmd),
        Command::Logits(cmd) => logits::run(cmd),
        Command::Export(args) => export::run(args),
        Command::Experiment(cmd) => experiment::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
