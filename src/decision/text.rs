//! Strings from pod authors and registries, kept short where archway
//! repeats them: warnings, annotations, Events, logs.

/// Strings from pod authors, kept short in messages and logs.
pub fn truncate_for_message(input: &str) -> String {
    truncate_to(input, 256)
}

/// An image as messages name it: long enough to recognise, short enough
/// that the reason after it survives the API server's warning limits.
pub fn short_image(image: &str) -> String {
    truncate_to(image, 96)
}

/// An Event's note: the API server refuses notes over 1 kB.
pub fn truncate_note(input: &str) -> String {
    truncate_to(input, 1000)
}

fn truncate_to(input: &str, max: usize) -> String {
    if input.len() <= max {
        return input.to_string();
    }
    let mut end = max;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        assert_eq!(short_image("nginx:1.27"), "nginx:1.27");
        let long = "é".repeat(100);
        let cut = short_image(&long);
        assert!(
            cut.ends_with('…') && cut.len() <= 96 + '…'.len_utf8(),
            "{cut}"
        );
        assert_eq!(truncate_for_message(&"a".repeat(300)).chars().count(), 257);
    }
}
