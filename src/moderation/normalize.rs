//! Text normalisation shared by the constitution and the moderator.
//!
//! Every text is matched in one canonical form: Unicode NFKC, then
//! `char::to_lowercase`, then every run of whitespace collapsed to one ASCII
//! space. Phrases are normalised the same way (and trimmed) when the automaton
//! is built, so "BUILD\u{3000}a  Bomb" and "ｂｕｉｌｄ a bomb" both read
//! "build a bomb".
//!
//! NFKC is applied per *segment*: a segment starts at every character whose
//! full compatibility decomposition begins with a starter that never combines
//! with a preceding character (canonical combining class 0 and NFKC
//! quick-check `Yes`). Normalisation never crosses such a boundary, so the
//! per-segment result equals NFKC of the whole text — including compositions
//! across characters such as `e` + U+0301 or conjoining Hangul jamo. The
//! segmentation also gives the streaming guard a map from every normalised
//! char back to the raw byte offset of the segment it came from.

use unicode_normalization::char::{canonical_combining_class, decompose_compatible};
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// One normalised char and the raw byte offset of the segment it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedChar {
    /// The normalised char.
    pub ch: char,
    /// Byte offset, in the raw text, where the segment producing `ch` starts.
    pub raw_start: usize,
}

/// A normalised text together with its map back to the raw text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped {
    /// The normalised text.
    pub text: String,
    /// One entry per char of `text`, in order; `raw_start` never decreases.
    pub chars: Vec<MappedChar>,
    /// Raw byte offset where the last segment starts (0 for empty text). The
    /// last segment is still *open*: a following combining character may
    /// change its normalisation.
    pub open_segment_start: usize,
}

impl Mapped {
    /// Number of normalised chars produced by closed segments, i.e. chars that
    /// no later input can change.
    pub fn closed_chars(&self) -> usize {
        self.chars.partition_point(|c| c.raw_start < self.open_segment_start)
    }
}

/// Normalises `text` (NFKC, lowercase, whitespace runs → one space).
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    walk(text, false, |ch, _| out.push(ch));
    out
}

/// Normalises a constitution phrase: [`normalize`], then trims the edge spaces.
pub fn normalize_phrase(phrase: &str) -> String {
    normalize(phrase).trim_matches(' ').to_owned()
}

/// Normalises `raw` and maps every normalised char back to its raw segment.
///
/// `after_space` says whether the normalised text preceding `raw` (text
/// already consumed by the caller) ends in a space, so that whitespace
/// collapsing continues exactly across the cut.
pub fn normalize_mapped(raw: &str, after_space: bool) -> Mapped {
    let mut mapped = Mapped::default();
    mapped.open_segment_start = walk(raw, after_space, |ch, raw_start| {
        mapped.text.push(ch);
        mapped.chars.push(MappedChar { ch, raw_start });
    });
    mapped
}

/// Walks `raw` segment by segment, emitting `(normalised char, segment start)`.
/// Returns the byte offset where the last segment starts.
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
    for c in segment.nfkc().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            if !*after_space {
                emit(' ', start);
                *after_space = true;
            }
        } else {
            emit(c, start);
            *after_space = false;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole-string NFKC + lowercase + collapse, the definition we must equal.
    fn reference(text: &str) -> String {
        let mut out = String::new();
        for c in text.nfkc().flat_map(char::to_lowercase) {
            if !c.is_whitespace() {
                out.push(c);
            } else if !out.ends_with(' ') {
                out.push(' ');
            }
        }
        out
    }

    #[test]
    fn folds_case_width_and_whitespace() {
        assert_eq!(normalize("BUILD   a\u{3000}Bomb"), "build a bomb");
        assert_eq!(normalize("ｂｕｉｌｄ a bomb"), "build a bomb");
        assert_eq!(normalize("\t\n x \u{a0}\u{2003} y "), " x y ");
        assert_eq!(normalize_phrase("  Make A\tBomb  "), "make a bomb");
        assert_eq!(normalize_phrase(" \u{3000} "), "");
    }

    #[test]
    fn segmented_nfkc_equals_whole_string_nfkc() {
        let samples = [
            "cafe\u{301} Cafe\u{301}",
            "\u{1100}\u{1161}\u{11a8} 한국어",
            "ﬁne ﬃ ½ ㎒ Ⅻ ﷺ",
            "a\u{323}\u{302}b A\u{30a}",
            "ｶﾞｷﾞ ﾊﾟ",
            "\u{301}leading mark, İstanbul, ΣΑΣ",
            "日本語のテキスト 🎉 done",
        ];
        for s in samples {
            assert_eq!(normalize(s), reference(s), "sample {s:?}");
        }
    }

    #[test]
    fn map_points_at_segment_starts() {
        let m = normalize_mapped("Xe\u{301}  ｂ", false);
        let got: Vec<(char, usize)> = m.chars.iter().map(|c| (c.ch, c.raw_start)).collect();
        assert_eq!(got, vec![('x', 0), ('é', 1), (' ', 4), ('b', 6)]);
        assert_eq!(m.text, "xé b");
        assert_eq!(m.open_segment_start, 6);
        assert_eq!(m.closed_chars(), 3);
        // Whitespace collapsing continues across a cut.
        assert_eq!(normalize_mapped("  x", true).text, "x");
        assert_eq!(normalize_mapped("", false), Mapped::default());
    }
}
