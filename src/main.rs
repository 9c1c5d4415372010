//! The `etcd-backup` binary: everything is in the library.

fn main() -> std::process::ExitCode {
    etcd_backup::cli::main()
}
