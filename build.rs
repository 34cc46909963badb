//! With the `tch` backend, record libtorch's directory as an rpath of the `ember` binary and the
//! tests, so they start without `LD_LIBRARY_PATH` (torch-sys exports the directory it linked).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
