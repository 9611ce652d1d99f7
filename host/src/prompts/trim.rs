//! Trimming prefix and suffix to a family's context budget, keeping the code nearest the cursor.

use super::Budget;

/// Trim `prefix` (keeping its end) and `suffix` (keeping its start) so that together they fit
/// `budget.max_prompt_chars` characters. The suffix gets at most `suffix_share` of the budget; what
/// it does not use goes to the prefix. Cuts fall on character boundaries.
pub fn trim_to_budget<'a>(prefix: &'a str, suffix: &'a str, budget: Budget) -> (&'a str, &'a str) {
    let total = budget.max_prompt_chars;
    let suffix_cap = ((total as f64) * f64::from(budget.suffix_share.clamp(0.0, 1.0))) as usize;
    let suffix = keep_first_chars(suffix, suffix_cap);
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
