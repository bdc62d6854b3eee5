//! HPACK encoding of our HTTP/2 response header blocks (RFC 7541).
//!
//! Why not h2's `hpack::Encoder`: it takes every field by value, so a response's `HeaderMap` is
//! consumed and each field moved through h2's `Header` enum into the table lookup and dropped.
//! Under h2load on `/hello` that was about 12 % of the server's CPU, more than the lookups
//! themselves (BENCHMARKS.md, the HTTP/2 profile of 2026-11-23). Our responses repeat the same
//! fields in the same order (a site's security headers, a file's type and validators), so this
//! encoder reads the map by reference and remembers, per field position, the dynamic table
//! entry that matched it last time: a repeated field costs one comparison and one byte. Only the Huffman code is h2's
//! (`h2::hpack::huffman`).
//!
//! The dynamic table mirrors the client's decoder table: the same entries in the same order,
//! the same size accounting (§4.1) and eviction (§4.4). It is at most [`MAX_TABLE`] bytes and
//! never more than the client's `SETTINGS_HEADER_TABLE_SIZE`; a change is announced at the start
//! of the next block (§4.2, §6.3).
//!
//! What is indexed: every field except the sensitive ones (never indexed, §7.1.3), values that
//! differ per response or per resource and would only churn the table (the same names h2 skips:
//! `content-length`, `etag`, `location`, `set-cookie`, `age`, ...), and fields too large for the
//! table. `:status` uses the static table or a literal.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

/// The largest dynamic table we use, whatever the client allows (the protocol's default; h2,
/// nginx and h2o use the same).
pub const MAX_TABLE: usize = 4096;

/// The first dynamic table index (§2.3.3): 61 static entries come before it.
const FIRST_DYNAMIC: usize = 62;

/// The longest literal field whose encoding is kept for reuse (see [`Encoder::literals`]).
const LITERAL_MEMO: usize = 40;

/// A literal field as last sent at a position of the response, and its octets.
#[derive(Debug)]
struct Literal {
    position: usize,
    name: HeaderName,
    value: HeaderValue,
    len: u8,
    octets: [u8; LITERAL_MEMO],
}

/// One dynamic table entry.
#[derive(Debug)]
struct Entry {
    name: HeaderName,
    value: HeaderValue,
}

impl Entry {
    /// §4.1: name and value octets plus 32.
    fn size(&self) -> usize {
        entry_size(&self.name, &self.value)
    }
}

fn entry_size(name: &HeaderName, value: &HeaderValue) -> usize {
    name.as_str().len() + value.len() + 32
}

/// A connection's response header encoder.
#[derive(Debug)]
pub struct Encoder {
    /// The dynamic table, oldest entry first.
    table: VecDeque<Entry>,
    /// Entries inserted since the connection began: the newest has the id `inserted - 1`.
    inserted: u64,
    /// The table's size (§4.1).
    size: usize,
    /// The table's maximum size as last announced (or the protocol's initial 4096).
    max_size: usize,
    /// Size updates to announce at the start of the next block: the smallest maximum since the
    /// last block, and the final one (§4.2: at most two).
    size_update: Option<(usize, usize)>,
    /// For each field position of the previous response, the id of the entry that matched it.
    hints: Vec<u64>,
    /// The fields sent as literals without indexing (a file's `content-length` and `etag`),
    /// with their encoding: the same value at the same position again is copied, not encoded
    /// (Huffman coding was 1 % of HTTP/2 `/hello`). At most [`MAX_LITERALS`].
    literals: Vec<Literal>,
}

/// Positions whose literal is kept.
const MAX_LITERALS: usize = 4;

/// Positions that keep a hint.
const MAX_HINTS: usize = 64;

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder with an empty table of the protocol's initial size (4096, RFC 9113 §6.5.2).
    pub fn new() -> Self {
        Encoder {
            table: VecDeque::new(),
            inserted: 0,
            size: 0,
            max_size: MAX_TABLE,
            size_update: None,
            hints: Vec::new(),
            literals: Vec::new(),
        }
    }

    /// The client's `SETTINGS_HEADER_TABLE_SIZE`: our table follows it (up to [`MAX_TABLE`]),
    /// evicting at once, and the next block announces the change.
    pub fn set_peer_table_size(&mut self, peer: usize) {
        let new = peer.min(MAX_TABLE);
        let smallest = match self.size_update {
            Some((smallest, _)) => smallest.min(new),
            None => new,
        };
        self.size_update = Some((smallest, new));
        self.max_size = new;
        self.evict_to(new);
    }

    /// Encodes a response header block: `:status`, then the fields in the map's order, with
    /// `date` (when given) as the value of `Date`.
    pub fn encode(
        &mut self,
        status: StatusCode,
        fields: &HeaderMap,
        date: Option<&HeaderValue>,
        dst: &mut BytesMut,
    ) {
        if let Some((smallest, last)) = self.size_update.take() {
            if smallest < last {
                int(smallest, 5, 0x20, dst);
            }
            int(last, 5, 0x20, dst);
        }
        self.status(status, dst);
        self.fields(fields, date, dst);
    }

    /// Encodes a trailer block: the fields in the map's order, no pseudo-fields.
    pub fn encode_trailers(&mut self, fields: &HeaderMap, dst: &mut BytesMut) {
        if let Some((smallest, last)) = self.size_update.take() {
            if smallest < last {
                int(smallest, 5, 0x20, dst);
            }
            int(last, 5, 0x20, dst);
        }
        self.fields(fields, None, dst);
    }

    fn fields(&mut self, fields: &HeaderMap, date: Option<&HeaderValue>, dst: &mut BytesMut) {
        for (i, (name, mut value)) in fields.iter().enumerate() {
            if let Some(date) = date.filter(|_| *name == header::DATE) {
                value = date;
            }
            self.field(i, name, value, dst);
        }
    }

    fn status(&mut self, status: StatusCode, dst: &mut BytesMut) {
        let index = match status.as_u16() {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if index != 0 {
            dst.put_u8(0x80 | index);
        } else {
            // Literal without indexing, name `:status` (static 8).
            dst.put_u8(0x08);
            string(status.as_str().as_bytes(), dst);
        }
    }

    fn field(&mut self, i: usize, name: &HeaderName, value: &HeaderValue, dst: &mut BytesMut) {
        if value.is_sensitive() {
            // §6.2.3: never indexed, here and by any intermediary.
            literal(0x10, 4, static_name(name), name, value, dst);
            return;
        }
        if !worth_indexing(name) {
            self.unindexed(i, name, value, dst);
            return;
        }
        // The entry that matched this position last time.
        if let Some(p) = self.hints.get(i).and_then(|&id| self.position(id)) {
            let e = &self.table[p];
            if e.name == *name && same(&e.value, value) {
                int(self.index_of(p), 7, 0x80, dst);
                return;
            }
        }
        // Any entry, newest first; remembering a name match for the literal.
        let mut name_at = None;
        for p in (0..self.table.len()).rev() {
            let e = &self.table[p];
            if e.name == *name {
                if same(&e.value, value) {
                    self.remember(i, self.first_id() + p as u64);
                    int(self.index_of(p), 7, 0x80, dst);
                    return;
                }
                name_at.get_or_insert(p);
            }
        }
        // A literal: the name by its static index, or by a dynamic one when this insertion
        // evicts nothing (§4.4 allows referring to an entry the insertion evicts, but decoders
        // are warned about it: not worth the risk), or as a string.
        let size = entry_size(name, value);
        let name_index = static_name(name).or_else(|| {
            name_at
                .filter(|_| self.size + size <= self.max_size)
                .map(|p| self.index_of(p))
        });
        if size > self.max_size * 3 / 4 {
            // It would empty most of the table for one field.
            literal(0x00, 4, name_index, name, value, dst);
            return;
        }
        literal(0x40, 6, name_index, name, value, dst);
        self.evict_to(self.max_size - size);
        self.table.push_back(Entry {
            name: name.clone(),
            value: value.clone(),
        });
        self.size += size;
        self.remember(i, self.inserted);
        self.inserted += 1;
    }

    /// Notes that the field at position `i` is the entry `id` (for the first [`MAX_HINTS`]
    /// positions: a response with thousands of fields does not leave a hint list that size).
    fn remember(&mut self, i: usize, id: u64) {
        if i >= MAX_HINTS {
            return;
        }
        if i >= self.hints.len() {
            self.hints.resize(i + 1, u64::MAX);
        }
        self.hints[i] = id;
    }

    /// A literal without indexing, copied from the last response when it sent the same field
    /// at the same position.
    fn unindexed(&mut self, i: usize, name: &HeaderName, value: &HeaderValue, dst: &mut BytesMut) {
        let slot = self.literals.iter().position(|l| l.position == i);
        if let Some(l) = slot.map(|s| &self.literals[s]) {
            if l.name == *name && same(&l.value, value) {
                dst.extend_from_slice(&l.octets[..usize::from(l.len)]);
                return;
            }
        }
        let start = dst.len();
        literal(0x00, 4, static_name(name), name, value, dst);
        let len = dst.len() - start;
        if len > LITERAL_MEMO {
            return;
        }
        let mut octets = [0; LITERAL_MEMO];
        octets[..len].copy_from_slice(&dst[start..]);
        let kept = Literal {
            position: i,
            name: name.clone(),
            value: value.clone(),
            len: len as u8,
            octets,
        };
        match slot {
            Some(s) => self.literals[s] = kept,
            None if self.literals.len() < MAX_LITERALS => {
                // Exact growth: an idle connection keeps only what it uses.
                self.literals.reserve_exact(1);
                self.literals.push(kept);
            }
            None => {}
        }
    }

    /// The id of the oldest entry.
    fn first_id(&self) -> u64 {
        self.inserted - self.table.len() as u64
    }

    /// Where the entry with this id is, if it is still in the table.
    fn position(&self, id: u64) -> Option<usize> {
        let first = self.first_id();
        (id >= first && id < self.inserted).then(|| (id - first) as usize)
    }

    /// The HPACK index of the entry at position `p` (newest is [`FIRST_DYNAMIC`]).
    fn index_of(&self, p: usize) -> usize {
        FIRST_DYNAMIC + self.table.len() - 1 - p
    }

    /// Evicts the oldest entries until the table's size is at most `limit` (§4.4).
    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let e = self.table.pop_front().expect("size > 0 means an entry");
            self.size -= e.size();
        }
        if self.table.is_empty() {
            self.table = VecDeque::new();
        }
    }
}

/// Whether two values are the same octets (a value cloned from a site's cached map shares its
/// bytes: the pointers are compared first).
fn same(a: &HeaderValue, b: &HeaderValue) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
}

/// Fields whose values change per response or per resource: indexing them would only evict the
/// fields that repeat (h2's `skip_value_index` list, plus `content-range`).
fn worth_indexing(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AGE
            | header::AUTHORIZATION
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::ETAG
            | header::LOCATION
            | header::COOKIE
            | header::SET_COOKIE
    )
}

/// A literal field (§6.2): `pattern` with the name's index in a `prefix`-bit integer, or 0 and
/// the name as a string; then the value.
fn literal(
    pattern: u8,
    prefix: u8,
    name_index: Option<usize>,
    name: &HeaderName,
    value: &HeaderValue,
    dst: &mut BytesMut,
) {
    match name_index {
        Some(index) => int(index, prefix, pattern, dst),
        None => {
            dst.put_u8(pattern);
            string(name.as_str().as_bytes(), dst);
        }
    }
    string(value.as_bytes(), dst);
}

/// A string literal (§5.2): Huffman-coded when that is shorter.
fn string(s: &[u8], dst: &mut BytesMut) {
    let start = dst.len();
    // One length byte is the common case: Huffman-code after it, then move it if the length
    // needs more bytes, or undo it if it did not make the string shorter.
    dst.put_u8(0);
    h2::hpack::huffman::encode(s, dst);
    let coded = dst.len() - start - 1;
    if coded >= s.len() {
        dst.truncate(start);
        int(s.len(), 7, 0x00, dst);
        dst.extend_from_slice(s);
    } else if coded < 0x7f {
        dst[start] = 0x80 | coded as u8;
    } else {
        let mut head = BytesMut::with_capacity(8);
        int(coded, 7, 0x80, &mut head);
        let extra = head.len() - 1;
        dst.put_bytes(0, extra);
        dst.copy_within(start + 1..start + 1 + coded, start + 1 + extra);
        dst[start..start + head.len()].copy_from_slice(&head);
    }
}

/// An integer with an N-bit prefix (§5.1), the prefix's other bits set to `pattern`.
fn int(value: usize, prefix: u8, pattern: u8, dst: &mut BytesMut) {
    let max = (1usize << prefix) - 1;
    if value < max {
        dst.put_u8(pattern | value as u8);
        return;
    }
    dst.put_u8(pattern | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        dst.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    dst.put_u8(rest as u8);
}

/// The static table's index for a name (Appendix A; the first entry with that name).
fn static_name(name: &HeaderName) -> Option<usize> {
    use header::*;
    let index = match *name {
        ACCEPT_CHARSET => 15,
        ACCEPT_ENCODING => 16,
        ACCEPT_LANGUAGE => 17,
        ACCEPT_RANGES => 18,
        ACCEPT => 19,
        ACCESS_CONTROL_ALLOW_ORIGIN => 20,
        AGE => 21,
        ALLOW => 22,
        AUTHORIZATION => 23,
        CACHE_CONTROL => 24,
        CONTENT_DISPOSITION => 25,
        CONTENT_ENCODING => 26,
        CONTENT_LANGUAGE => 27,
        CONTENT_LENGTH => 28,
        CONTENT_LOCATION => 29,
        CONTENT_RANGE => 30,
        CONTENT_TYPE => 31,
        COOKIE => 32,
        DATE => 33,
        ETAG => 34,
        EXPECT => 35,
        EXPIRES => 36,
        FROM => 37,
        HOST => 38,
        IF_MATCH => 39,
        IF_MODIFIED_SINCE => 40,
        IF_NONE_MATCH => 41,
        IF_RANGE => 42,
        IF_UNMODIFIED_SINCE => 43,
        LAST_MODIFIED => 44,
        LINK => 45,
        LOCATION => 46,
        MAX_FORWARDS => 47,
        PROXY_AUTHENTICATE => 48,
        PROXY_AUTHORIZATION => 49,
        RANGE => 50,
        REFERER => 51,
        REFRESH => 52,
        RETRY_AFTER => 53,
        SERVER => 54,
        SET_COOKIE => 55,
        STRICT_TRANSPORT_SECURITY => 56,
        TRANSFER_ENCODING => 57,
        USER_AGENT => 58,
        VARY => 59,
        VIA => 60,
        WWW_AUTHENTICATE => 61,
        _ => return None,
    };
    Some(index)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use h2::hpack::{Decoder, Header};

    use super::*;

    /// Decodes a block with h2's decoder (an independent implementation of the same RFC):
    /// `:status` and the fields in order.
    fn decode(d: &mut Decoder, block: &BytesMut) -> (String, Vec<(String, String)>) {
        let mut buf = block.clone();
        let mut status = String::new();
        let mut fields = Vec::new();
        d.decode(&mut Cursor::new(&mut buf), |h| {
            match h {
                Header::Status(s) => status = s.as_str().to_string(),
                Header::Field { name, value } => fields.push((
                    name.as_str().to_string(),
                    value.to_str().unwrap().to_string(),
                )),
                other => panic!("unexpected {other:?}"),
            }
            std::ops::ControlFlow::Continue(())
        })
        .expect("h2's decoder accepts the block");
        (status, fields)
    }

    fn map<N: AsRef<str>, V: AsRef<str>>(fields: &[(N, V)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in fields {
            m.append(
                HeaderName::from_bytes(n.as_ref().as_bytes()).unwrap(),
                HeaderValue::from_str(v.as_ref()).unwrap(),
            );
        }
        m
    }

    /// A map's fields in its own order (values of one name together), as decoded.
    fn listed(m: &HeaderMap) -> Vec<(String, String)> {
        m.iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    const SITE: &[(&str, &str)] = &[
        ("date", "Mon, 23 Nov 2026 10:00:00 GMT"),
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", "12"),
        ("etag", "\"1a2b-3c\""),
        ("strict-transport-security", "max-age=63072000"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        (
            "x-custom",
            "a value that is long enough to want Huffman coding ~~~",
        ),
    ];

    #[test]
    fn a_repeated_response_is_one_byte_per_indexed_field() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        let m = map(SITE);
        let mut first = BytesMut::new();
        e.encode(StatusCode::OK, &m, None, &mut first);
        assert_eq!(decode(&mut d, &first), ("200".into(), owned(SITE)));
        let mut second = BytesMut::new();
        e.encode(StatusCode::OK, &m, None, &mut second);
        assert_eq!(decode(&mut d, &second), ("200".into(), owned(SITE)));
        // :status and 7 indexed fields, one byte each; content-length and etag as literals
        // with static names (28 and 34: two bytes with a 4-bit prefix), "12" raw (Huffman is
        // no shorter) and the etag Huffman-coded in 8 octets.
        let literals = (2 + 1 + 2) + (2 + 1 + 8);
        assert_eq!(second.len(), 1 + 7 + literals, "{second:x?}");
        assert!(first.len() > 150, "the first block carries the fields");
    }

    #[test]
    fn statuses_and_changing_values_decode_exactly() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        for (i, status) in [200u16, 404, 301, 200, 503, 304, 418, 200]
            .iter()
            .enumerate()
        {
            let date = format!("Mon, 23 Nov 2026 10:00:0{i} GMT");
            let len = (i * 1000).to_string();
            let mut fields = SITE.to_vec();
            fields[0].1 = &date;
            fields[2].1 = &len;
            if i % 3 == 1 {
                fields.swap(4, 6);
                fields.push(("set-cookie", "a=b"));
                fields.push(("set-cookie", "c=d"));
            }
            let mut block = BytesMut::new();
            e.encode(
                StatusCode::from_u16(*status).unwrap(),
                &map(&fields),
                None,
                &mut block,
            );
            assert_eq!(
                decode(&mut d, &block),
                (status.to_string(), owned(&fields)),
                "response {i}"
            );
        }
    }

    #[test]
    fn repeated_literals_are_copied_and_changed_ones_encoded_again() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        let mut blocks = Vec::new();
        for len in ["12", "12", "345", "345", "12"] {
            let mut fields = SITE.to_vec();
            fields[2].1 = len;
            let mut block = BytesMut::new();
            e.encode(StatusCode::OK, &map(&fields), None, &mut block);
            assert_eq!(
                decode(&mut d, &block).1,
                owned(&fields),
                "content-length {len}"
            );
            blocks.push(block);
        }
        assert_eq!(blocks[1], blocks[4], "same fields, same octets");
        assert_ne!(blocks[1], blocks[2]);
        assert_eq!(e.literals.len(), 2, "content-length and etag");
        // A field whose encoding is too long to keep is encoded each time.
        let long = "9".repeat(60);
        for _ in 0..2 {
            let mut block = BytesMut::new();
            e.encode(StatusCode::OK, &map(&[("etag", &long)]), None, &mut block);
            assert_eq!(decode(&mut d, &block).1, owned(&[("etag", &long)]));
        }
    }

    /// Random responses (names from a small set, so that entries repeat, are found by hint
    /// and by scan, and get evicted), with table size changes between them, all decoded
    /// exactly by h2's decoder.
    #[test]
    fn random_responses_and_table_sizes_decode_exactly() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = [
            "date",
            "etag",
            "x-a",
            "x-b",
            "server",
            "vary",
            "set-cookie",
            "x-long",
        ];
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        for round in 0..2000 {
            if next(50) == 0 {
                let sizes = [0usize, 64, 200, 1000, 4096, 10_000];
                for _ in 0..=next(2) {
                    let size = sizes[next(sizes.len() as u64) as usize];
                    e.set_peer_table_size(size);
                    d.queue_size_update(size);
                }
            }
            let fields: Vec<(String, String)> = (0..next(12))
                .map(|_| {
                    let name = names[next(names.len() as u64) as usize];
                    let len = if name == "x-long" {
                        100 + next(2000)
                    } else {
                        next(20)
                    };
                    let value: String = (0..len)
                        .map(|k| (b'a' + ((k + next(3)) % 26) as u8) as char)
                        .collect();
                    (name.to_string(), value)
                })
                .collect();
            let m = map(&fields);
            let want = listed(&m);
            let status = [200u16, 404, 302, 500][next(4) as usize];
            let mut block = BytesMut::new();
            e.encode(StatusCode::from_u16(status).unwrap(), &m, None, &mut block);
            assert_eq!(
                decode(&mut d, &block),
                (status.to_string(), want),
                "round {round}"
            );
            assert!(e.size <= e.max_size);
        }
    }

    #[test]
    fn a_response_with_many_fields_keeps_a_bounded_hint_list() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        let fields: Vec<(String, String)> = (0..300)
            .map(|k| (format!("x-{}", k % 40), format!("{}", k % 7)))
            .collect();
        let m = map(&fields);
        let want = listed(&m);
        for _ in 0..3 {
            let mut block = BytesMut::new();
            e.encode(StatusCode::OK, &m, None, &mut block);
            assert_eq!(decode(&mut d, &block).1, want);
        }
        assert_eq!(e.hints.len(), MAX_HINTS);
    }

    #[test]
    fn the_date_given_replaces_the_maps_date() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        let m = map(SITE);
        for second in ["01", "01", "02"] {
            let date = format!("Mon, 23 Nov 2026 10:00:{second} GMT");
            let mut block = BytesMut::new();
            e.encode(
                StatusCode::OK,
                &m,
                Some(&HeaderValue::from_str(&date).unwrap()),
                &mut block,
            );
            let mut want = owned(SITE);
            want[0].1 = date;
            assert_eq!(decode(&mut d, &block).1, want);
        }
    }

    #[test]
    fn the_table_evicts_like_the_decoder() {
        // Many distinct indexed fields through a small table: the encoder's view of the table
        // must stay the decoder's, or indices resolve to the wrong fields.
        for table in [4096, 300, 100] {
            let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
            e.set_peer_table_size(table);
            d.queue_size_update(table);
            churn(&mut e, &mut d);
            assert!(e.inserted > 100, "entries were evicted and replaced");
        }
    }

    fn churn(e: &mut Encoder, d: &mut Decoder) {
        for round in 0..50 {
            let fields: Vec<(String, String)> = (0..6)
                .map(|k| {
                    (
                        format!("x-f{}", (round + k) % 9),
                        format!("v{}-{}", round % 4, k),
                    )
                })
                .collect();
            let mut block = BytesMut::new();
            e.encode(StatusCode::OK, &map(&fields), None, &mut block);
            assert_eq!(decode(d, &block).1, fields, "round {round}");
            assert!(e.size <= e.max_size);
        }
    }

    #[test]
    fn a_smaller_peer_table_is_announced_and_followed() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        let m = map(SITE);
        let mut block = BytesMut::new();
        e.encode(StatusCode::OK, &m, None, &mut block);
        decode(&mut d, &block);
        // The client lowers its table to 100 bytes (SETTINGS, acknowledged), and says so to
        // its decoder; then to 0 and back to 200 before the next block.
        for sizes in [&[100][..], &[0, 200], &[4096, 65536]] {
            for s in sizes {
                e.set_peer_table_size(*s);
                d.queue_size_update(*s);
            }
            for _ in 0..3 {
                let mut block = BytesMut::new();
                e.encode(StatusCode::OK, &m, None, &mut block);
                assert_eq!(decode(&mut d, &block).1, owned(SITE), "sizes {sizes:?}");
                assert!(e.size <= e.max_size && e.max_size <= MAX_TABLE);
            }
        }
        // Two updates (smallest, then final) were sent for 0 then 200.
        let mut e = Encoder::new();
        e.set_peer_table_size(0);
        e.set_peer_table_size(200);
        let mut block = BytesMut::new();
        e.encode(StatusCode::OK, &HeaderMap::new(), None, &mut block);
        // 0, then 200 = 31 + 169 (169 = 41 + 128: 0xa9 0x01), then :status 200.
        assert_eq!(&block[..], &[0x20, 0x3f, 0xa9, 0x01, 0x88][..]);
    }

    #[test]
    fn a_zero_table_indexes_nothing() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(0));
        e.set_peer_table_size(0);
        let m = map(SITE);
        for _ in 0..2 {
            let mut block = BytesMut::new();
            e.encode(StatusCode::OK, &m, None, &mut block);
            assert_eq!(decode(&mut d, &block).1, owned(SITE));
            assert!(e.table.is_empty());
        }
    }

    #[test]
    fn sensitive_and_large_values_stay_out_of_the_table() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        let mut m = map(&[("x-small", "1")]);
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        m.insert(header::AUTHORIZATION, secret.clone());
        m.insert(HeaderName::from_static("x-token"), secret);
        let big = "b".repeat(3500);
        m.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(&big).unwrap(),
        );
        let mut block = BytesMut::new();
        e.encode(StatusCode::OK, &m, None, &mut block);
        let (_, fields) = decode(&mut d, &block);
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[3].1, big);
        assert_eq!(e.table.len(), 1, "only x-small was indexed");
        // The sensitive ones are "never indexed" literals: 0x1_ prefix.
        let never = block.iter().filter(|b| **b & 0xf0 == 0x10).count();
        assert!(never >= 2, "{block:x?}");
    }

    #[test]
    fn long_and_unhuffmanable_strings() {
        let (mut e, mut d) = (Encoder::new(), Decoder::new(4096));
        // Huffman longer than 126 octets (a multi-byte length), and octets whose codes are
        // longer than 8 bits (sent raw).
        let long = "abcdefghij".repeat(30);
        let raw = "\\^|~{}".repeat(5);
        let fields = [("x-long", long.as_str()), ("x-raw", raw.as_str())];
        let mut block = BytesMut::new();
        e.encode(
            StatusCode::from_u16(299).unwrap(),
            &map(&fields),
            None,
            &mut block,
        );
        assert_eq!(decode(&mut d, &block), ("299".into(), owned(&fields)));
        for v in [0usize, 30, 31, 127, 128, 300, 1 << 20] {
            for prefix in [4u8, 5, 6, 7] {
                let mut b = BytesMut::new();
                int(v, prefix, 0, &mut b);
                let max = (1usize << prefix) - 1;
                let mut got = usize::from(b[0]) & max;
                if got == max {
                    for (k, byte) in b[1..].iter().enumerate() {
                        got += usize::from(byte & 0x7f) << (7 * k);
                    }
                }
                assert_eq!(got, v, "{v} with {prefix} bits: {b:x?}");
            }
        }
    }
}
