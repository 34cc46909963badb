//! Integration tests: the `ember` binary and the library crates on real files
//! (tokenizer.json, Arrow shards, safetensors), with transformers as the reference.

mod backends;
mod chat;
mod data;
mod distill;
mod errors;
mod families;
mod kd;
mod logits;
mod nonfinite;
mod onpolicy;
mod record;
mod resume;
mod serve;
mod shipped;
mod student;
mod teacher;
mod train;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `--set` overrides that make the small test student: d 64, 2 layers, 4 / 2 heads, batch 8.
pub const SMALL_STUDENT: [&str; 12] = [
    "--set",
    "model.hidden_size=64",
    "--set",
    "model.intermediate_size=128",
    "--set",
    "model.num_hidden_layers=2",
    "--set",
    "model.num_attention_heads=4",
    "--set",
    "model.num_key_value_heads=2",
    "--set",
    "train.batch_size=8",
];

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `ember args...` in `cwd`; returns the output whatever the status.
pub fn ember(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn ember")
}

/// Run `ember` and panic with its stderr unless it succeeds.
pub fn ember_ok(cwd: &Path, args: &[&str]) -> String {
    let out = ember(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ember {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `ember`, expect failure, return stderr.
pub fn ember_err(cwd: &Path, args: &[&str]) -> String {
    let out = ember(cwd, args);
    assert!(
        !out.status.success(),
        "ember {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The Python with torch + transformers used as reference: `$EMBER_PYTHON`, else the
/// environment `scripts/setup_python.sh` creates. Panics with the fix when neither exists.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBER_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = std::env::var_os("EMBER_VENV")
        .map(PathBuf::from)
        .unwrap_or(home.join(".cache/ember/venv"));
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "reference Python not found at {}: run scripts/setup_python.sh or set EMBER_PYTHON",
        py.display()
    );
    py
}

/// A small prepared dataset shared by the tests: byte-level BPE (vocab 512) trained on
/// a Moby-Dick excerpt, rows of 32 tokens, 10% of
/// 1 KiB passages held out. Built once per test binary.
pub fn small_dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let corpus = root().join("tests/fixtures/moby_dick_excerpt.txt");
        let tok = dir.path().join("tokenizer.json");
        ember_ok(
            dir.path(),
            &[
                "tokenizer",
                "train",
                corpus.to_str().unwrap(),
                "--out",
                tok.to_str().unwrap(),
                "--vocab-size",
                "512",
            ],
        );
        let args = [
            "data",
            "prepare",
            corpus.to_str().unwrap(),
            "--tokenizer",
            "tokenizer.json",
            "--out",
            "ds",
            "--seq-len",
            "32",
            "--val-fraction",
            "0.1",
            "--passage-bytes",
            "1024",
        ];
        ember_ok(dir.path(), &args);
        dir
    })
    .path()
    .join("ds")
    .leak()
}

/// Start `ember args...` in `cwd`, SIGKILL it as soon as `marker` (a file it writes) exists,
/// and check it had not finished (`finished` absent).
pub fn kill_when(cwd: &Path, args: &[&str], marker: &Path, finished: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ember");
    let start = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "{} never appeared",
            marker.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("kill"); // SIGKILL: no chance to clean up
    child.wait().expect("wait");
    assert!(
        !finished.exists(),
        "the run finished before it could be killed"
    );
}

/// A safetensors tensor as owned parts: name, dtype, shape, bytes.
pub type OwnedTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Copy the safetensors file `src` to `dst` with `edit` applied to its tensors.
pub fn rewrite_safetensors(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<OwnedTensor>)) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<OwnedTensor> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawn a server (`ember serve` or a test proxy) whose first stdout line is
/// `<word> <word> <URL> ...`; returns its guard and the URL.
pub fn spawn_server(cmd: &mut Command) -> (ChildGuard, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped stdout")),
        &mut line,
    )
    .expect("server banner");
    let url = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("unexpected server banner {line:?}"))
        .to_string();
    (ChildGuard(child), url)
}

/// Run the PyTorch reference `tests/python/<script>` on `inputs` (safetensors, with
/// `metadata`) and return its f32 outputs by name.
pub fn python_reference(
    script: &str,
    inputs: Vec<(String, safetensors::tensor::TensorView<'_>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> std::collections::HashMap<String, Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    safetensors::serialize_to_file(inputs, metadata, &input).unwrap();
    let out = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&output).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let v = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, v)
        })
        .collect()
}
