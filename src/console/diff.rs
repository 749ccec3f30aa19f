//! A side-by-side line diff of two texts (the longest common subsequence of
//! their lines), for two versions of a constitution.

/// One row of a side-by-side diff: the line on each side (its 1-based number
/// and text), absent where the other side has a line of its own.
#[derive(Debug, PartialEq, Eq)]
pub struct Row<'a> {
    pub left: Option<(usize, &'a str)>,
    pub right: Option<(usize, &'a str)>,
}

impl Row<'_> {
    pub fn same(&self) -> bool {
        matches!((self.left, self.right), (Some((_, a)), Some((_, b))) if a == b)
    }
}

/// The rows of `before` against `after`.
pub fn side_by_side<'a>(before: &'a str, after: &'a str) -> Vec<Row<'a>> {
    let (a, b): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut rows) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            rows.push(Row { left: Some((i + 1, a[i])), right: Some((j + 1, b[j])) });
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            rows.push(Row { left: None, right: Some((j + 1, b[j])) });
            j += 1;
        } else {
            rows.push(Row { left: Some((i + 1, a[i])), right: None });
            i += 1;
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_kept_removed_and_added_are_placed_side_by_side() {
        let rows = side_by_side("a\nb\nc", "a\nc\nd");
        let shape: Vec<(Option<&str>, Option<&str>)> = rows.iter().map(|r| (r.left.map(|l| l.1), r.right.map(|r| r.1))).collect();
        assert_eq!(shape, [(Some("a"), Some("a")), (Some("b"), None), (Some("c"), Some("c")), (None, Some("d"))]);
        assert!(rows[0].same() && !rows[1].same());
        assert!(side_by_side("", "").is_empty());
    }
}
