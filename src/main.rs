#![forbid(unsafe_code)]

fn main() {
    std::process::exit(portcullis::cli::main());
}
