//! Memory-mapped safetensors checkpoints, single-file or sharded
//! (`model.safetensors.index.json`), read tensor by tensor.
//!
//! Nothing is read up front but the headers: each tensor is read (`pread`, so the file's
//! pages are never mapped into the process) and converted from its file dtype
//! (bf16/f16/f32/FP8) straight into the compute dtype when a layer asks for it, so peak
//! memory is the model in its compute dtype plus one tensor. Routed experts can instead
//! stay in the file ([`Weights::with_streamed_experts`]): they are then read each time
//! tokens are routed to them and dropped after, so an MoE teacher larger than the
//! machine's memory runs in the memory of its dense part.
//!
//! FP8 block-quantized checkpoints (DeepSeek-V3/R1, Kimi K2, MiniMax-M2): an `F8_E4M3`
//! tensor `X.weight` `[rows, cols]` comes with a float32 `X.weight_scale_inv`
//! `[ceil(rows / b0), ceil(cols / b1)]`, and is dequantized as DeepSeek's reference
//! `weight_dequant` does: `W[i, j] = fp8(W[i, j]) * scale_inv[i / b0, j / b1]` in float32
//! (edge blocks are partial).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::DType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use crate::{Fp8Blocks, TeacherError};

struct Shard {
    path: PathBuf,
    file: std::fs::File,
    /// Offset of the data section (8-byte length + header).
    data_start: usize,
    metadata: Metadata,
}

/// The files of a checkpoint: what a tensor read needs, shared by [`Weights`] and the
/// [`LazyTensor`]s of streamed experts.
struct Files {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> shard.
    index: HashMap<String, usize>,
    fp8: Option<Fp8Blocks>,
}

/// A checkpoint directory opened for reading.
pub struct Weights {
    files: Arc<Files>,
    used: Mutex<BTreeSet<String>>,
    device: Device,
    dtype: DType,
    stream_experts: bool,
}

/// A 2-D weight left in the checkpoint file (checked: present, shaped, decodable), read
/// into a tensor each time it is needed.
#[derive(Clone)]
pub struct LazyTensor {
    files: Arc<Files>,
    key: String,
    shape: [usize; 2],
    device: Device,
    dtype: DType,
}

impl LazyTensor {
    /// Read and convert the tensor now. The checkpoint was checked when this was made; a
    /// file changed or removed since is a panic naming it.
    pub fn load(&self) -> Tensor<2> {
        let (values, _) = self
            .files
            .decode(&self.key, &self.shape)
            .unwrap_or_else(|e| panic!("reading streamed expert weights: {e}"));
        let t = Tensor::<2>::from_data(TensorData::new(values, self.shape), &self.device);
        if self.dtype == DType::F32 {
            t
        } else {
            t.cast(self.dtype)
        }
    }
}

/// float8 e4m3fn (no infinities; `S.1111.111` is NaN) to float32, exactly.
pub fn f8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((b >> 3) & 0x0f) as i32;
    let m = (b & 0x07) as f32;
    if e == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if e == 0 {
        sign * (m / 8.0) * 2f32.powi(-6)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

impl Weights {
    /// Open `dir/model.safetensors` or every shard named by `dir/model.safetensors.index.json`.
    /// `dtype` is the compute dtype tensors are converted to (F32 or BF16).
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self, TeacherError> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| TeacherError::Io {
                path: index_path.clone(),
                source,
            })?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| TeacherError::ConfigJson {
                    path: index_path.clone(),
                    source,
                })?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| TeacherError::Config {
                    path: index_path.clone(),
                    message: "no weight_map object".into(),
                })?;
            let mut files = BTreeMap::new();
            for (key, file) in map {
                let file = file.as_str().ok_or_else(|| TeacherError::Config {
                    path: index_path.clone(),
                    message: format!("weight_map[{key}] is not a file name"),
                })?;
                if !dir.join(file).is_file() {
                    return Err(TeacherError::MissingShard {
                        path: index_path.clone(),
                        key: key.clone(),
                        file: file.into(),
                    });
                }
                files.insert(file.to_string(), ());
            }
            files.into_keys().map(|f| dir.join(f)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(TeacherError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in this directory",
                ),
            });
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|source| TeacherError::Io {
                path: path.clone(),
                source,
            })?;
            // the header is parsed from a read-only mapping, which also checks that every
            // tensor lies within the file; tensor data is read with pread, not through it
            // SAFETY: read-only mapping of a checkpoint that is not modified while loaded.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| TeacherError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| TeacherError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            drop(mmap);
            for name in metadata.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path,
                file,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(Self {
            files: Arc::new(Files {
                dir: dir.to_path_buf(),
                shards,
                index,
                fp8: None,
            }),
            used: Mutex::new(BTreeSet::new()),
            device: device.clone(),
            dtype,
            stream_experts: false,
        })
    }

    /// Read `F8_E4M3` tensors as block-quantized weights with these blocks
    /// (`quantization_config`); without it an FP8 tensor is an error.
    pub fn with_fp8(mut self, fp8: Option<Fp8Blocks>) -> Self {
        Arc::get_mut(&mut self.files)
            .expect("set before any tensor is handed out")
            .fp8 = fp8;
        self
    }

    /// Leave routed experts in the file (see the module docs).
    pub fn with_streamed_experts(mut self, stream: bool) -> Self {
        self.stream_experts = stream;
        self
    }

    pub fn streams_experts(&self) -> bool {
        self.stream_experts
    }

    /// Bytes of all shards.
    pub fn file_bytes(&self) -> u64 {
        self.files
            .shards
            .iter()
            .filter_map(|s| s.file.metadata().ok().map(|m| m.len()))
            .sum()
    }

    /// `key` (`[rows, cols]`), checked now and read later, on each [`LazyTensor::load`].
    pub fn lazy(&self, key: &str, shape: [usize; 2]) -> Result<LazyTensor, TeacherError> {
        let info = self.files.info(key, &shape)?;
        if info.dtype == Dtype::F8_E4M3 {
            // check the scale now, so that loading later cannot fail on it
            self.files.fp8_scale_shape(key, &shape)?;
            self.mark_used(&format!("{key}_scale_inv"));
        } else if !matches!(info.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            let (_, path) = self.files.shard_of(key).expect("checked above");
            return Err(TeacherError::Dtype {
                path: path.to_path_buf(),
                key: key.to_string(),
                dtype: format!("{:?}", info.dtype),
            });
        }
        self.mark_used(key);
        Ok(LazyTensor {
            files: self.files.clone(),
            key: key.to_string(),
            shape,
            device: self.device.clone(),
            dtype: self.dtype,
        })
    }

    fn mark_used(&self, key: &str) {
        self.used.lock().expect("used set").insert(key.to_string());
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, key: &str) -> bool {
        self.files.index.contains_key(key)
    }

    /// Shape of `key` as stored, if present.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let shard = &self.files.shards[*self.files.index.get(key)?];
        shard.metadata.info(key).map(|i| i.shape.clone())
    }

    /// Tensor `key`, which must have exactly `shape`, in the compute dtype.
    pub fn get<const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>, TeacherError> {
        let values = self.read(key, &shape)?;
        let t = Tensor::<D>::from_data(TensorData::new(values, shape), &self.device);
        Ok(if self.dtype == DType::F32 {
            t
        } else {
            t.cast(self.dtype)
        })
    }

    /// Like [`Weights::get`] but `None` when the key is absent (optional biases, norms).
    pub fn get_opt<const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Option<Tensor<D>>, TeacherError> {
        if self.contains(key) {
            self.get(key, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Raw values of `key` as f32 (shape-checked), for small tensors used on the host.
    pub fn read(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, TeacherError> {
        let (values, dtype) = self.files.decode(key, shape)?;
        self.mark_used(key);
        if dtype == Dtype::F8_E4M3 {
            self.mark_used(&format!("{key}_scale_inv"));
        }
        Ok(values)
    }

    /// Tensors present in the checkpoint that no layer asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().expect("used set");
        let mut v: Vec<String> = self
            .files
            .index
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        v.sort();
        v
    }
}

impl Files {
    fn shard_of(&self, key: &str) -> Option<(&Shard, &Path)> {
        let shard = &self.shards[*self.index.get(key)?];
        Some((shard, &shard.path))
    }

    /// The header entry of `key`, which must have exactly `shape`.
    fn info(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<&safetensors::tensor::TensorInfo, TeacherError> {
        let Some((shard, path)) = self.shard_of(key) else {
            return Err(TeacherError::MissingTensor {
                dir: self.dir.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                files: self
                    .shards
                    .iter()
                    .map(|s| s.path.file_name().unwrap_or_default().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let info = shard.metadata.info(key).expect("indexed key has info");
        if info.shape != shape {
            return Err(TeacherError::ShapeMismatch {
                path: path.to_path_buf(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        Ok(info)
    }

    /// The bytes of `key` (shape-checked), read from its file.
    fn bytes(&self, key: &str, shape: &[usize]) -> Result<(Vec<u8>, Dtype), TeacherError> {
        let info = self.info(key, shape)?;
        let (shard, path) = self.shard_of(key).expect("checked by info");
        let (a, b) = info.data_offsets;
        let mut buf = vec![0u8; b - a];
        shard
            .file
            .read_exact_at(&mut buf, (shard.data_start + a) as u64)
            .map_err(|e| TeacherError::Safetensors {
                path: path.to_path_buf(),
                message: format!("reading tensor {key}: {e} (truncated or changed file?)"),
            })?;
        Ok((buf, info.dtype))
    }

    /// Values of `key` as float32 (decoded from bf16/f16/f32, or FP8 blocks dequantized),
    /// and the dtype it is stored in.
    fn decode(&self, key: &str, shape: &[usize]) -> Result<(Vec<f32>, Dtype), TeacherError> {
        let (bytes, dtype) = self.bytes(key, shape)?;
        let path = || self.shard_of(key).expect("read above").1.to_path_buf();
        let values = match dtype {
            Dtype::F8_E4M3 => self.dequantize_fp8(key, shape, &bytes)?,
            other => ember_nn::decode_floats(other, &bytes).ok_or_else(|| TeacherError::Dtype {
                path: path(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })?,
        };
        Ok((values, dtype))
    }

    /// The block layout of FP8 tensor `key` and the checked shape of its scale.
    fn fp8_scale_shape(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<([usize; 2], [usize; 2]), TeacherError> {
        let path = self
            .shard_of(key)
            .map(|s| s.1.to_path_buf())
            .unwrap_or_default();
        let Some(Fp8Blocks { block: [b0, b1] }) = self.fp8 else {
            return Err(TeacherError::Safetensors {
                path,
                message: format!(
                    "tensor {key} is F8_E4M3 but config.json has no quantization_config (quant_method \"fp8\", weight_block_size)"
                ),
            });
        };
        let &[rows, cols] = shape else {
            return Err(TeacherError::Safetensors {
                path,
                message: format!(
                    "FP8 tensor {key} has shape {shape:?}; only 2-D weights are block-quantized"
                ),
            });
        };
        let scale_key = format!("{key}_scale_inv");
        let (sr, sc) = (rows.div_ceil(b0), cols.div_ceil(b1));
        if !self.index.contains_key(&scale_key) {
            return Err(TeacherError::Safetensors {
                path,
                message: format!(
                    "FP8 tensor {key} has no {scale_key} (expected float32 [{sr}, {sc}] for blocks [{b0}, {b1}])"
                ),
            });
        }
        self.info(&scale_key, &[sr, sc])?;
        Ok(([b0, b1], [sr, sc]))
    }

    /// `fp8` bytes of `key` times its `weight_scale_inv` blocks, as float32.
    fn dequantize_fp8(
        &self,
        key: &str,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<Vec<f32>, TeacherError> {
        let ([b0, b1], [sr, sc]) = self.fp8_scale_shape(key, shape)?;
        let cols = shape[1];
        let (scale, _) = self.decode(&format!("{key}_scale_inv"), &[sr, sc])?;
        let lut: Vec<f32> = (0..=255u8).map(f8_e4m3_to_f32).collect();
        let mut out = Vec::with_capacity(bytes.len());
        for (i, row) in bytes.chunks_exact(cols).enumerate() {
            let srow = &scale[(i / b0) * sc..(i / b0 + 1) * sc];
            out.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, &b)| lut[b as usize] * srow[j / b1]),
            );
        }
        Ok(out)
    }
}

/// Fingerprint of the checkpoint in `dir`: SHA-256 over every safetensors file's name, size,
/// header (tensor names, dtypes, shapes, offsets) and 32 blocks of 4 KiB spread evenly over
/// its data. Cheap (about 128 KiB read per file), and it changes when the weights are
/// retrained or replaced in place, which neither the config hash nor the header sees.
pub fn fingerprint(dir: &Path) -> Result<String, TeacherError> {
    use sha2::{Digest, Sha256};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| TeacherError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    for path in files {
        let io = |source| TeacherError::Io {
            path: path.clone(),
            source,
        };
        let f = std::fs::File::open(&path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        f.read_exact_at(&mut len, 0).map_err(io)?;
        let n = u64::from_le_bytes(len)
            .min(size.saturating_sub(8))
            .min(100 << 20);
        let mut header = vec![0u8; n as usize];
        f.read_exact_at(&mut header, 8).map_err(io)?;
        hash.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        hash.update(size.to_le_bytes());
        hash.update(&header);
        let (start, data) = (8 + n, size.saturating_sub(8 + n));
        let mut block = vec![0u8; 4096.min(data) as usize];
        for i in 0..32u64 {
            f.read_exact_at(&mut block, start + data.saturating_sub(4096) * i / 31)
                .map_err(io)?;
            hash.update(&block);
        }
    }
    Ok(format!("{:x}", hash.finalize()))
}
