//! The constitution's phrases as one automaton, shared by the moderator
//! (input) and every output guard (streamed answers): matches, and the text
//! that could still grow into a match.

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};

use super::Hit;

/// The phrase automaton, shared by the moderator and every output guard.
#[derive(Debug)]
pub(super) struct PhraseIndex {
    pub(super) automaton: AhoCorasick,
    /// Automaton pattern id → category index.
    pub(super) phrase_category: Vec<usize>,
    /// One hit per category, in constitution order.
    pub(super) hits: Vec<Hit>,
    /// Length of the longest normalised phrase, in chars.
    longest_chars: usize,
    /// Every non-empty proper prefix of every normalised phrase: the text
    /// that could still grow into a match and so must be held back.
    prefixes: HashSet<String>,
}

impl PhraseIndex {
    /// The index of normalised `phrases`, each of the category at the same
    /// place in `phrase_category`; `hits` has one hit per category.
    pub(super) fn new(phrases: &[String], phrase_category: Vec<usize>, hits: Vec<Hit>) -> Result<Self, aho_corasick::BuildError> {
        let longest_chars = phrases.iter().map(|p| p.chars().count()).max().unwrap_or(0);
        let automaton = AhoCorasick::builder().match_kind(MatchKind::Standard).build(phrases)?;
        let prefixes = phrases.iter().flat_map(|p| p.char_indices().skip(1).map(move |(end, _)| p[..end].to_owned())).collect();
        Ok(Self { automaton, phrase_category, hits, longest_chars, prefixes })
    }

    /// The category of the first phrase match in normalised `text`, if any.
    pub(super) fn first_hit(&self, text: &str) -> Option<Hit> {
        let found = self.automaton.find(text)?;
        self.hit(self.phrase_category.get(found.pattern().as_usize()).copied())
    }

    /// The char index where the longest suffix of `text` that is a proper
    /// prefix of some phrase starts (`text.chars().count()` if there is none):
    /// everything before it can no longer be part of a match.
    pub(super) fn pending_start(&self, text: &str) -> usize {
        // Only the last `longest - 1` chars can begin a proper prefix.
        let first = text.char_indices().rev().take(self.longest_chars.saturating_sub(1)).last().map_or(text.len(), |(i, _)| i);
        let before = text[..first].chars().count();
        let mut candidates = text[first..].char_indices().map(|(i, _)| first + i).enumerate();
        match candidates.find(|&(_, start)| self.prefixes.contains(&text[start..])) {
            Some((k, _)) => before + k,
            None => before + text[first..].chars().count(),
        }
    }

    /// Length of the longest normalised phrase, in chars.
    pub(super) fn longest_chars(&self) -> usize {
        self.longest_chars
    }

    pub(super) fn hit(&self, category: Option<usize>) -> Option<Hit> {
        category.and_then(|i| self.hits.get(i)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(phrases: &[&str]) -> PhraseIndex {
        let phrases: Vec<String> = phrases.iter().map(|p| (*p).to_owned()).collect();
        PhraseIndex::new(&phrases, vec![0; phrases.len()], Vec::new()).unwrap()
    }

    #[test]
    fn pending_start_is_the_char_where_the_longest_suffix_that_could_grow_into_a_phrase_starts() {
        let index = index(&["kill him", "bomb"]);
        // "kill h" could become "kill him"; it starts at char 4 (after the multibyte "é").
        assert_eq!(index.pending_start("thé kill h"), 4);
        assert_eq!(index.pending_start("a bo"), 2);
        // Nothing that could grow into a phrase: the whole text is final.
        assert_eq!(index.pending_start("thé cat"), 7);
        assert_eq!(index.pending_start(""), 0);
        // A whole phrase is no proper prefix, but its last "b" could begin another.
        assert_eq!(index.pending_start("bomb"), 3);
        assert_eq!(index.pending_start("kill hi"), 0);
        // The last `longest - 1` (7) chars are looked at: "kill hi" is found at the window's start.
        assert_eq!(index.pending_start("xkill hi"), 1);
        assert_eq!(index.pending_start("kill hi!"), 8);
    }
}
