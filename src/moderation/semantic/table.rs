//! A file of `f32` rows next to the model: the distilled table and the
//! embedded exemplars are kept this way, so a restart reads them instead of
//! running the model again. A file that does not match (other shape, cut
//! short, other magic) is ignored and written anew.

use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"STWTAB01";

/// The rows of a table file with exactly `rows` rows of `dim` floats.
pub fn read(path: &Path, rows: usize, dim: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    let (header, body) = body.split_at_checked(8)?;
    let r = u32::from_le_bytes(header.get(..4)?.try_into().ok()?) as usize;
    let d = u32::from_le_bytes(header.get(4..)?.try_into().ok()?) as usize;
    if r != rows || d != dim || body.len() != rows * dim * 4 {
        return None;
    }
    Some(body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Writes `data` (`rows` × `dim`) atomically: a temporary file, then a rename.
pub fn write(path: &Path, rows: usize, dim: usize, data: &[f32]) -> std::io::Result<()> {
    let tmp = path.with_extension("part");
    let mut bytes = Vec::with_capacity(16 + data.len() * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(rows as u32).to_le_bytes());
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
    data.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_reads_back_only_with_its_own_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        write(&path, 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]).unwrap();
        assert_eq!(read(&path, 2, 3), Some(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]));
        assert_eq!(read(&path, 3, 2), None);
        std::fs::write(&path, b"STWTAB01\x02\0\0\0\x03\0\0\0short").unwrap();
        assert_eq!(read(&path, 2, 3), None);
    }
}
