//! Bit packing: a writer into a fixed buffer and a validating reader.
//!
//! Values are written least significant bit first, into bytes filled from their least
//! significant bit. The writer never grows its buffer and never panics: writing past its
//! limit sets an overflow flag (and writes nothing more), which [`BitWriter::finish`]
//! reports. The reader refuses to read past the end and [`BitReader::finish`] refuses
//! trailing bytes, so a forged section cannot be read as something it is not.
//!
//! Small numbers take few bits through [`BitWriter::write_sized`]: a 2-bit selector picks
//! one of four widths, the value follows in that width (a width of 0 writes only the
//! selector, for the value 0).

/// Four widths, smallest first, for [`BitWriter::write_sized`].
pub type Widths = [u32; 4];

/// Why a section could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitError {
    /// The bits ran out.
    #[error("section ends early")]
    Truncated,
    /// More than seven padding bits, or padding bits that are not zero.
    #[error("section has trailing bits")]
    Trailing,
    /// A value read is outside what it may be.
    #[error("section value out of range: {0}")]
    OutOfRange(&'static str),
}

/// A place to go back to ([`BitWriter::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    bit: usize,
    overflow: bool,
}

/// Writes bits into a borrowed buffer, up to a limit.
#[derive(Debug)]
pub struct BitWriter<'a> {
    buf: &'a mut [u8],
    bit: usize,
    limit: usize,
    /// Bytes the limit reaches into (`limit` rounded up to bytes): never written past.
    limit_bytes: usize,
    overflow: bool,
}

impl<'a> BitWriter<'a> {
    /// A writer of at most `limit_bits` bits (and at most the buffer's) into `buf`.
    pub fn new(buf: &'a mut [u8], limit_bits: usize) -> Self {
        let limit = limit_bits.min(buf.len() * 8);
        Self {
            buf,
            bit: 0,
            limit,
            limit_bytes: limit.div_ceil(8),
            overflow: false,
        }
    }

    /// Writes the low `count` bits of `value` (`count` at most 64).
    ///
    /// The common case (at most 56 bits, landing in one 8-byte word inside the limit) is
    /// a few instructions and inlined; the rest goes byte by byte.
    #[inline]
    pub fn write_bits(&mut self, value: u64, count: u32) {
        let byte = self.bit / 8;
        // The word keeps the bits already written below the position in its first byte;
        // everything above what is written comes out zero, as the byte-wise path leaves it.
        if count <= 56
            && !self.overflow
            && self.bit + count as usize <= self.limit
            && byte + 8 <= self.limit_bytes
            && let Some(word) = self.buf.get_mut(byte..byte + 8)
        {
            let offset = (self.bit % 8) as u32;
            let kept = u64::from(word[0]) & ((1u64 << offset) - 1);
            let bits = (value & ((1u64 << count) - 1)) << offset;
            word.copy_from_slice(&(kept | bits).to_le_bytes());
            self.bit += count as usize;
            return;
        }
        self.write_bits_bytewise(value, count);
    }

    #[cold]
    fn write_bits_bytewise(&mut self, value: u64, count: u32) {
        if count == 0 || self.overflow {
            return;
        }
        if count > 64 || self.bit + count as usize > self.limit {
            self.overflow = true;
            return;
        }
        let mut value = if count == 64 {
            value
        } else {
            value & ((1u64 << count) - 1)
        };
        let mut remaining = count;
        while remaining > 0 {
            let byte = self.bit / 8;
            let offset = (self.bit % 8) as u32;
            let take = (8 - offset).min(remaining);
            if offset == 0 {
                self.buf[byte] = 0;
            }
            let part = (value & ((1u64 << take) - 1)) as u8;
            self.buf[byte] |= part << offset;
            value >>= take;
            remaining -= take;
            self.bit += take as usize;
        }
    }

    /// Writes one bit.
    #[inline]
    pub fn write_bool(&mut self, value: bool) {
        self.write_bits(u64::from(value), 1);
    }

    /// Writes `value` in the smallest of `widths` it fits, after a 2-bit selector. A value
    /// too big for the largest width overflows the writer.
    pub fn write_sized(&mut self, value: u64, widths: &Widths) {
        match widths.iter().position(|&w| w >= 64 || value < (1u64 << w)) {
            Some(selector) => {
                self.write_bits(selector as u64, 2);
                self.write_bits(value, widths[selector]);
            }
            None => self.fail(),
        }
    }

    /// [`BitWriter::write_sized`] of a signed value (zigzag: small magnitudes stay small).
    pub fn write_sized_signed(&mut self, value: i64, widths: &Widths) {
        self.write_sized(zigzag(value), widths);
    }

    /// Writes whole bytes (at any bit offset).
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_bits(u64::from(b), 8);
        }
    }

    /// Marks the writer as overflowed: what it holds must not be sent.
    pub fn fail(&mut self) {
        self.overflow = true;
    }

    /// Whether something did not fit (or [`BitWriter::fail`] was called).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Bits written so far.
    pub fn bits(&self) -> usize {
        self.bit
    }

    /// The limit, in bits.
    pub fn capacity_bits(&self) -> usize {
        self.limit
    }

    /// Where the writer is now.
    pub fn mark(&self) -> Mark {
        Mark {
            bit: self.bit,
            overflow: self.overflow,
        }
    }

    /// Goes back to `mark`, forgetting what was written since (and any overflow since).
    pub fn rewind(&mut self, mark: Mark) {
        self.bit = mark.bit.min(self.bit);
        self.overflow = mark.overflow;
        let offset = self.bit % 8;
        if offset != 0 {
            self.buf[self.bit / 8] &= (1u8 << offset) - 1;
        }
    }

    /// Bytes used (the last one padded with zero bits), or `None` if something did not fit.
    pub fn finish(self) -> Option<usize> {
        (!self.overflow).then(|| self.bit.div_ceil(8))
    }
}

/// Up to [`BitString::MAX_BITS`] bits written once ([`BitString::capture`]) and copied
/// into writers as often as wanted ([`BitWriter::write_string`]): how the server writes
/// an entity's update once for every client that needs the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitString {
    /// The bits, the first written lowest; nothing above `len`.
    bits: u128,
    len: u32,
}

impl BitString {
    /// The most bits a string holds.
    pub const MAX_BITS: u32 = 128;

    /// What `write` writes, if it is at most [`BitString::MAX_BITS`] bits (`None`: more,
    /// or `write` failed the writer).
    pub fn capture(write: impl FnOnce(&mut BitWriter)) -> Option<Self> {
        let mut buf = [0u8; 16];
        let mut writer = BitWriter::new(&mut buf, Self::MAX_BITS as usize);
        write(&mut writer);
        if writer.overflowed() {
            return None;
        }
        let len = writer.bits() as u32;
        let bits = u128::from_le_bytes(buf);
        // A rewind may leave bits above the end; they are not part of the string.
        let bits = if len == Self::MAX_BITS {
            bits
        } else {
            bits & ((1u128 << len) - 1)
        };
        Some(Self { bits, len })
    }

    /// Its length in bits.
    pub fn bits(&self) -> usize {
        self.len as usize
    }
}

impl BitWriter<'_> {
    /// Writes `string`'s bits, as the writer it was captured from wrote them.
    #[inline]
    pub fn write_string(&mut self, string: &BitString) {
        let (mut bits, mut left) = (string.bits, string.len);
        while left > 0 {
            let count = left.min(56);
            self.write_bits(bits as u64, count);
            bits >>= count;
            left -= count;
        }
    }
}

/// Reads bits from a slice, refusing to read past it.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    buf: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    /// A reader of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, bit: 0 }
    }

    /// Reads `count` bits (at most 64).
    pub fn read_bits(&mut self, count: u32) -> Result<u64, BitError> {
        if count > 64 {
            return Err(BitError::OutOfRange("bit count"));
        }
        if self.bit + count as usize > self.buf.len() * 8 {
            return Err(BitError::Truncated);
        }
        let byte = self.bit / 8;
        let offset = (self.bit % 8) as u32;
        // Fast path: the bits lie in one 8-byte word of the buffer.
        if count <= 56
            && let Some(word) = self.buf.get(byte..byte + 8)
            && let Ok(bytes) = <[u8; 8]>::try_from(word)
        {
            self.bit += count as usize;
            return Ok((u64::from_le_bytes(bytes) >> offset) & ((1u64 << count) - 1));
        }
        let mut value = 0u64;
        let mut done = 0u32;
        while done < count {
            let byte = self.buf[self.bit / 8];
            let offset = (self.bit % 8) as u32;
            let take = (8 - offset).min(count - done);
            let part = (u64::from(byte) >> offset) & ((1u64 << take) - 1);
            value |= part << done;
            done += take;
            self.bit += take as usize;
        }
        Ok(value)
    }

    /// Reads one bit.
    pub fn read_bool(&mut self) -> Result<bool, BitError> {
        Ok(self.read_bits(1)? == 1)
    }

    /// Reads what [`BitWriter::write_sized`] wrote with the same widths.
    pub fn read_sized(&mut self, widths: &Widths) -> Result<u64, BitError> {
        let selector = self.read_bits(2)? as usize;
        self.read_bits(widths[selector])
    }

    /// Reads what [`BitWriter::write_sized_signed`] wrote with the same widths.
    pub fn read_sized_signed(&mut self, widths: &Widths) -> Result<i64, BitError> {
        Ok(unzigzag(self.read_sized(widths)?))
    }

    /// [`BitReader::read_sized`] of a value that must fit a `u32`.
    pub fn read_sized_u32(&mut self, widths: &Widths) -> Result<u32, BitError> {
        u32::try_from(self.read_sized(widths)?).map_err(|_| BitError::OutOfRange("over u32"))
    }

    /// Reads `out.len()` whole bytes.
    pub fn read_bytes(&mut self, out: &mut [u8]) -> Result<(), BitError> {
        for b in out {
            *b = self.read_bits(8)? as u8;
        }
        Ok(())
    }

    /// Bits not read yet.
    pub fn remaining_bits(&self) -> usize {
        self.buf.len() * 8 - self.bit
    }

    /// Checks that only the last byte's zero padding is left.
    pub fn finish(mut self) -> Result<(), BitError> {
        let left = self.remaining_bits();
        if left >= 8 || self.read_bits(left as u32)? != 0 {
            return Err(BitError::Trailing);
        }
        Ok(())
    }
}

/// Bits `value` takes through [`BitWriter::write_sized`] (`None`: too big).
pub fn sized_bits(value: u64, widths: &Widths) -> Option<u32> {
    widths
        .iter()
        .find(|&&w| w >= 64 || value < (1u64 << w))
        .map(|w| 2 + w)
}

/// Maps signed to unsigned so that small magnitudes stay small: 0, -1, 1, -2... → 0, 1, 2, 3...
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// The default entity coding: the state's bincode bytes, whole, whatever the baseline.
pub fn write_whole<T: serde::Serialize>(value: &T, out: &mut BitWriter) {
    let mut buf = [0u8; 255];
    match bincode::serde::encode_into_slice(value, &mut buf, bincode::config::standard()) {
        Ok(len) => {
            out.write_bits(len as u64, 8);
            out.write_bytes(&buf[..len]);
        }
        Err(_) => out.fail(),
    }
}

/// Reads what [`write_whole`] wrote.
pub fn read_whole<T: serde::de::DeserializeOwned>(input: &mut BitReader) -> Result<T, BitError> {
    let len = input.read_bits(8)? as usize;
    let mut buf = [0u8; 255];
    input.read_bytes(&mut buf[..len])?;
    let config = bincode::config::standard().with_limit::<1024>();
    match bincode::serde::decode_from_slice::<T, _>(&buf[..len], config) {
        Ok((value, used)) if used == len => Ok(value),
        _ => Err(BitError::OutOfRange("entity bytes")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const W: Widths = [0, 3, 8, 32];

    /// A seeded xorshift64 (no dependency for a test's random bits).
    pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn values_of_every_width_round_trip() {
        let mut buf = [0xffu8; 64];
        let mut w = BitWriter::new(&mut buf, 512);
        w.write_bits(0b101, 3);
        w.write_bits(u64::MAX, 64);
        w.write_bool(true);
        w.write_sized(0, &W);
        w.write_sized(5, &W);
        w.write_sized(200, &W);
        w.write_sized(70_000, &W);
        w.write_sized_signed(-3, &W);
        w.write_bytes(&[1, 2, 255]);
        let bits = w.bits();
        assert_eq!(bits, 3 + 64 + 1 + 2 + 5 + 10 + 34 + 5 + 24);
        let len = w.finish().expect("fits");
        assert_eq!(len, bits.div_ceil(8));
        let mut r = BitReader::new(&buf[..len]);
        assert_eq!(r.read_bits(3), Ok(0b101));
        assert_eq!(r.read_bits(64), Ok(u64::MAX));
        assert_eq!(r.read_bool(), Ok(true));
        assert_eq!(r.read_sized(&W), Ok(0));
        assert_eq!(r.read_sized(&W), Ok(5));
        assert_eq!(r.read_sized(&W), Ok(200));
        assert_eq!(r.read_sized(&W), Ok(70_000));
        assert_eq!(r.read_sized_signed(&W), Ok(-3));
        let mut bytes = [0u8; 3];
        r.read_bytes(&mut bytes).expect("bytes");
        assert_eq!(bytes, [1, 2, 255]);
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn the_limit_is_never_passed_and_overflow_is_reported() {
        let mut buf = [0u8; 4];
        let mut w = BitWriter::new(&mut buf, 20);
        w.write_bits(1, 16);
        w.write_bits(1, 5);
        assert!(w.overflowed());
        assert_eq!(w.bits(), 16);
        assert_eq!(w.finish(), None);
        let mut w = BitWriter::new(&mut buf, 1000);
        assert_eq!(w.capacity_bits(), 32, "the buffer bounds the limit");
        w.write_sized(u64::from(u32::MAX) + 1, &W);
        assert!(w.overflowed(), "too big for the widths");
    }

    #[test]
    fn rewinding_forgets_what_was_written_and_its_overflow() {
        let mut buf = [0u8; 2];
        let mut w = BitWriter::new(&mut buf, 16);
        w.write_bits(0b1, 1);
        let mark = w.mark();
        w.write_bits(0x7f, 7);
        w.write_bits(0xffff, 16);
        assert!(w.overflowed());
        w.rewind(mark);
        assert!(!w.overflowed());
        w.write_bits(0, 3);
        assert_eq!(w.finish(), Some(1));
        assert_eq!(buf[0], 0b1, "the rewound bits are cleared");
    }

    #[test]
    fn reading_past_the_end_or_leaving_bytes_is_refused() {
        let buf = [0xffu8, 0x01];
        let mut r = BitReader::new(&buf);
        assert_eq!(r.read_bits(8), Ok(0xff));
        assert_eq!(r.read_bits(9), Err(BitError::Truncated));
        assert_eq!(BitReader::new(&buf).finish(), Err(BitError::Trailing));
        let mut r = BitReader::new(&buf[1..]);
        assert_eq!(r.read_bits(1), Ok(1));
        assert_eq!(r.finish(), Ok(()));
        let mut r = BitReader::new(&[0b10]);
        assert_eq!(r.read_bits(1), Ok(0));
        assert_eq!(r.finish(), Err(BitError::Trailing), "padding must be zero");
    }

    /// Word-at-a-time writes and reads agree with a bit-by-bit model, at every offset,
    /// near the end of the buffer and of a limit that is not a whole byte, over a buffer
    /// that held other bytes.
    #[test]
    fn word_writes_and_reads_match_bit_by_bit_packing() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let limit = 8 + (next() % 500) as usize;
            let mut buf = [0xa5u8; 64];
            let mut w = BitWriter::new(&mut buf, limit);
            let mut model: Vec<bool> = Vec::new();
            let mut written: Vec<(u64, u32)> = Vec::new();
            loop {
                let count = (next() % 65) as u32;
                let value = next();
                if model.len() + count as usize > limit {
                    break;
                }
                w.write_bits(value, count);
                model.extend((0..count).map(|i| value >> i & 1 == 1));
                written.push((value, count));
            }
            assert!(!w.overflowed());
            let len = w.finish().expect("within the limit");
            let mut expected = vec![0u8; model.len().div_ceil(8)];
            for (i, &bit) in model.iter().enumerate() {
                expected[i / 8] |= u8::from(bit) << (i % 8);
            }
            assert_eq!(&buf[..len], &expected[..]);
            let mut r = BitReader::new(&buf[..len]);
            for &(value, count) in &written {
                let mask = if count == 64 {
                    u64::MAX
                } else {
                    (1 << count) - 1
                };
                assert_eq!(r.read_bits(count), Ok(value & mask));
            }
            assert_eq!(r.finish(), Ok(()));
        }
    }

    /// A captured string written at any offset puts the same bits there as writing
    /// directly would; more than 128 bits is not a string.
    #[test]
    fn a_captured_string_writes_what_its_writes_would() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..300 {
            let writes: Vec<(u64, u32)> = (0..next() % 6)
                .map(|_| (next(), (next() % 40) as u32))
                .collect();
            let total: u32 = writes.iter().map(|&(_, c)| c).sum();
            let write_all = |w: &mut BitWriter| {
                for &(value, count) in &writes {
                    w.write_bits(value, count);
                }
            };
            let string = BitString::capture(write_all);
            if total > BitString::MAX_BITS {
                assert_eq!(string, None, "{total} bits");
                continue;
            }
            let string = string.expect("fits");
            assert_eq!(string.bits(), total as usize);
            let lead = (next() % 60) as u32;
            let (mut direct, mut copied) = ([0xa5u8; 40], [0x5au8; 40]);
            let mut w = BitWriter::new(&mut direct, 320);
            w.write_bits(0b1011, lead);
            write_all(&mut w);
            let direct_len = w.finish().expect("fits");
            let mut w = BitWriter::new(&mut copied, 320);
            w.write_bits(0b1011, lead);
            w.write_string(&string);
            assert_eq!(w.finish(), Some(direct_len));
            assert_eq!(direct[..direct_len], copied[..direct_len]);
        }
    }

    #[test]
    fn zigzag_keeps_small_magnitudes_small() {
        for v in [-3i64, -1, 0, 1, 2, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(sized_bits(5, &W), Some(5));
        assert_eq!(sized_bits(0, &W), Some(2));
    }
}
