//! Trimming prefix and suffix to a family's context budget, keeping the code nearest the cursor.

use super::Budget;

/// Trim `prefix` (keeping its end) and `suffix` (keeping its start) so that together they fit
/// `budget.max_prompt_chars` characters. The suffix gets at most `suffix_share` of the budget; what
/// it does not use goes to the prefix. Cuts fall on character boundaries.
pub(crate) fn trim_to_budget<'a>(prefix: &'a str, suffix: &'a str, budget: Budget) -> (&'a str, &'a str) {
    let total = budget.max_prompt_chars;
    let suffix_cap = ((total as f64) * f64::from(budget.suffix_share.clamp(0.0, 1.0))) as usize;
    // A string has at most as many characters as bytes: what fits in bytes fits, without
    // counting characters (the common case, and a count is a pass over up to 200 KB).
    let suffix = if suffix.len() <= suffix_cap { suffix } else { keep_first_chars(suffix, suffix_cap) };
    if prefix.len() + suffix.len() <= total {
        return (prefix, suffix);
    }
    let prefix_cap = total.saturating_sub(suffix.chars().count());
    (keep_last_chars(prefix, prefix_cap), suffix)
}

fn keep_first_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

fn keep_last_chars(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    match text.char_indices().rev().nth(n - 1) {
        Some((cut, _)) => &text[cut..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget { max_prompt_chars: 100, suffix_share: 0.1 };

    #[test]
    fn within_budget_is_untouched() {
        assert_eq!(trim_to_budget("abc", "def", BUDGET), ("abc", "def"));
    }

    #[test]
    fn the_budget_counts_characters_not_bytes() {
        // 130 bytes, but 65 characters: within the 100-character budget.
        let (prefix, suffix) = ("é".repeat(60), "ü".repeat(5));
        assert_eq!(trim_to_budget(&prefix, &suffix, BUDGET), (prefix.as_str(), suffix.as_str()));
        // 12 characters of suffix are over its 10, even though the whole would fit.
        let long_suffix = "ü".repeat(12);
        assert_eq!(trim_to_budget("a", &long_suffix, BUDGET).1.chars().count(), 10);
    }

    #[test]
    fn keeps_code_nearest_the_cursor() {
        let prefix = format!("{}END", "p".repeat(200));
        let suffix = format!("START{}", "s".repeat(200));
        let (p, s) = trim_to_budget(&prefix, &suffix, BUDGET);
        assert_eq!(s.chars().count(), 10);
        assert!(s.starts_with("START"));
        assert_eq!(p.chars().count(), 90);
        assert!(p.ends_with("END"));
    }

    #[test]
    fn unused_suffix_share_goes_to_the_prefix_and_cuts_respect_utf8() {
        let prefix = "é".repeat(150);
        let (p, s) = trim_to_budget(&prefix, "", BUDGET);
        assert_eq!((p.chars().count(), s), (100, ""));
    }
}
