//! Little-endian cursor reading and writing over byte slices.
//!
//! Every netcode structure is a fixed little-endian layout. These two cursors are the only
//! place that indexes into raw bytes, so a short buffer is always an error value and never
//! a panic.

/// The buffer ended before the structure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer ended early: needed {needed} more bytes at offset {offset}")]
pub struct Truncated {
    /// Where the read or write started.
    pub offset: usize,
    /// How many bytes it wanted.
    pub needed: usize,
}

/// Reads little-endian values from a borrowed slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(Truncated {
                offset: self.pos,
                needed: n,
            });
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian u16.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian i32.
    pub fn i32(&mut self) -> Result<i32, Truncated> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// Writes little-endian values into a borrowed slice.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Appends `bytes`.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), Truncated> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(Truncated {
                offset: self.pos,
                needed: bytes.len(),
            });
        };
        self.buf[self.pos..end].copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> Result<(), Truncated> {
        self.bytes(&[v])
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> Result<(), Truncated> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> Result<(), Truncated> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian i32.
    pub fn i32(&mut self, v: i32) -> Result<(), Truncated> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> Result<(), Truncated> {
        self.bytes(&v.to_le_bytes())
    }
}
