use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use ember_serve::{ServeOptions, ServedModel, serve};

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
    /// Requests computed at the same time (default: twice the number of cores, at least 4);
    /// a request waits only while all of them are busy.
    #[arg(long)]
    workers: Option<usize>,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Seconds a client gets to send a request's headers (also while idle between requests)
    /// and, separately, its body; then its connection is closed.
    #[arg(long, default_value_t = 30.0)]
    read_timeout: f64,
    /// Connections open at once; further clients wait to be accepted.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let device = a.backend.device()?;
    let model = ServedModel::load(&a.model, a.served_model_name, &device, a.max_logprobs)?;
    if !(a.read_timeout.is_finite() && a.read_timeout > 0.0) {
        anyhow::bail!(
            "--read-timeout must be a positive number of seconds, got {}",
            a.read_timeout
        );
    }
    let defaults = ServeOptions::default();
    let options = ServeOptions {
        workers: a.workers.unwrap_or(defaults.workers).max(1),
        max_body_bytes: a.max_body_bytes,
        read_timeout: std::time::Duration::from_secs_f64(a.read_timeout),
        max_connections: a.max_connections.max(1),
        max_requests: a.max_requests,
    };
    let name = model.name.clone();
    serve(model, &a.addr, &options, |addr| {
        println!("listening on http://{addr} (model {name})");
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
