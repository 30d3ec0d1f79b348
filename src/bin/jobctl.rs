//! `jobctl`: the command-line client of the HTTP API. Its subcommands arrive with the CLI
//! issue; the name is reserved here.

fn main() {
    eprintln!("jobctl: not built yet; use the HTTP API (see README.md)");
    std::process::exit(2);
}
