//! caasd: a caas node (host agent, health checker, control API). Being built; see the README.

fn main() {
    eprintln!("caasd: not available yet");
    std::process::exit(2);
}
