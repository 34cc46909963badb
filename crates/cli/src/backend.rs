//! `--backend cpu|wgpu|tch|cuda` and `--device N`: one binary, backends chosen at run time.
//! CPU (Burn flex) is always built; the others sit behind the cargo features of the same name.

use anyhow::{Context, bail};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use ember_train::Precision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Burn flex: pure Rust, threads + SIMD. Always built.
    Cpu,
    /// WGPU (Vulkan, Metal, DX12; Mesa's llvmpipe without a GPU). Cargo feature `wgpu`.
    Wgpu,
    /// LibTorch through burn-tch (CUDA when present, else CPU). Cargo feature `tch`.
    Tch,
    /// Native CUDA through CubeCL, no libtorch. Cargo feature `cuda`.
    Cuda,
}

#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Compute backend: cpu (Burn flex, default), wgpu, tch (libtorch) or cuda (CubeCL).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Device for GPU backends: an index (0, 1, ...); `cpu` runs tch on libtorch's CPU.
    #[arg(long = "device", value_name = "N|cpu")]
    pub device: Option<String>,
}

impl BackendArgs {
    /// The device, checked by a small round trip so a missing runtime (no Vulkan adapter,
    /// no CUDA driver, no libtorch GPU) fails here with the fix rather than deep in a run.
    pub fn device(&self) -> anyhow::Result<Device> {
        self.device_for(Precision::F32)
    }

    /// The device with `precision` as its default float type (set before first use).
    pub fn device_for(&self, precision: Precision) -> anyhow::Result<Device> {
        let index = match self.device.as_deref() {
            None => None,
            Some("cpu") => None,
            Some(s) => Some(
                s.parse::<usize>()
                    .with_context(|| format!("--device {s:?}: expected an index or `cpu`"))?,
            ),
        };
        let (device, what) = self.select(index)?;
        default_to(self.backend);
        precision
            .apply(&device)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        probe(&device).with_context(|| format!("the {what} device did not start"))?;
        eprintln!("backend: {what}, {precision:?}");
        Ok(device)
    }

    fn select(&self, index: Option<usize>) -> anyhow::Result<(Device, String)> {
        // called only for the backends a build leaves out
        #[allow(unused_variables)]
        let not_built = |feature: &str, how: &str| -> anyhow::Result<(Device, String)> {
            bail!(
                "--backend {feature} is not in this build; rebuild with `cargo build --release --features {feature}` ({how})"
            )
        };
        match self.backend {
            Backend::Cpu => {
                if self
                    .device
                    .as_deref()
                    .is_some_and(|d| d != "cpu" && d != "0")
                {
                    bail!("--backend cpu has one device; drop --device");
                }
                Ok((Device::flex(), "cpu (Burn flex)".into()))
            }
            Backend::Wgpu => {
                #[cfg(feature = "wgpu")]
                {
                    wgpu_device(index.unwrap_or(0))
                }
                #[cfg(not(feature = "wgpu"))]
                {
                    let _ = index;
                    not_built("wgpu", "needs a Vulkan, Metal or DX12 driver at run time")
                }
            }
            Backend::Tch => {
                #[cfg(feature = "tch")]
                {
                    tch_device(self.device.as_deref() == Some("cpu"), index.unwrap_or(0))
                }
                #[cfg(not(feature = "tch"))]
                {
                    not_built(
                        "tch",
                        "`source scripts/tch_env.sh` first, with EMBER_TORCH=<version> for the libtorch it will run on",
                    )
                }
            }
            Backend::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    cuda_device(index.unwrap_or(0))
                }
                #[cfg(not(feature = "cuda"))]
                {
                    not_built(
                        "cuda",
                        "`source scripts/cuda_env.sh` first for the static LLVM it compiles kernels with; an NVIDIA driver at run time",
                    )
                }
            }
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(index: usize) -> anyhow::Result<(Device, String)> {
    use burn::tensor::DeviceType;
    let found = quiet(|| {
        Device::enumerate(DeviceType::Wgpu)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
    });
    let devices = match found {
        Ok(d) if !d.is_empty() => d,
        _ => bail!(
            "no WGPU adapter found: install a Vulkan driver (on Linux without a GPU: `apt-get install mesa-vulkan-drivers libvulkan1` gives the llvmpipe software device)"
        ),
    };
    let Some(device) = devices.get(index).cloned() else {
        bail!(
            "--device {index}: only {} WGPU adapter(s) found",
            devices.len()
        )
    };
    Ok((device.clone(), format!("wgpu {device:?}")))
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated upstream; it is still the CUDA-through-libtorch path
fn tch_device(force_cpu: bool, index: usize) -> anyhow::Result<(Device, String)> {
    let gpus = tch::Cuda::device_count() as usize;
    if force_cpu {
        return Ok((Device::libtorch(), "tch (libtorch CPU)".into()));
    }
    if gpus == 0 {
        eprintln!("tch: libtorch sees no CUDA device; running on libtorch's CPU");
        return Ok((Device::libtorch(), "tch (libtorch CPU)".into()));
    }
    if index >= gpus {
        bail!("--device {index}: libtorch sees {gpus} CUDA device(s)");
    }
    Ok((
        Device::libtorch_cuda(index),
        format!("tch (libtorch CUDA device {index})"),
    ))
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> anyhow::Result<(Device, String)> {
    Ok((
        Device::cuda(index),
        format!("cuda (CubeCL, device {index})"),
    ))
}

/// A tiny computation read back to the host; runtimes that panic when their driver is
/// missing are caught here and turned into an error.
fn probe(device: &Device) -> anyhow::Result<()> {
    let device = device.clone();
    let value = quiet(move || {
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
        (x.clone() * x).sum().into_scalar::<f32>()
    })
    .map_err(|msg| anyhow::anyhow!("{msg}"))?;
    if (value - 14.0).abs() > 1e-3 {
        bail!("probe computed {value}, expected 14");
    }
    Ok(())
}

/// Run `f`, turning a panic into an error message, without printing the panic.
fn quiet<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the backend panicked".into())
    })
}

/// Make burn's `Device::default()` the chosen backend. burn-train deserializes checkpoint
/// records (resuming a run) onto the default device, which is otherwise the "best" backend
/// compiled in (CUDA, then WGPU), whatever `--backend` says: a resumed CPU run would load its
/// weights onto WGPU, or fail to start the CUDA driver. An explicit `BURN_DEVICE` still wins.
fn default_to(backend: Backend) {
    if std::env::var_os("BURN_DEVICE").is_some() {
        return;
    }
    let name = match backend {
        Backend::Cpu => "flex",
        Backend::Wgpu => "wgpu",
        Backend::Tch => "tch",
        Backend::Cuda => "cuda",
    };
    // SAFETY: called once while the command starts, before it spawns worker threads that
    // could read the environment concurrently.
    unsafe { std::env::set_var("BURN_DEVICE", name) };
}
