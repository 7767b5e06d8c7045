//! The `gatehouse` binary: installs the TLS crypto provider, then hands over to `cli`.

fn main() -> std::process::ExitCode {
    // One provider for every TLS user in the process (console, clients, LDAP later).
    let _ = rustls::crypto::ring::default_provider().install_default();
    gatehouse::cli::main()
}
