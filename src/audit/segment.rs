//! The decision log's segment files: decisions as compact binary records, in checksummed blocks.
//!
//! A block holds the decisions recorded within one flush interval:
//!
//! ```text
//! "ADL1"  body length (u32 LE)  CRC-32 of the body (u32 LE)  body
//! body:   first decision's time (i64 LE, µs)  records (u32 LE)  record...
//! record: time − first time (zigzag varint)  decision id (16 bytes)
//!         subject (varint length, bytes)  conversation (varint 0 = none, else length + 1; bytes)
//!         purpose source consistency decision reason rule policy_version caller (words)
//!         revision (varint 0 = none, else revision + 1)  degraded (1 byte)
//!         trace id (varint length, bytes)
//! word:   an index into the block's list of that field's values; the index one past the end
//!         adds the value that follows (varint length, bytes); 255 is a value not listed
//! ```
//!
//! Every name is written as text once per block, so a segment is read the same by a later
//! version whatever the order of its enums, and a record is about 60 bytes. A block that is cut
//! short or fails its checksum (a crash in the middle of a write) ends the segment: what follows
//! it cannot be trusted and is counted, not read.

use crate::audit::{Decided, DecisionRecord};
use crate::policy::{Decision, Purpose, Reason, Source};

const MAGIC: &[u8; 4] = b"ADL1";
const HEADER: usize = 12;
/// A word that is not in the list: the value follows.
const UNLISTED: u8 = 255;
/// The consistencies a decision can be made at, the only ones a segment may name.
pub const CONSISTENCIES: [&str; 4] = [
    "minimize_latency",
    "at_least_as_fresh",
    "fully_consistent",
    "as_of",
];

/// The fields written as words, in record order.
const WORDS: usize = 8;

/// Builds one block in memory, a record at a time.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    body: Vec<u8>,
    records: u32,
    first_micros: i64,
    words: [Vec<Box<str>>; WORDS],
}

impl BlockBuilder {
    pub fn records(&self) -> u32 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Appends one decision.
    pub fn push(&mut self, decided: &Decided<'_>) {
        if self.records == 0 {
            self.body.clear();
            self.body
                .extend_from_slice(&decided.decided_at_micros.to_le_bytes());
            self.body.extend_from_slice(&[0; 4]);
            self.first_micros = decided.decided_at_micros;
            for list in &mut self.words {
                list.clear();
            }
        }
        self.records += 1;
        let delta = decided.decided_at_micros.wrapping_sub(self.first_micros);
        varint(&mut self.body, ((delta << 1) ^ (delta >> 63)) as u64);
        self.body.extend_from_slice(decided.decision_id.as_bytes());
        text(&mut self.body, decided.subject_id);
        match decided.conversation_id {
            None => self.body.push(0),
            Some(conversation) => {
                varint(&mut self.body, conversation.len() as u64 + 1);
                self.body.extend_from_slice(conversation.as_bytes());
            }
        }
        let words = [
            decided.purpose.as_str(),
            decided.source.as_str(),
            decided.consistency,
            decided.decision.as_str(),
            decided.reason.as_str(),
            decided.rule,
            decided.policy_version,
            decided.caller,
        ];
        for (list, value) in self.words.iter_mut().zip(words) {
            word(&mut self.body, list, value);
        }
        varint(
            &mut self.body,
            decided.revision.map_or(0, |revision| revision + 1),
        );
        self.body.push(u8::from(decided.degraded));
        text(&mut self.body, decided.trace_id);
    }

    /// The finished block (header and body), leaving the builder empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut body = std::mem::take(&mut self.body);
        body[8..12].copy_from_slice(&self.records.to_le_bytes());
        self.records = 0;
        let mut block = Vec::with_capacity(HEADER + body.len());
        block.extend_from_slice(MAGIC);
        block.extend_from_slice(&(body.len() as u32).to_le_bytes());
        block.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        block.append(&mut body);
        // The body's allocation is not kept: the next block starts small again.
        block
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn text(out: &mut Vec<u8>, value: &str) {
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

fn word(out: &mut Vec<u8>, list: &mut Vec<Box<str>>, value: &str) {
    if let Some(index) = list.iter().position(|listed| **listed == *value) {
        out.push(index as u8);
        return;
    }
    if list.len() < usize::from(UNLISTED) {
        out.push(list.len() as u8);
        list.push(value.into());
    } else {
        out.push(UNLISTED);
    }
    text(out, value);
}

/// What reading a segment found.
#[derive(Debug, Default, PartialEq)]
pub struct Segment {
    pub records: Vec<DecisionRecord>,
    /// Bytes after the last whole, intact block: a write a crash cut short, or damage.
    pub unreadable_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("a decision log block is malformed: {0}")]
pub struct Malformed(&'static str);

/// Reads every intact block of a segment file's bytes, in order, into rows.
pub fn read(bytes: &[u8]) -> Segment {
    let (decided, unreadable_bytes) = decode(bytes);
    Segment {
        records: decided.iter().map(Decided::to_record).collect(),
        unreadable_bytes,
    }
}

/// Reads every intact block of a segment file's bytes, in order, each decision borrowed from
/// the bytes (no allocation but the list); with the number of bytes after the last intact
/// block.
pub fn decode(mut bytes: &[u8]) -> (Vec<Decided<'_>>, u64) {
    let mut decided = Vec::new();
    while !bytes.is_empty() {
        match block(bytes, &mut decided) {
            Ok(length) => bytes = &bytes[length..],
            Err(_) => return (decided, bytes.len() as u64),
        }
    }
    (decided, 0)
}

/// Reads the block at the start of `bytes` into `decided` (all of it or none), and returns its
/// length.
fn block<'a>(bytes: &'a [u8], decided: &mut Vec<Decided<'a>>) -> Result<usize, Malformed> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(Malformed("no block header"));
    }
    let length = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let checksum = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let body = bytes
        .get(HEADER..HEADER + length)
        .ok_or(Malformed("the block is cut short"))?;
    if crc32fast::hash(body) != checksum {
        return Err(Malformed("the checksum does not match"));
    }
    let mut reader = Reader { bytes: body };
    let first_micros = i64::from_le_bytes(reader.take(8)?.try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(reader.take(4)?.try_into().expect("4 bytes"));
    let mut words: [Vec<&'a str>; WORDS] = Default::default();
    let start = decided.len();
    for _ in 0..count {
        match reader.record(first_micros, &mut words) {
            Ok(record) => decided.push(record),
            Err(error) => {
                decided.truncate(start);
                return Err(error);
            }
        }
    }
    if !reader.bytes.is_empty() {
        decided.truncate(start);
        return Err(Malformed("bytes after the last record"));
    }
    Ok(HEADER + length)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < length {
            return Err(Malformed("a record is cut short"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0_u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed("a number is too long"))
    }

    fn text(&mut self, length: u64) -> Result<&'a str, Malformed> {
        let length = usize::try_from(length).map_err(|_| Malformed("a text is too long"))?;
        std::str::from_utf8(self.take(length)?).map_err(|_| Malformed("a text is not UTF-8"))
    }

    fn word(&mut self, list: &mut Vec<&'a str>) -> Result<&'a str, Malformed> {
        let index = self.take(1)?[0];
        if let Some(listed) = list.get(usize::from(index)) {
            return Ok(listed);
        }
        if index != UNLISTED && usize::from(index) != list.len() {
            return Err(Malformed("a word is out of order"));
        }
        let length = self.varint()?;
        let value = self.text(length)?;
        if index != UNLISTED {
            list.push(value);
        }
        Ok(value)
    }

    /// A name of the vocabulary, as its `from_name` parses it.
    fn name<T>(
        &mut self,
        list: &mut Vec<&'a str>,
        from_name: fn(&str) -> Option<T>,
        field: &'static str,
    ) -> Result<T, Malformed> {
        from_name(self.word(list)?).ok_or(Malformed(field))
    }

    fn record(
        &mut self,
        first_micros: i64,
        words: &mut [Vec<&'a str>; WORDS],
    ) -> Result<Decided<'a>, Malformed> {
        let zigzag = self.varint()?;
        let delta = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
        let decided_at_micros = first_micros.wrapping_add(delta);
        let decision_id = uuid::Uuid::from_slice(self.take(16)?).expect("16 bytes");
        let length = self.varint()?;
        let subject_id = self.text(length)?;
        let conversation_id = match self.varint()? {
            0 => None,
            length => Some(self.text(length - 1)?),
        };
        let [
            purpose,
            source,
            consistency,
            decision,
            reason,
            rule,
            policy_version,
            caller,
        ] = words;
        let purpose = self.name(purpose, Purpose::from_name, "purpose")?;
        let source = self.name(source, Source::from_name, "source")?;
        let consistency = self.name(consistency, consistency_name, "consistency")?;
        let decision = self.name(decision, Decision::from_name, "decision")?;
        let reason = self.name(reason, Reason::from_name, "reason")?;
        let rule = self.word(rule)?;
        let policy_version = self.word(policy_version)?;
        let caller = self.word(caller)?;
        let revision = self.varint()?.checked_sub(1);
        let degraded = match self.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(Malformed("degraded")),
        };
        let length = self.varint()?;
        let trace_id = self.text(length)?;
        Ok(Decided {
            decided_at_micros,
            decision_id,
            subject_id,
            purpose,
            conversation_id,
            source,
            consistency,
            decision,
            reason,
            rule,
            policy_version,
            revision,
            degraded,
            caller,
            trace_id,
        })
    }
}

/// One of the [`CONSISTENCIES`], as the `&'static str` a decision carries.
pub fn consistency_name(name: &str) -> Option<&'static str> {
    CONSISTENCIES.into_iter().find(|known| *known == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decision number `index` of the tests, each field going through its values.
    fn sample<'a>(index: u32, subject: &'a str, caller: &'a str) -> Decided<'a> {
        Decided {
            decided_at_micros: 1_800_000_000_000_000 + i64::from(index % 7) * 1_000 - 3_000,
            decision_id: uuid::Uuid::now_v7(),
            subject_id: subject,
            purpose: Purpose::ALL[index as usize % Purpose::ALL.len()],
            conversation_id: index.is_multiple_of(2).then_some("conversation-1"),
            source: Source::ALL[index as usize % Source::ALL.len()],
            consistency: CONSISTENCIES[index as usize % 4],
            decision: if index.is_multiple_of(3) {
                Decision::Deny
            } else {
                Decision::Allow
            },
            reason: Reason::ALL[index as usize % Reason::ALL.len()],
            rule: if index.is_multiple_of(2) { "T3" } else { "M1" },
            policy_version: "2026-01-01",
            revision: (!index.is_multiple_of(5)).then_some(u64::from(index) * 1_000_003),
            degraded: index.is_multiple_of(5),
            caller,
            trace_id: if index.is_multiple_of(4) {
                "0af7651916cd43dd8448eb211c80319c"
            } else {
                ""
            },
        }
    }

    /// Appends sample `index` to `builder`, and returns the row it should read back as.
    fn push_sample(builder: &mut BlockBuilder, index: u32, caller: &str) -> DecisionRecord {
        let subject = format!("subject-{index}");
        let decided = sample(index, &subject, caller);
        builder.push(&decided);
        decided.to_record()
    }

    #[test]
    fn blocks_read_back_as_written() {
        let mut builder = BlockBuilder::default();
        let mut bytes = Vec::new();
        let mut wanted = Vec::new();
        for block in 0..3 {
            for index in 0..100 {
                wanted.push(push_sample(&mut builder, block * 100 + index, "gateway"));
            }
            assert_eq!(builder.records(), 100);
            bytes.extend(builder.finish());
            assert!(builder.is_empty());
        }
        // Under 72 bytes a decision (the row it becomes is about 250).
        assert!(bytes.len() < 300 * 72, "{} bytes", bytes.len());
        let segment = read(&bytes);
        assert_eq!(segment.unreadable_bytes, 0);
        assert_eq!(segment.records, wanted);
    }

    #[test]
    fn more_values_than_a_list_holds_are_written_out() {
        let callers: Vec<String> = (0..300).map(|index| format!("caller-{index}")).collect();
        let mut builder = BlockBuilder::default();
        let mut wanted = Vec::new();
        for (index, caller) in callers.iter().chain(callers.iter()).enumerate() {
            wanted.push(push_sample(&mut builder, index as u32, caller));
        }
        assert_eq!(read(&builder.finish()).records, wanted);
    }

    /// A crash mid-write leaves a block cut short; damage fails a checksum. Either ends the
    /// segment at the last intact block, and what follows is counted.
    #[test]
    fn a_cut_or_damaged_block_ends_the_segment() {
        let mut builder = BlockBuilder::default();
        let mut blocks = Vec::new();
        for block in 0..3 {
            for index in 0..10 {
                push_sample(&mut builder, block * 10 + index, "gateway");
            }
            blocks.push(builder.finish());
        }
        let whole: Vec<u8> = blocks.concat();
        let first_two = blocks[0].len() + blocks[1].len();
        for cut in [first_two + 1, first_two + HEADER, whole.len() - 1] {
            let segment = read(&whole[..cut]);
            assert_eq!(segment.records.len(), 20, "cut at {cut}");
            assert_eq!(segment.unreadable_bytes, (cut - first_two) as u64);
        }
        let mut damaged = whole.clone();
        damaged[blocks[0].len() + HEADER + 20] ^= 1;
        let segment = read(&damaged);
        assert_eq!(segment.records.len(), 10);
        assert_eq!(
            segment.unreadable_bytes,
            (whole.len() - blocks[0].len()) as u64
        );
        assert_eq!(read(b"not a segment").records, Vec::new());
    }

    /// A block whose checksum holds but whose records do not parse (written by a bug, or
    /// forged) is refused whole, never half read.
    #[test]
    fn a_block_with_a_valid_checksum_and_bad_records_is_refused_whole() {
        let mut builder = BlockBuilder::default();
        for index in 0..3 {
            push_sample(&mut builder, index, "gateway");
        }
        let mut block = builder.finish();
        // Claim one record more than the body holds, and fix the checksum.
        let count = u32::from_le_bytes(block[HEADER + 8..HEADER + 12].try_into().unwrap());
        block[HEADER + 8..HEADER + 12].copy_from_slice(&(count + 1).to_le_bytes());
        let checksum = crc32fast::hash(&block[HEADER..]);
        block[8..12].copy_from_slice(&checksum.to_le_bytes());
        let segment = read(&block);
        assert_eq!(segment.records, Vec::new());
        assert_eq!(segment.unreadable_bytes, block.len() as u64);
    }
}
