//! The teacher's large matrix products through the system's OpenBLAS, when one is installed.
//!
//! On CPU the teacher's forward is dominated by its linear layers, and Burn flex's `gemm`
//! kernels reach 30-60 GFLOP/s on them where OpenBLAS and MKL reach 190-240 on the same two
//! cores (`benches/compare_teacher.py`). So when `libopenblas.so.0` can be opened at run
//! time, float32 linear layers on the flex device keep their weights on the host and multiply
//! with `cblas_sgemm`; without it (or with `EMBER_BLAS=0`) everything stays in Burn. Nothing
//! is needed at build time. `EMBER_BLAS=/path/to/lib.so` names another CBLAS library
//! (it must export `cblas_sgemm` with 32-bit integers).
//!
//! Two OpenBLAS settings matter on the machines measured: its CPU detection can fall back to
//! the SSE3 "Prescott" kernels on CPUs newer than the library (5x slower), and its default
//! thread count can exceed the cores this process may use. [`init_blas`] (called by the CLI
//! before any thread starts) picks the kernels from the CPU's features unless
//! `OPENBLAS_CORETYPE` is set, and the thread count is set to the available parallelism
//! unless `OPENBLAS_NUM_THREADS` is.

use std::sync::OnceLock;

/// `cblas_sgemm(layout, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;

pub struct Blas {
    sgemm: Sgemm,
    /// The library opened.
    pub name: String,
    _lib: libloading::Library,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

/// Choose OpenBLAS's kernels from this CPU's features (unless `OPENBLAS_CORETYPE` is set) and
/// open the library. Call it at the start of `main`, before any other thread exists: it
/// writes the process environment, which OpenBLAS reads when it is loaded.
pub fn init_blas() {
    if std::env::var_os("OPENBLAS_CORETYPE").is_none()
        && let Some(core) = openblas_core()
    {
        // SAFETY: called from `main` before any thread is spawned (documented contract), so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("OPENBLAS_CORETYPE", core) };
    }
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
        let n = cores();
        // SAFETY: as above. (Its thread pool is sized on load: setting the count afterwards
        // leaves the extra threads in place, measurably slower.)
        unsafe { std::env::set_var("OPENBLAS_NUM_THREADS", n.to_string()) };
    }
    let _ = blas();
}

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The OpenBLAS kernel family this CPU can run, best first.
fn openblas_core() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl");
        if avx512 {
            return Some("SkylakeX");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some("Haswell");
        }
    }
    None
}

/// The CBLAS library in use, if any (opened once, on first use).
pub fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(|| {
        let names: Vec<String> = match std::env::var("EMBER_BLAS").ok().as_deref() {
            Some("0" | "off" | "none") => return None,
            Some(path) if !path.is_empty() => vec![path.to_string()],
            _ => ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"]
                .map(String::from)
                .to_vec(),
        };
        names.into_iter().find_map(|name| {
            // SAFETY: loading a shared library runs its initialisers; OpenBLAS's are benign.
            let lib = unsafe { libloading::Library::new(&name) }.ok()?;
            // SAFETY: `cblas_sgemm` has this signature in every CBLAS.
            let sgemm = *unsafe { lib.get::<Sgemm>(b"cblas_sgemm\0") }.ok()?;
            if std::env::var_os("OPENBLAS_NUM_THREADS").is_none()
                && let Ok(set) =
                    unsafe { lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0") }
            {
                // SAFETY: OpenBLAS's documented setter, called before any multiplication.
                unsafe { set(cores() as i32) };
            }
            Some(Blas {
                sgemm,
                name,
                _lib: lib,
            })
        })
    })
    .as_ref()
}

impl Blas {
    /// `c = a b`, `a: [m, k]`, `b: [k, n]`, row-major.
    pub fn matmul(&self, a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        assert_eq!(a.len(), m * k, "lhs of {m}x{k}");
        assert_eq!(b.len(), k * n, "rhs of {k}x{n}");
        let mut c = vec![0.0f32; m * n];
        if m == 0 || n == 0 {
            return c;
        }
        let dim = |x: usize| i32::try_from(x).expect("matrix dimension fits in 32 bits");
        // SAFETY: the slices hold exactly m*k, k*n and m*n floats (checked above), row-major
        // with leading dimensions k, n and n.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                NO_TRANS,
                dim(m),
                dim(n),
                dim(k),
                1.0,
                a.as_ptr(),
                dim(k.max(1)),
                b.as_ptr(),
                dim(n),
                0.0,
                c.as_mut_ptr(),
                dim(n),
            );
        }
        c
    }
}
