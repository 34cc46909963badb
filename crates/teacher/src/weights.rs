//! Memory-mapped safetensors checkpoints, single-file or sharded
//! (`model.safetensors.index.json`), read tensor by tensor.
//!
//! Nothing is read up front but the headers: each tensor is converted from its file
//! dtype (bf16/f16/f32) straight into the compute dtype when a layer asks for it, so
//! peak memory is the model in its compute dtype plus one tensor.
//!
//! FP8 block-quantized checkpoints (DeepSeek-V3/R1, Kimi K2, MiniMax-M2): an `F8_E4M3`
//! tensor `X.weight` `[rows, cols]` comes with a float32 `X.weight_scale_inv`
//! `[ceil(rows / b0), ceil(cols / b1)]`, and is dequantized as DeepSeek's reference
//! `weight_dequant` does: `W[i, j] = fp8(W[i, j]) * scale_inv[i / b0, j / b1]` in float32
//! (edge blocks are partial).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use crate::{Fp8Blocks, TeacherError};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8-byte length + header).
    data_start: usize,
    metadata: Metadata,
}

/// A checkpoint directory opened for reading.
pub struct Weights {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> shard.
    index: HashMap<String, usize>,
    used: RefCell<BTreeSet<String>>,
    device: Device,
    dtype: DType,
    fp8: Option<Fp8Blocks>,
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
            for name in metadata.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path,
                mmap,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
            used: RefCell::new(BTreeSet::new()),
            device: device.clone(),
            dtype,
            fp8: None,
        })
    }

    /// Read `F8_E4M3` tensors as block-quantized weights with these blocks
    /// (`quantization_config`); without it an FP8 tensor is an error.
    pub fn with_fp8(mut self, fp8: Option<Fp8Blocks>) -> Self {
        self.fp8 = fp8;
        self
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Shape of `key` as stored, if present.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let shard = &self.shards[*self.index.get(key)?];
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
        let Some(&s) = self.index.get(key) else {
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
        let shard = &self.shards[s];
        let info = shard.metadata.info(key).expect("indexed key has info");
        if info.shape != shape {
            return Err(TeacherError::ShapeMismatch {
                path: shard.path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (a, b) = info.data_offsets;
        let bytes = shard
            .mmap
            .get(shard.data_start + a..shard.data_start + b)
            .ok_or_else(|| TeacherError::Safetensors {
                path: shard.path.clone(),
                message: format!(
                    "tensor {key} lies beyond the end of the file (truncated download?)"
                ),
            })?;
        let values: Vec<f32> = match info.dtype {
            Dtype::F8_E4M3 => self.dequantize_fp8(key, &shard.path, shape, bytes)?,
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(TeacherError::Dtype {
                    path: shard.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        self.used.borrow_mut().insert(key.to_string());
        Ok(values)
    }

    /// `fp8` bytes of `key` times its `weight_scale_inv` blocks, as float32.
    fn dequantize_fp8(
        &self,
        key: &str,
        path: &Path,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<Vec<f32>, TeacherError> {
        let Some(Fp8Blocks { block: [b0, b1] }) = self.fp8 else {
            return Err(TeacherError::Safetensors {
                path: path.to_path_buf(),
                message: format!(
                    "tensor {key} is F8_E4M3 but config.json has no quantization_config (quant_method \"fp8\", weight_block_size)"
                ),
            });
        };
        let &[rows, cols] = shape else {
            return Err(TeacherError::Safetensors {
                path: path.to_path_buf(),
                message: format!(
                    "FP8 tensor {key} has shape {shape:?}; only 2-D weights are block-quantized"
                ),
            });
        };
        let scale_key = format!("{key}_scale_inv");
        let (sr, sc) = (rows.div_ceil(b0), cols.div_ceil(b1));
        if !self.contains(&scale_key) {
            return Err(TeacherError::Safetensors {
                path: path.to_path_buf(),
                message: format!(
                    "FP8 tensor {key} has no {scale_key} (expected float32 [{sr}, {sc}] for blocks [{b0}, {b1}])"
                ),
            });
        }
        let scale = self.read(&scale_key, &[sr, sc])?;
        let lut: Vec<f32> = (0..=255u8).map(f8_e4m3_to_f32).collect();
        let mut out = Vec::with_capacity(rows * cols);
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

    /// Tensors present in the checkpoint that no layer asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut v: Vec<String> = self
            .index
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// Fingerprint of the checkpoint in `dir`: SHA-256 over every safetensors file's name, size,
/// header (tensor names, dtypes, shapes, offsets) and 32 blocks of 4 KiB spread evenly over
/// its data. Cheap (about 128 KiB read per file), and it changes when the weights are
/// retrained or replaced in place, which neither the config hash nor the header sees.
pub fn fingerprint(dir: &Path) -> Result<String, TeacherError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
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
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(io)?;
        let n = u64::from_le_bytes(len)
            .min(size.saturating_sub(8))
            .min(100 << 20);
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(io)?;
        hash.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        hash.update(size.to_le_bytes());
        hash.update(&header);
        use std::io::{Seek, SeekFrom};
        let (start, data) = (8 + n, size.saturating_sub(8 + n));
        let mut block = vec![0u8; 4096];
        for i in 0..32u64 {
            let at = start + data.saturating_sub(4096) * i / 31;
            let len = 4096.min(data) as usize;
            f.seek(SeekFrom::Start(at)).map_err(io)?;
            f.read_exact(&mut block[..len]).map_err(io)?;
            hash.update(&block[..len]);
        }
    }
    Ok(format!("{:x}", hash.finalize()))
}
