//! Memory-mapped safetensors checkpoints, single-file or sharded
//! (`model.safetensors.index.json`), read tensor by tensor.
//!
//! Nothing is read up front but the headers: each tensor is converted from its file
//! dtype (bf16/f16/f32) straight into the compute dtype when a layer asks for it, so
//! peak memory is the model in its compute dtype plus one tensor.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use crate::TeacherError;

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
        })
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
