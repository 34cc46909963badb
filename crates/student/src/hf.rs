//! HF-layout persistence: `config.json` + `model.safetensors` (+ `generation_config.json`).
//!
//! Burn parameter paths already equal HF keys (`model.layers.0.mlp.up_proj.weight`)
//! except that RMSNorm's `gamma` is HF's `weight` and Burn's `Linear` stores `[in, out]`
//! where PyTorch stores `[out, in]`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::{Student, StudentConfig, StudentError};

/// Float format of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    #[default]
    F32,
    Bf16,
}

impl SaveDtype {
    fn torch_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
    }
}

/// Tracks the HF key of the parameter being visited and whether it sits in a `Linear`.
#[derive(Default)]
struct KeyPath {
    parts: Vec<String>,
    containers: Vec<String>,
}

impl KeyPath {
    fn enter(&mut self, name: &str, container: &str) {
        self.parts.push(name.to_string());
        self.containers.push(container.to_string());
    }
    fn exit(&mut self) {
        self.parts.pop();
        self.containers.pop();
    }
    /// (HF key, stored transposed?)
    fn key(&self) -> (String, bool) {
        let mut parts = self.parts.clone();
        if parts.last().is_some_and(|p| p == "gamma") {
            *parts.last_mut().expect("non-empty") = "weight".into();
        }
        let in_linear = self.containers.last().is_some_and(|c| c == "Struct:Linear");
        (parts.join("."), in_linear)
    }
}

struct Collect {
    path: KeyPath,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (key, transposed) = self.path.key();
        let mut t = param.val();
        if transposed {
            t = t.transpose();
        }
        let shape = t.dims().to_vec();
        let values: Vec<f32> = t
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float tensor converts to f32");
        self.tensors.push((key, shape, values));
    }
}

/// Every parameter as (HF key, PyTorch shape, f32 values), in module order.
pub fn hf_tensors(model: &Student) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut collect = Collect {
        path: KeyPath::default(),
        tensors: Vec::new(),
    };
    model.visit(&mut collect);
    collect.tensors
}

/// Write `dir/config.json`, `dir/model.safetensors` and `dir/generation_config.json`.
/// Each file is written to a temporary name and renamed into place.
pub fn save_hf(
    model: &Student,
    config: &StudentConfig,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<(), StudentError> {
    let io = |path: PathBuf| move |source| StudentError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = hf_tensors(model)
        .into_iter()
        .map(|(key, shape, values)| {
            let bytes = match dtype {
                SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                SaveDtype::Bf16 => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            (key, shape, bytes)
        })
        .collect();
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, shape, bytes)| {
            (
                k.clone(),
                TensorView::new(st_dtype, shape.clone(), bytes).expect("consistent view"),
            )
        })
        .collect();
    let weights = dir.join("model.safetensors");
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| StudentError::Safetensors {
            path: weights.clone(),
            message: e.to_string(),
        })?;
    write_atomic(&weights, &bytes)?;
    let hf =
        serde_json::to_string_pretty(&config.to_hf(dtype.torch_name())).expect("config serializes");
    write_atomic(&dir.join("config.json"), hf.as_bytes())?;
    let gen_cfg = serde_json::json!({
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "do_sample": true,
        "temperature": 0.8,
        "top_k": 50,
        "top_p": 0.95,
    });
    write_atomic(
        &dir.join("generation_config.json"),
        gen_cfg.to_string().as_bytes(),
    )
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StudentError> {
    ember_data::write_atomic_io(path, bytes).map_err(|source| StudentError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces every parameter with the tensor of the same HF key, recording problems.
struct Load<'a> {
    path: KeyPath,
    file: &'a Path,
    st: &'a SafeTensors<'a>,
    used: BTreeSet<String>,
    error: Option<StudentError>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let (key, transposed) = self.path.key();
        let mut expected = param.lazy_shape().dims::<D>().to_vec();
        if transposed {
            expected.reverse();
        }
        match read_f32(self.file, self.st, &key, &expected) {
            Ok(values) => {
                self.used.insert(key);
                let device = param.lazy_device();
                let mut t = Tensor::<D>::from_data(TensorData::new(values, expected), &device);
                if transposed {
                    t = t.transpose();
                }
                let id = param.id;
                param.transform_for_load(t, id)
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// Read tensor `key` as f32, checking its shape.
fn read_f32(
    file: &Path,
    st: &SafeTensors<'_>,
    key: &str,
    expected: &[usize],
) -> Result<Vec<f32>, StudentError> {
    let view = st.tensor(key).map_err(|_| StudentError::MissingTensor {
        path: file.to_path_buf(),
        key: key.to_string(),
        expected: expected.to_vec(),
    })?;
    if view.shape() != expected {
        return Err(StudentError::ShapeMismatch {
            path: file.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    let data = view.data();
    ember_nn::decode_floats(view.dtype(), data).ok_or_else(|| StudentError::Dtype {
        path: file.to_path_buf(),
        key: key.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })
}

/// Load a student from an HF directory (`config.json` + `model.safetensors`).
/// Every tensor is checked: a missing or mis-shaped one is an error naming the key,
/// and tensors the config does not use are an error too (a sign of the wrong config).
pub fn load_hf(dir: &Path, device: &Device) -> Result<(Student, StudentConfig), StudentError> {
    let config_path = dir.join("config.json");
    let config = StudentConfig::from_hf_file(&config_path)?;
    config.validate().map_err(|message| StudentError::Config {
        path: config_path.clone(),
        message,
    })?;
    let index = dir.join("model.safetensors.index.json");
    let (file, bytes) = if index.is_file() {
        (index.clone(), Bytes::Owned(merge_shards(dir, &index)?))
    } else {
        let file = dir.join("model.safetensors");
        let handle = std::fs::File::open(&file).map_err(|source| StudentError::Io {
            path: file.clone(),
            source,
        })?;
        // SAFETY: the file is opened read-only and not modified while mapped.
        let mmap = unsafe { memmap2::Mmap::map(&handle) }.map_err(|source| StudentError::Io {
            path: file.clone(),
            source,
        })?;
        (file, Bytes::Mapped(mmap))
    };
    let st = SafeTensors::deserialize(bytes.as_ref()).map_err(|e| StudentError::Safetensors {
        path: file.clone(),
        message: e.to_string(),
    })?;
    check_shapes(&config, &st, &file)?;
    let model = from_safetensors(&config, &st, &file, device)?;
    Ok((model, config))
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// The shards a `model.safetensors.index.json` names, as one safetensors buffer (students are
/// small enough to hold twice).
fn merge_shards(dir: &Path, index: &Path) -> Result<Vec<u8>, StudentError> {
    let bad = |message: String| StudentError::Safetensors {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|source| StudentError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid index: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let mut buffers = Vec::new();
    for f in &files {
        let path = dir.join(f);
        let bytes = std::fs::read(&path).map_err(|source| StudentError::Io {
            path: path.clone(),
            source,
        })?;
        buffers.push((path, bytes));
    }
    let mut views = Vec::new();
    for (path, bytes) in &buffers {
        let st = SafeTensors::deserialize(bytes).map_err(|e| StudentError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            if map.get(&name).and_then(|v| v.as_str()) != path.file_name().and_then(|n| n.to_str())
            {
                return Err(bad(format!(
                    "{} holds {name}, which the index places elsewhere",
                    path.display()
                )));
            }
            views.push((name, view));
        }
    }
    if let Some(missing) = map.keys().find(|k| !views.iter().any(|(n, _)| n == *k)) {
        return Err(bad(format!(
            "{missing} is listed in the index but in no shard"
        )));
    }
    safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))
}

/// Every tensor the config needs, present with the right shape, checked from the header
/// before anything is allocated (a config claiming 10^9 layers fails on the first missing one).
fn check_shapes(
    config: &StudentConfig,
    st: &SafeTensors<'_>,
    file: &Path,
) -> Result<(), StudentError> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mut want: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !config.tie_word_embeddings {
        want.push(("lm_head.weight".into(), vec![v, h]));
    }
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (key, shape) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            want.push((format!("{p}.{key}"), shape));
        }
        // fail on the first missing layer, before building the list for the rest
        for (key, expected) in want.drain(..) {
            match st.tensor(&key) {
                Err(_) => {
                    return Err(StudentError::MissingTensor {
                        path: file.to_path_buf(),
                        key,
                        expected,
                    });
                }
                Ok(t) if t.shape() != expected.as_slice() => {
                    return Err(StudentError::ShapeMismatch {
                        path: file.to_path_buf(),
                        key,
                        expected,
                        found: t.shape().to_vec(),
                    });
                }
                Ok(_) => {}
            }
        }
    }
    Ok(())
}

/// Build the student of `config` from the tensors of `st` (HF keys); `file` names the source in errors.
pub(crate) fn from_safetensors(
    config: &StudentConfig,
    st: &SafeTensors<'_>,
    file: &Path,
    device: &Device,
) -> Result<Student, StudentError> {
    let file = file.to_path_buf();
    let mut load = Load {
        path: KeyPath::default(),
        file: &file,
        st,
        used: BTreeSet::new(),
        error: None,
    };
    let model = config.init(device).map(&mut load);
    if let Some(e) = load.error {
        return Err(e);
    }
    // Tied models may still carry a copy of lm_head; rotary buffers are derived, not learned.
    let unused: Vec<String> = st
        .names()
        .into_iter()
        .filter(|k| !load.used.contains(*k))
        .filter(|k| {
            !(config.tie_word_embeddings && *k == "lm_head.weight")
                && !k.ends_with("rotary_emb.inv_freq")
        })
        .map(str::to_string)
        .collect();
    if !unused.is_empty() {
        return Err(StudentError::UnexpectedTensors {
            path: file,
            count: unused.len(),
            examples: unused.into_iter().take(5).collect(),
        });
    }
    Ok(model)
}
