use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use ember_serve::{ServedModel, serve};

use crate::backend::BackendArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model directory in HF layout (a student, or any supported teacher architecture).
    #[arg(long)]
    model: PathBuf,
    /// Name clients must use in `model` (default: the directory name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to listen on; port 0 picks a free port. The bound address is printed first.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: String,
    /// Largest `logprobs` / `prompt_logprobs` / `top_logprobs_num` accepted.
    #[arg(long, default_value_t = 20)]
    max_logprobs: usize,
    /// Exit after answering this many requests (for scripted use).
    #[arg(long)]
    max_requests: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let device = a.backend.device()?;
    let model = ServedModel::load(&a.model, a.served_model_name, &device, a.max_logprobs)?;
    serve(&model, &a.addr, a.max_requests, |addr| {
        println!("listening on http://{addr} (model {})", model.name);
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
