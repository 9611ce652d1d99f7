//! Model tokens: text counted and cut with a real byte-pair vocabulary, the unit of every context
//! budget.
//!
//! The vocabulary is OpenAI's `cl100k_base` (GitHub's `bpe-openai` crate, which ships it). No
//! single vocabulary is every family's: Llama 3's extends this one, GPT's is this one or its
//! successor, and the SentencePiece families (Mistral, CodeLlama, CodeGemma) split code into
//! somewhat more pieces. A budget in these tokens is an estimate of the model's, close enough to
//! keep a request inside a context window that `families.toml` states with room to spare; a
//! count of characters is not (96,000 characters of code are 20,000 to 45,000 tokens).

/// The vocabulary, which the crate loads the first time text is counted (about 20 ms and
/// 30 MiB, measured here): a gateway whose requests all fit their budgets in bytes never loads it.
fn vocabulary() -> &'static bpe_openai::Tokenizer {
    bpe_openai::cl100k_base()
}

/// A piece of text and its length in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut<'a> {
    pub(crate) text: &'a str,
    pub(crate) tokens: usize,
}

/// How many tokens `text` is.
pub(crate) fn count(text: &str) -> usize {
    vocabulary().count(text)
}

/// The longest start of `text` that is at most `max` tokens.
pub(crate) fn keep_first(text: &str, max: usize) -> Cut<'_> {
    let mut tokens = 0;
    let mut end = 0;
    for piece in pieces(text) {
        let cost = vocabulary().bpe.count(piece.as_bytes());
        if tokens + cost > max {
            break;
        }
        tokens += cost;
        end = offset(text, piece) + piece.len();
    }
    Cut { text: &text[..end], tokens }
}

/// The longest end of `text` that is at most `max` tokens.
pub(crate) fn keep_last(text: &str, max: usize) -> Cut<'_> {
    // The pre-tokenizer only runs forwards: split the whole text, then count from its end, so that
    // the pieces (and so the count) are the ones the whole text has.
    let all: Vec<&str> = pieces(text).collect();
    let mut tokens = 0;
    let mut start = text.len();
    for piece in all.iter().rev() {
        let cost = vocabulary().bpe.count(piece.as_bytes());
        if tokens + cost > max {
            break;
        }
        tokens += cost;
        start = offset(text, piece);
    }
    Cut { text: &text[start..], tokens }
}

/// The pre-tokenizer's pieces of `text` (words, number groups, runs of spaces or punctuation),
/// each a slice of it, whose token counts add up to the text's. A cut between pieces falls on a
/// character boundary, and cuts nothing the model would have seen as one token.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    vocabulary().split(text)
}

/// Where `piece`, a slice of `text`, starts in it.
fn offset(text: &str, piece: &str) -> usize {
    piece.as_ptr() as usize - text.as_ptr() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "fn main() {\n    let total: u32 = (1..=10).sum();\n    println!(\"{total}\");\n}\n";

    #[test]
    fn counts_are_the_vocabularys_not_characters() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        // Code is several characters per token; the count is far below the length.
        let tokens = count(CODE);
        assert!(tokens > 10 && tokens < CODE.len() / 2, "{tokens} tokens for {} bytes", CODE.len());
    }

    #[test]
    fn the_pieces_add_up_to_the_whole() {
        let text = CODE.repeat(40);
        let whole = count(&text);
        assert_eq!(keep_first(&text, usize::MAX), Cut { text: &text, tokens: whole });
        assert_eq!(keep_last(&text, usize::MAX), Cut { text: &text, tokens: whole });
    }

    #[test]
    fn a_cut_is_within_its_budget_and_as_long_as_the_budget_allows() {
        let text = CODE.repeat(40);
        for max in [0, 1, 7, 100, 333] {
            for cut in [keep_first(&text, max), keep_last(&text, max)] {
                assert!(cut.tokens <= max, "{} tokens over {max}", cut.tokens);
                assert_eq!(count(cut.text), cut.tokens, "the reported count is the text's");
                // The next piece would not have fitted: no more than one piece short.
                assert!(max - cut.tokens < 8, "{} tokens short of {max}", max - cut.tokens);
            }
            assert!(text.starts_with(keep_first(&text, max).text));
            assert!(text.ends_with(keep_last(&text, max).text));
        }
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let text = "é日本語 ü".repeat(200);
        for max in 0..60 {
            // Slicing would have panicked off a boundary; the counts must still hold.
            assert!(keep_first(&text, max).tokens <= max);
            assert!(keep_last(&text, max).tokens <= max);
        }
    }
}
