//! Fitting the caller's text into a prompt's token budget: the code around the cursor, and a
//! conversation's turns.

use super::tokens;
use crate::plugins::wit;

/// The caller's code, cut to a budget.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FittedCode<'a> {
    /// The end of the code above the cursor.
    pub(crate) prefix: &'a str,
    /// The start of the code below it.
    pub(crate) suffix: &'a str,
    /// The start of the code context (the editor's other files, joined).
    pub(crate) context: &'a str,
}

/// Fit code into `budget` tokens as GitLab's gateway does: the prefix keeps its end within
/// `1 - suffix_share` of the budget, the suffix keeps its start within the rest, and the code
/// context keeps its start within what those two left unused.
pub(crate) fn fit_code<'a>(
    prefix: &'a str,
    suffix: &'a str,
    context: &'a str,
    budget: usize,
    suffix_share: f32,
) -> FittedCode<'a> {
    // A token is at least one byte: text that fits in bytes fits in tokens, and is not counted.
    if prefix.len() + suffix.len() + context.len() <= budget {
        return FittedCode { prefix, suffix, context };
    }
    let prefix_max = ((1.0 - f64::from(suffix_share.clamp(0.0, 1.0))) * budget as f64).ceil() as usize;
    let prefix = tokens::keep_last(prefix, prefix_max.min(budget));
    let suffix = tokens::keep_first(suffix, budget - prefix_max.min(budget));
    let context = tokens::keep_first(context, budget - prefix.tokens - suffix.tokens);
    FittedCode { prefix: prefix.text, suffix: suffix.text, context: context.text }
}

/// What stands where the middle of an over-long message was cut out.
const ELISION: &str = "\n…\n";

/// Fit a rendered conversation into `budget` tokens, keeping what the model needs most: its
/// leading system messages, the last user message and what follows it (the prefill) stay; the
/// oldest turns go first, whole, so that the conversation still opens with a user message; if
/// that is not enough, the last user message loses its middle, keeping its start (where templates
/// put the page or file in view) and its end (the question). Returns whether anything was cut.
pub(crate) fn fit_conversation(messages: &mut Vec<wit::Message>, budget: usize) -> bool {
    if messages.iter().map(|m| m.content.len()).sum::<usize>() <= budget {
        return false;
    }
    let costs: Vec<usize> = messages.iter().map(|m| tokens::count(&m.content)).collect();
    let mut total: usize = costs.iter().sum();
    let (Some(first_turn), Some(last_user)) = (
        messages.iter().position(|m| !matches!(m.role, wit::Role::System)),
        messages.iter().rposition(|m| matches!(m.role, wit::Role::User)),
    ) else {
        return false;
    };
    if total <= budget {
        return false;
    }
    let mut kept_from = first_turn;
    while kept_from < last_user && (total > budget || !matches!(messages[kept_from].role, wit::Role::User)) {
        total -= costs[kept_from];
        kept_from += 1;
    }
    messages.drain(first_turn..kept_from);
    if total > budget {
        let last = last_user - (kept_from - first_turn);
        let room = budget.saturating_sub(total - costs[last_user] + tokens::count(ELISION));
        let content = &messages[last].content;
        let head = tokens::keep_first(content, room / 2);
        let tail = tokens::keep_last(&content[head.text.len()..], room - head.tokens);
        messages[last].content = format!("{}{ELISION}{}", head.text, tail.text);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> String {
        format!("let value_{n} = compute({n}, \"text\");\n")
    }

    fn lines(range: std::ops::Range<usize>) -> String {
        range.map(line).collect()
    }

    #[test]
    fn code_within_the_budget_is_untouched() {
        let fitted = fit_code("abc", "def", "ctx", 100, 0.07);
        assert_eq!(fitted, FittedCode { prefix: "abc", suffix: "def", context: "ctx" });
    }

    #[test]
    fn the_budget_counts_tokens_not_characters() {
        // 400 lines: far more characters than the 1,000-token budget, about a thousand tokens
        // too many: a character budget would keep a quarter, a token budget keeps most of it.
        let prefix = lines(0..150);
        let tokens = tokens::count(&prefix);
        assert!(prefix.len() > 3 * tokens, "code is several characters a token");
        let fitted = fit_code(&prefix, "", "", tokens, 0.0);
        assert_eq!(fitted.prefix, prefix, "{tokens} tokens fit a {tokens}-token budget");
        let fitted = fit_code(&prefix, "", "", tokens - 1, 0.0);
        assert!(fitted.prefix.len() < prefix.len());
    }

    #[test]
    fn keeps_the_code_nearest_the_cursor_in_gitlabs_shares() {
        let (prefix, suffix) = (lines(0..200), lines(200..400));
        let fitted = fit_code(&prefix, &suffix, "", 1000, 0.07);
        assert!(prefix.ends_with(fitted.prefix) && fitted.prefix.ends_with(&line(199)));
        assert!(suffix.starts_with(fitted.suffix) && fitted.suffix.starts_with(&line(200)));
        let (p, s) = (tokens::count(fitted.prefix), tokens::count(fitted.suffix));
        assert!(p <= 930 && p > 920, "the prefix has 93 % of the budget: {p}");
        assert!(s <= 70 && s > 60, "the suffix the other 7 %: {s}");
    }

    #[test]
    fn the_context_gets_what_prefix_and_suffix_leave() {
        let context = lines(500..700);
        let fitted = fit_code("short prefix", "short suffix", &context, 1000, 0.07);
        assert_eq!((fitted.prefix, fitted.suffix), ("short prefix", "short suffix"));
        assert!(context.starts_with(fitted.context));
        let used = tokens::count(fitted.prefix) + tokens::count(fitted.suffix) + tokens::count(fitted.context);
        assert!(used <= 1000 && used > 990, "{used} of 1000 tokens");
    }

    fn message(role: wit::Role, content: String) -> wit::Message {
        wit::Message { role, content }
    }

    #[test]
    fn a_conversation_within_the_budget_is_untouched() {
        let mut messages = vec![message(wit::Role::System, "be brief".into()), message(wit::Role::User, "hi".into())];
        assert!(!fit_conversation(&mut messages, 100));
        assert_eq!(messages.len(), 2);
    }

    #[test]
    fn the_oldest_turns_go_first_and_the_conversation_opens_with_a_user_message() {
        let turn = lines(0..20);
        let cost = tokens::count(&turn);
        let mut messages = vec![
            message(wit::Role::System, "system".into()),
            message(wit::Role::User, format!("first {turn}")),
            message(wit::Role::Assistant, format!("second {turn}")),
            message(wit::Role::User, format!("third {turn}")),
            message(wit::Role::Assistant, format!("fourth {turn}")),
            message(wit::Role::User, "the question".into()),
            message(wit::Role::Assistant, "Thought:".into()),
        ];
        // Room for about two turns besides the rest: the first user turn goes, and so does the
        // assistant turn after it, which would otherwise open the conversation.
        assert!(fit_conversation(&mut messages, 2 * cost + 30));
        let firsts: Vec<&str> = messages.iter().map(|m| m.content.split(' ').next().unwrap()).collect();
        assert_eq!(firsts, ["system", "third", "fourth", "the", "Thought:"]);
    }

    #[test]
    fn an_over_long_question_keeps_its_start_and_end() {
        let content = format!("<file>\n{}</file>\nWhat does value_0 hold?", lines(0..400));
        let mut messages = vec![message(wit::Role::System, "system".into()), message(wit::Role::User, content.clone())];
        assert!(fit_conversation(&mut messages, 500));
        let kept = &messages[1].content;
        assert!(kept.starts_with("<file>\nlet value_0") && kept.ends_with("</file>\nWhat does value_0 hold?"));
        assert!(kept.contains(ELISION));
        let total: usize = messages.iter().map(|m| tokens::count(&m.content)).sum();
        assert!(total <= 500 && total > 480, "{total} of 500 tokens");
    }
}
