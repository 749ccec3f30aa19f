//! Text normalisation shared by the constitution, both moderation layers and
//! the streaming output guard: the one canonical form every text is judged in.
//!
//! Two stages, so that the known evasions read as the plain words:
//!
//! 1. **Per character** ([`fold`]): Unicode NFKC (width, ligatures, styled
//!    letters); full case folding (`İ`, `ß` → `ss`, final sigma); every
//!    non-ASCII character replaced by its UTS #39 confusable *skeleton*
//!    (Cyrillic `і` → `i`), which also drops default-ignorable code points
//!    (zero-width spaces and joiners, soft hyphen, bidi controls, variation
//!    selectors); combining marks dropped (`i̇`, accents, "zalgo" stacks); runs
//!    of whitespace collapsed to one ASCII space. ASCII letters are kept as
//!    they are (the skeleton would merge `rn` with `m`, which no reader does).
//! 2. **Per word** ([`normalize`]): letters spelled out with separators
//!    (`k.i.l.l`, `k i l l`, `k-i-l-l`: three or more single characters, each
//!    gap at most [`MAX_GAP`] separator characters) are joined into one word,
//!    and leetspeak digits inside a word that has a letter become letters
//!    (`k1ll` → `kill`, `h0w` → `how`; `2024` stays).
//!
//! Stage 1 works per NFKC *segment*: a segment starts at every character whose
//! full compatibility decomposition begins with a starter that never combines
//! with a preceding character (canonical combining class 0 and NFKC
//! quick-check `Yes`), so per-segment results equal those of the whole text.
//! [`normalize_mapped`] keeps, for every normalised char, the raw byte offset
//! of its segment, the points where the text may be cut and re-normalised in
//! two parts with the same result, and where the still-provisional tail
//! starts — what the streaming guard needs to release text safely.

use caseless::Caseless;
use unicode_normalization::char::{canonical_combining_class, decompose_compatible, is_combining_mark};
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// Most separator characters between two spelled-out letters (`k - i`).
pub const MAX_GAP: usize = 3;
/// Fewest single characters that count as a spelled-out word.
const MIN_SPELLED: usize = 3;

/// One normalised char and the raw byte offset of the segment it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedChar {
    /// The normalised char.
    pub ch: char,
    /// Byte offset, in the raw text, where the segment producing `ch` starts.
    pub raw_start: usize,
}

/// A place where the text may be cut: normalising the raw text before and
/// after it separately (carrying the whitespace state) gives the same chars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Index in [`Mapped::chars`] of the first char after the cut.
    pub index: usize,
    /// Raw byte offset of the cut.
    pub raw: usize,
}

/// A normalised text together with its map back to the raw text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped {
    /// The normalised text.
    pub text: String,
    /// One entry per char of `text`, in order; `raw_start` never decreases.
    pub chars: Vec<MappedChar>,
    /// Every safe cut, in order. The last one is [`Mapped::open`].
    pub cuts: Vec<Cut>,
    /// Where the provisional tail starts: chars from here on may still change
    /// when more text follows (an open segment, a word that may grow, a
    /// spelled-out word that may continue). Everything before it is final.
    pub open: Cut,
}

/// Normalises `text` for matching: both stages (see the module docs).
pub fn normalize(text: &str) -> String {
    normalize_mapped(text, false).text
}

/// Stage 1 only (per character), for patterns whose digits and symbols must
/// stay as written (card numbers, e-mail addresses).
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    walk(text, false, |ch, _| out.push(ch));
    out
}

/// Normalises a constitution phrase: [`normalize`], then trims the edge spaces.
pub fn normalize_phrase(phrase: &str) -> String {
    normalize(phrase).trim_matches(' ').to_owned()
}

/// Normalises `raw` with its map, cuts and provisional tail.
///
/// `after_space` says whether the normalised text preceding `raw` (text
/// already consumed by the caller) ends in a space, so that whitespace
/// collapsing continues exactly across a cut.
pub fn normalize_mapped(raw: &str, after_space: bool) -> Mapped {
    let mut folded = Vec::with_capacity(raw.len());
    let open_segment = walk(raw, after_space, |ch, raw_start| folded.push(MappedChar { ch, raw_start }));
    Words::new(&folded).render(open_segment)
}

/// Walks `raw` segment by segment, emitting `(folded char, segment start)`.
/// Returns the byte offset where the last (still open) segment starts.
fn walk(raw: &str, after_space: bool, mut emit: impl FnMut(char, usize)) -> usize {
    let mut state = after_space;
    let mut seg_start = 0;
    for (i, c) in raw.char_indices() {
        // A segment is cut after MAX_SEGMENT_BYTES even without a boundary (as Unicode's
        // stream-safe format does after 30 combining marks), so no input can make the
        // output window hold back, and re-normalise, an ever-growing segment.
        if i > seg_start && (starts_segment(c) || i - seg_start >= MAX_SEGMENT_BYTES) {
            emit_segment(&raw[seg_start..i], seg_start, &mut state, &mut emit);
            seg_start = i;
        }
    }
    if seg_start < raw.len() {
        emit_segment(&raw[seg_start..], seg_start, &mut state, &mut emit);
    }
    seg_start
}

/// 30 combining marks of up to 4 bytes each, plus their base.
const MAX_SEGMENT_BYTES: usize = 124;

fn emit_segment(segment: &str, start: usize, after_space: &mut bool, emit: &mut impl FnMut(char, usize)) {
    let mut push = |c: char| {
        if c.is_whitespace() {
            if !*after_space {
                emit(' ', start);
                *after_space = true;
            }
        } else {
            emit(c, start);
            *after_space = false;
        }
    };
    // NFKC leaves ASCII as it is: most of a model's answer skips the
    // normaliser's buffers.
    if segment.is_ascii() {
        segment.chars().for_each(|c| fold_char(c, &mut push));
    } else {
        segment.nfkc().for_each(|c| fold_char(c, &mut push));
    }
}

/// Case-folds one NFKC char and reads a non-ASCII one as its Latin look-alike.
///
/// The fold comes first (`İ` → `i`, `ß` → `ss`, `І` → `і` → `i`); a char whose
/// folded form has no ASCII skeleton but whose capital does (Cyrillic `В` folds
/// to `в`, which looks like `ʙ`, while `В` looks like `B`) takes its capital's.
fn fold_char(c: char, push: &mut impl FnMut(char)) {
    if c.is_ascii() {
        return push(c.to_ascii_lowercase());
    }
    let folded = skeleton_lower(std::iter::once(c).default_case_fold());
    if !folded.is_ascii() && c.is_uppercase() {
        let capital = skeleton_lower(std::iter::once(c));
        if !capital.is_empty() && capital.is_ascii() {
            return capital.chars().for_each(push);
        }
    }
    folded.chars().for_each(push)
}

/// UTS #39 skeleton of each non-ASCII char (ASCII kept as is), with
/// combining marks dropped and the result lowercased; a skeleton that is a
/// Latin small capital (Greek `τ` reads `ᴛ`) or kra (`κ` reads `ĸ`) reads as its letter.
fn skeleton_lower(chars: impl Iterator<Item = char>) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 4];
    for d in chars.nfd() {
        if d.is_ascii() {
            out.push(d.to_ascii_lowercase());
        } else if !is_combining_mark(d) {
            for e in unicode_security::skeleton(d.encode_utf8(&mut buf)) {
                if let Some(letter) = small_capital(e) {
                    out.push(letter);
                } else if !is_combining_mark(e) {
                    out.extend(e.to_lowercase());
                }
            }
        }
    }
    out
}

/// The ASCII letter a Latin small capital (or kra) stands for.
fn small_capital(c: char) -> Option<char> {
    const TABLE: [(char, char); 25] = [
        ('ᴀ', 'a'),
        ('ʙ', 'b'),
        ('ᴄ', 'c'),
        ('ᴅ', 'd'),
        ('ᴇ', 'e'),
        ('ꜰ', 'f'),
        ('ɢ', 'g'),
        ('ʜ', 'h'),
        ('ɪ', 'i'),
        ('ᴊ', 'j'),
        ('ᴋ', 'k'),
        ('ĸ', 'k'),
        ('ʟ', 'l'),
        ('ᴍ', 'm'),
        ('ɴ', 'n'),
        ('ᴏ', 'o'),
        ('ᴘ', 'p'),
        ('ʀ', 'r'),
        ('ꜱ', 's'),
        ('ᴛ', 't'),
        ('ᴜ', 'u'),
        ('ᴠ', 'v'),
        ('ᴡ', 'w'),
        ('ʏ', 'y'),
        ('ᴢ', 'z'),
    ];
    TABLE.iter().find(|(small, _)| *small == c).map(|(_, letter)| *letter)
}

/// Whether NFKC has a boundary before `c` (see the module docs).
fn starts_segment(c: char) -> bool {
    if c.is_ascii() {
        return true;
    }
    let mut first = None;
    decompose_compatible(c, |d| {
        first.get_or_insert(d);
    });
    let d = first.unwrap_or(c);
    canonical_combining_class(d) == 0 && is_nfkc_quick(std::iter::once(d)) == IsNormalized::Yes
}

/// A run of folded chars: a word (alphanumeric) or the separators between words.
#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    word: bool,
}

impl Token {
    fn len(&self) -> usize {
        self.end - self.start
    }
    fn single(&self) -> bool {
        self.word && self.len() == 1
    }
}

/// Stage 2 over the folded chars.
struct Words<'a> {
    folded: &'a [MappedChar],
    tokens: Vec<Token>,
    /// `linked[k]`: token `k` is a short gap between two single-char words, so
    /// neither it nor the word after it may start a cut.
    linked: Vec<bool>,
}

impl<'a> Words<'a> {
    fn new(folded: &'a [MappedChar]) -> Self {
        let mut tokens: Vec<Token> = Vec::with_capacity(folded.len().min(64));
        for (i, c) in folded.iter().enumerate() {
            let word = c.ch.is_alphanumeric();
            match tokens.last_mut() {
                Some(t) if t.word == word => t.end = i + 1,
                _ => tokens.push(Token { start: i, end: i + 1, word }),
            }
        }
        let linked = (0..tokens.len())
            .map(|k| {
                let gap = tokens[k];
                !gap.word && gap.len() <= MAX_GAP && k > 0 && tokens[k - 1].single() && tokens.get(k + 1).is_some_and(Token::single)
            })
            .collect();
        Self { folded, tokens, linked }
    }

    /// Whether a cut may fall before token `k`.
    fn cuttable(&self, k: usize) -> bool {
        let first = self.tokens[k].start;
        let own_segment = first == 0 || self.folded[first - 1].raw_start != self.folded[first].raw_start;
        own_segment && !self.linked[k] && !(k > 0 && self.linked[k - 1])
    }

    /// The first token of the provisional tail (`tokens.len()` if none).
    fn open_token(&self, open_segment: usize) -> usize {
        let n = self.tokens.len();
        // Stage 1: the token holding the first char of the open segment.
        let first_open = self.folded.partition_point(|c| c.raw_start < open_segment);
        let mut k = self.tokens.partition_point(|t| t.end <= first_open);
        // Stage 2: a last word may grow; a short gap after a single char may link it to the next.
        if let Some(last) = self.tokens.last() {
            if last.word {
                k = k.min(n - 1);
            } else if n >= 2 && last.len() <= MAX_GAP && self.tokens[n - 2].single() {
                k = k.min(n - 2);
            }
        }
        while k > 0 && k < n && !self.cuttable(k) {
            k -= 1;
        }
        k
    }

    fn render(&self, open_segment: usize) -> Mapped {
        let open_token = self.open_token(open_segment);
        // Sized once: joining spelled-out letters only shortens the text.
        let mut mapped = Mapped {
            text: String::with_capacity(self.folded.iter().map(|c| c.ch.len_utf8()).sum()),
            chars: Vec::with_capacity(self.folded.len()),
            cuts: Vec::with_capacity(self.tokens.len() + 1),
            open: Cut::default(),
        };
        let mut k = 0;
        while k < self.tokens.len() {
            if self.cuttable(k) || k == open_token {
                let raw = self.folded[self.tokens[k].start].raw_start;
                let cut = Cut { index: mapped.chars.len(), raw };
                mapped.cuts.push(cut);
                if k == open_token {
                    mapped.open = cut;
                }
            }
            let spelled_end = self.spelled_out_end(k);
            if spelled_end > k {
                let letters: Vec<MappedChar> = (k..spelled_end).step_by(2).map(|w| self.folded[self.tokens[w].start]).collect();
                push_word(&mut mapped, &letters);
                k = spelled_end;
                continue;
            }
            let token = self.tokens[k];
            let chars = &self.folded[token.start..token.end];
            if token.word {
                push_word(&mut mapped, chars);
            } else {
                for c in chars {
                    mapped.text.push(c.ch);
                    mapped.chars.push(*c);
                }
            }
            k += 1;
        }
        if open_token >= self.tokens.len() {
            // The open segment produced no char (a collapsed space, an ignorable): all else is final.
            mapped.open = Cut { index: mapped.chars.len(), raw: open_segment };
            mapped.cuts.push(mapped.open);
        }
        mapped
    }

    /// If token `k` starts a spelled-out word (single chars joined by short
    /// gaps, at least [`MIN_SPELLED`] of them), the token index after its last letter.
    fn spelled_out_end(&self, k: usize) -> usize {
        if !self.tokens[k].single() {
            return k;
        }
        let mut end = k + 1;
        while end < self.tokens.len() && self.linked[end] {
            end += 2;
        }
        if (end - k).div_ceil(2) >= MIN_SPELLED {
            end
        } else {
            k
        }
    }
}

/// Appends one word, with leetspeak digits read as letters when it has a letter.
fn push_word(mapped: &mut Mapped, chars: &[MappedChar]) {
    let has_letter = chars.iter().any(|c| c.ch.is_alphabetic());
    for c in chars {
        let ch = if has_letter { leet(c.ch).unwrap_or(c.ch) } else { c.ch };
        mapped.text.push(ch);
        mapped.chars.push(MappedChar { ch, raw_start: c.raw_start });
    }
}

/// The letter a digit stands for in leetspeak.
fn leet(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '8' => 'b',
        '9' => 'g',
        _ => return None,
    })
}

#[cfg(test)]
#[path = "normalize_tests.rs"]
mod tests;
