//! Cuts a streamed answer into the pieces the semantic layer judges.
//!
//! A piece ends at a sentence end (`.`, `!`, `?` or `…` followed by
//! whitespace, or a newline) or when it reaches the window (the
//! `moderation.output_window_chars` setting), whichever comes first.

/// Collects released output and says when pieces are ready to judge.
#[derive(Debug)]
pub struct SentenceBuffer {
    window: usize,
    /// Text of the piece being collected.
    current: String,
    current_chars: usize,
    /// The last char was a sentence-ending mark: whitespace next ends the piece.
    after_terminal: bool,
}

impl SentenceBuffer {
    pub fn new(window: usize) -> Self {
        Self { window, current: String::new(), current_chars: 0, after_terminal: false }
    }

    /// Adds released text; returns every piece it completed, in order.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        let mut ready = Vec::new();
        for c in text.chars() {
            self.current.push(c);
            self.current_chars += 1;
            let ends = c == '\n' || (self.after_terminal && c.is_whitespace()) || self.current_chars >= self.window;
            self.after_terminal = matches!(c, '.' | '!' | '?' | '…');
            if ends {
                let piece = std::mem::take(&mut self.current);
                self.current_chars = 0;
                if !piece.trim().is_empty() {
                    ready.push(piece);
                }
            }
        }
        ready
    }

    /// End of the answer: the last, unfinished piece, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.current_chars = 0;
        Some(std::mem::take(&mut self.current)).filter(|piece| !piece.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_ends_at_a_sentence_end() {
        let mut b = SentenceBuffer::new(400);
        assert!(b.push("First part").is_empty());
        assert_eq!(b.push(" ends here. Sec"), ["First part ends here. "]);
        assert_eq!(b.push("ond one!\nThird. Fourth? "), ["Second one!\n", "Third. ", "Fourth? "]);
        assert!(b.push("Fifth is 3.5 units").is_empty());
        assert_eq!(b.finish().as_deref(), Some("Fifth is 3.5 units"));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn a_long_run_without_a_sentence_end_is_cut_at_the_window() {
        let mut b = SentenceBuffer::new(10);
        assert_eq!(b.push("abcdefghijklmnopqrst"), ["abcdefghij", "klmnopqrst"]);
        assert!(b.push("  ").is_empty());
        assert_eq!(b.finish(), None);
    }
}
