//! Strips a markdown code fence around a model's generated code, whole or while it streams, so
//! the editor receives bare code however the fence is split across chunks.

/// Incremental fence stripper. Feed pieces with [`FenceStripper::push`], emit what it returns,
/// and emit [`FenceStripper::finish`] at the end.
#[derive(Debug, Default)]
pub(crate) struct FenceStripper {
    /// Past the opening line: body text is flowing.
    in_body: bool,
    /// Text held back: the first line (it may be an opening fence) or, in the body, the last
    /// line while it may still become a closing fence.
    pending: String,
}

const FENCE: &str = "```";

/// Whether `line` (without its newline) could still grow into, or is, a fence line.
fn may_be_fence(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.len() < FENCE.len() && FENCE.starts_with(trimmed) || trimmed.starts_with(FENCE)
}

/// In the body, where to start holding text back: at the newline before a last line that may
/// become the closing fence, or at a trailing newline after which one may still start.
fn hold_from(text: &str) -> usize {
    let content = text.trim_end();
    let last_start = content.rfind('\n').map_or(0, |newline| newline + 1);
    if !content.is_empty() && may_be_fence(&content[last_start..]) {
        return last_start.saturating_sub(1);
    }
    match text[content.len()..].find('\n') {
        Some(offset) => content.len() + offset,
        None => text.len(),
    }
}

impl FenceStripper {
    /// Strip a complete answer.
    pub(crate) fn strip(text: &str) -> String {
        let mut stripper = FenceStripper::default();
        let mut out = stripper.push(text);
        out.push_str(&stripper.finish());
        out
    }

    /// Take the next piece; returns the text that can be emitted now.
    pub(crate) fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let mut out = String::new();
        if !self.in_body {
            match self.pending.find('\n') {
                Some(end) => {
                    self.in_body = true;
                    let first = &self.pending[..end];
                    if first.trim_start().starts_with(FENCE) {
                        // Opening fence with an optional language tag: drop the whole line.
                        self.pending.drain(..=end);
                    }
                }
                None if may_be_fence(&self.pending) => return out,
                None => self.in_body = true,
            }
        }
        let hold = hold_from(&self.pending);
        out.extend(self.pending.drain(..hold));
        out
    }

    /// The end of the answer: a held-back closing fence is dropped (the newline before it stays,
    /// as GitLab's stripping leaves it: the code's last line keeps its line end), anything else
    /// is emitted.
    pub(crate) fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        if self.in_body && rest.trim() == FENCE {
            let fence_at = rest.find(FENCE).unwrap_or(rest.len());
            return rest[..fence_at].to_string();
        }
        // A lone opening fence with nothing after it is dropped.
        if !self.in_body && rest.trim_start().starts_with(FENCE) { String::new() } else { rest }
    }
}

#[cfg(test)]
mod tests {
    use super::FenceStripper;

    fn streamed(pieces: &[&str]) -> String {
        let mut stripper = FenceStripper::default();
        let mut out: String = pieces.iter().map(|p| stripper.push(p)).collect();
        out.push_str(&stripper.finish());
        out
    }

    #[test]
    fn strips_a_surrounding_fence() {
        assert_eq!(FenceStripper::strip("```python\ndef f():\n    return 1\n```"), "def f():\n    return 1\n");
        assert_eq!(FenceStripper::strip("```\nx = 1\n```\n"), "x = 1\n");
    }

    #[test]
    fn leaves_unfenced_code_alone() {
        assert_eq!(FenceStripper::strip("def f():\n    return 1\n"), "def f():\n    return 1\n");
        assert_eq!(FenceStripper::strip("x = `a`\ny = 2"), "x = `a`\ny = 2");
        assert_eq!(FenceStripper::strip(""), "");
    }

    #[test]
    fn every_split_of_a_fenced_answer_gives_the_same_code() {
        let answer = "```rust\nfn main() {\n    println!(\"hi\");\n}\n```";
        let expected = "fn main() {\n    println!(\"hi\");\n}\n";
        for a in 0..answer.len() {
            for b in a..answer.len() {
                if !answer.is_char_boundary(a) || !answer.is_char_boundary(b) {
                    continue;
                }
                assert_eq!(streamed(&[&answer[..a], &answer[a..b], &answer[b..]]), expected, "splits at {a}, {b}");
            }
        }
    }

    #[test]
    fn backticks_inside_the_body_survive() {
        assert_eq!(streamed(&["```\nlet s = \"`", "`\";\n`x`\n```"]), "let s = \"``\";\n`x`\n");
    }
}
