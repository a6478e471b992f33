//! Clocks skewed with libfaketime (`LD_PRELOAD`): the wall clock a process
//! reads moved by a fixed offset, its monotonic clock left alone (timers,
//! timeouts and Raft's elections run as before). scripts/setup installs it.

/// Where distributions put the library (Debian's and Ubuntu's package
/// `libfaketime` first).
const LIBRARIES: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
];

fn library() -> Option<&'static str> {
    LIBRARIES
        .into_iter()
        .find(|l| std::path::Path::new(l).exists())
}

/// Whether libfaketime is installed here.
pub fn available() -> bool {
    library().is_some()
}

/// The environment of process `i` of a set where `skews` names some by
/// index with their skew in seconds: none for the others.
pub fn skewed_env(skews: &[(usize, i64)], i: usize) -> Vec<(String, String)> {
    match skews.iter().find(|(j, _)| *j == i) {
        Some((_, secs)) => skewed(*secs),
        None => Vec::new(),
    }
}

/// The environment of a process whose wall clock reads `secs` seconds
/// ahead of the real one (behind if negative); none without libfaketime
/// (`available`).
pub fn skewed(secs: i64) -> Vec<(String, String)> {
    let Some(library) = library() else {
        return Vec::new();
    };
    vec![
        ("LD_PRELOAD".into(), library.into()),
        ("FAKETIME".into(), format!("{secs:+}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}
