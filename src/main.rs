fn main() -> std::process::ExitCode {
    ember_cli::main()
}
