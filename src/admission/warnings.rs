//! Warnings as the API server relays them: each cut to a length, all
//! within a total, so a pod of thousands of failing containers gets the
//! first few and a count.

/// The API server relays at most about 4 KiB of warnings per response
/// (beyond that it cuts each to 256 characters): archway stays under both.
pub(super) const MAX_WARNING_CHARS: usize = 512;
const MAX_WARNINGS_TOTAL_CHARS: usize = 4000;

/// Keeps the warnings within what the API server relays: a pod of
/// thousands of failing containers gets the first few and a count.
pub(super) fn budget_warnings(warnings: &mut Vec<String>) {
    let mut total = 0;
    let keep = warnings
        .iter()
        .position(|w| {
            total += w.chars().count();
            total > MAX_WARNINGS_TOTAL_CHARS - 64
        })
        .unwrap_or(warnings.len());
    if keep < warnings.len() {
        let dropped = warnings.len() - keep;
        warnings.truncate(keep);
        warnings.push(format!("archway: and {dropped} more warnings"));
    }
}

pub(super) fn warning(text: &str) -> String {
    if text.chars().count() <= MAX_WARNING_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX_WARNING_CHARS - 1).collect();
    format!("{cut}…")
}
