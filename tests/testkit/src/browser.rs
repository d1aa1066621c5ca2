//! Debian's `chromium`, headless, for the tests that look at archway's
//! HTML report as a person would: a screenshot kept as an artefact, and
//! the page's DOM after its scripts ran.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `chromium` headless on `page` with `args` and a profile of its own
/// (so no state leaks between runs), bounded at two minutes.
pub fn chromium(args: &[&str], page: &Path) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["120", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (install it with tests/deps.sh)");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Lines of chromium's log that report a message or an error of the page.
pub fn console_errors(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect()
}

/// Screenshots `page` at `width` x `height` into `png` and checks that
/// what chromium wrote is a PNG of that size with more than a blank
/// page's bytes in it (a blank page of that size compresses to a few KiB;
/// text and tables take more). Fails on any console message.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) {
    let _ = std::fs::remove_file(png);
    let shot = chromium(
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={width},{height}"),
        ],
        page,
    );
    assert_eq!(console_errors(&shot.stderr), Vec::<String>::new());
    let bytes = std::fs::read(png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: width and height, big-endian, at bytes 16..24.
    let size = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (width, height));
    assert!(bytes.len() > 20_000, "screenshot of {} bytes", bytes.len());
}

/// The page's DOM once its scripts ran; fails on any console message.
pub fn dom(page: &Path) -> String {
    let out = chromium(&["--dump-dom"], page);
    assert_eq!(console_errors(&out.stderr), Vec::<String>::new());
    String::from_utf8(out.stdout).unwrap()
}

/// Keeps `html` for a person to look at, as
/// `target/test-output/<name>/report.html` (`target_tmpdir` is the test's
/// `CARGO_TARGET_TMPDIR`), screenshots it at 1280 x `height` into
/// `report.png` beside it (see [`screenshot`]), and returns its DOM.
pub fn look_at_report(target_tmpdir: &str, name: &str, html: &[u8], height: u32) -> String {
    let folder = Path::new(target_tmpdir)
        .parent()
        .unwrap()
        .join("test-output")
        .join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let page = folder.join("report.html");
    std::fs::write(&page, html).unwrap();
    screenshot(&page, &folder.join("report.png"), 1280, height);
    eprintln!("report kept: {}", folder.join("report.png").display());
    dom(&page)
}
