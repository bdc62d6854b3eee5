//! Our HPACK response encoder ([`crate::server::hpack`]) against h2's decoder, an independent
//! implementation of RFC 7541.
//!
//! The input is a sequence of responses (status, fields, maybe a `date` replacement), often
//! repeating or changing one field of the previous one (what the encoder's per-position memory
//! is for), and changes of the client's table size. Promises checked: h2's decoder, kept in
//! step as a client's would be, decodes every block to exactly the status and fields given, in
//! the map's order; a table size the client lowered is announced at the start of the next
//! block (RFC 7541 §4.2), with the smallest size since the last block and the final one.

use std::io::Cursor;

use bytes::BytesMut;
use h2::hpack::{Decoder, Header};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::{Input, Seed};
use crate::server::hpack::{Encoder, MAX_TABLE};

/// Names the encoder treats differently (static table, never indexed, not worth indexing) and
/// plain ones.
const NAMES: [&str; 16] = [
    "date",
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "location",
    "set-cookie",
    "authorization",
    "strict-transport-security",
    "x-frame-options",
    "vary",
    "age",
    "server",
    "x-a",
    "x-long-custom-field-name",
    "cache-control",
];

const SIZES: [usize; 8] = [0, 1, 32, 64, 100, 255, 4096, 65_536];

pub fn hpack_roundtrip(data: &[u8]) {
    let mut input = Input::new(data);
    let mut enc = Encoder::new();
    let mut dec = Decoder::new(MAX_TABLE);
    let mut fields: Vec<(HeaderName, HeaderValue)> = Vec::new();
    // Table sizes set since the last block: (smallest, last).
    let mut pending: Option<(usize, usize)> = None;
    let mut blocks = 0;
    while !input.is_empty() && blocks < 64 {
        match input.byte() % 8 {
            0 => {
                let size = if input.bool() {
                    input.pick(&SIZES)
                } else {
                    input.u16() as usize
                };
                enc.set_peer_table_size(size);
                // What an h2 client does with its own SETTINGS_HEADER_TABLE_SIZE; the encoder
                // never uses more than MAX_TABLE, so that is what the decoder allows.
                let size = size.min(MAX_TABLE);
                dec.queue_size_update(size);
                pending = Some(match pending {
                    Some((smallest, _)) => (smallest.min(size), size),
                    None => (size, size),
                });
                continue;
            }
            // A new response.
            1 => {
                fields.clear();
                for _ in 0..input.byte() % 12 {
                    if let Some(f) = field(&mut input) {
                        fields.push(f);
                    }
                }
            }
            // The previous one with one field changed or added.
            2 => {
                if let Some(f) = field(&mut input) {
                    if fields.is_empty() {
                        fields.push(f);
                    } else {
                        let i = input.byte() as usize % fields.len();
                        fields[i] = f;
                    }
                }
            }
            3 if !fields.is_empty() => {
                let i = input.byte() as usize % fields.len();
                fields.remove(i);
            }
            // The previous one again.
            _ => {}
        }
        let status = StatusCode::from_u16(100 + input.u16() % 900).expect("100..=999");
        let date = input
            .bool()
            .then(|| HeaderValue::from_bytes(input.short()).ok())
            .flatten();
        let mut map = HeaderMap::new();
        for (n, v) in &fields {
            map.append(n.clone(), v.clone());
        }
        let mut block = BytesMut::new();
        enc.encode(status, &map, date.as_ref(), &mut block);
        blocks += 1;
        check_size_updates(&block, pending.take());
        let want: Vec<(&[u8], &[u8])> = map
            .iter()
            .map(|(n, v)| {
                let v = match &date {
                    Some(d) if n == http::header::DATE => d,
                    _ => v,
                };
                (n.as_str().as_bytes(), v.as_bytes())
            })
            .collect();
        let (got_status, got) = decode(&mut dec, &block);
        assert_eq!(got_status, Some(status), "status of block {blocks}");
        let got: Vec<(&[u8], &[u8])> = got.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(got, want, "fields of block {blocks}");
    }
}

/// A field: a name from [`NAMES`] or made of the input (lowercase token characters), and a
/// value of the input's bytes (those a header value may hold).
fn field(input: &mut Input<'_>) -> Option<(HeaderName, HeaderValue)> {
    let sel = input.byte();
    let name = if sel < 200 {
        HeaderName::from_static(NAMES[sel as usize % NAMES.len()])
    } else {
        let raw: Vec<u8> = input
            .short()
            .iter()
            .map(|b| b.to_ascii_lowercase())
            .collect();
        HeaderName::from_bytes(&raw).ok()?
    };
    let value = match input.byte() % 4 {
        // Long: Huffman coding and table eviction.
        0 => {
            let seed = input.short();
            let len = input.u16() as usize % 5000;
            let bytes: Vec<u8> = (0..len)
                .map(|i| seed.get(i % seed.len().max(1)).copied().unwrap_or(b'x'))
                .collect();
            HeaderValue::from_bytes(&bytes).ok()?
        }
        _ => HeaderValue::from_bytes(input.short()).ok()?,
    };
    Some((name, value))
}

/// The size updates a block starts with must announce what the client set since the last
/// block: its smallest size (when lower than the final one) and the final size.
fn check_size_updates(block: &[u8], set: Option<(usize, usize)>) {
    let mut updates = Vec::new();
    let mut rest = block;
    while let Some(&b) = rest.first() {
        if b & 0xe0 != 0x20 {
            break;
        }
        let (v, used) = read_int(rest, 5).expect("a size update's integer is complete");
        updates.push(v);
        rest = &rest[used..];
    }
    match set {
        None => assert!(
            updates.is_empty(),
            "size updates {updates:?} without a change"
        ),
        Some((smallest, last)) => {
            assert!(
                (1..=2).contains(&updates.len()),
                "table size set to {last} (smallest {smallest}) but the block starts with {updates:?}"
            );
            assert_eq!(updates.last(), Some(&last), "the final size is announced");
            assert!(
                updates[0] <= smallest,
                "the smallest size {smallest} is announced first: {updates:?}"
            );
        }
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1): the value and the octets used.
fn read_int(b: &[u8], n: u8) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut v = (*b.first()? as usize) & max;
    if v < max {
        return Some((v, 1));
    }
    let mut shift = 0;
    for (i, &octet) in b.iter().enumerate().skip(1) {
        v = v.checked_add(((octet & 0x7f) as usize).checked_shl(shift)?)?;
        if octet & 0x80 == 0 {
            return Some((v, i + 1));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    None
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn decode(d: &mut Decoder, block: &BytesMut) -> (Option<StatusCode>, Fields) {
    let mut buf = block.clone();
    let mut status = None;
    let mut fields = Vec::new();
    let mut other = None;
    let result = d.decode(&mut Cursor::new(&mut buf), |h| {
        match h {
            Header::Status(s) if status.is_none() && fields.is_empty() => status = Some(s),
            Header::Field { name, value } => {
                fields.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()))
            }
            h => other = Some(format!("{h:?}")),
        }
        std::ops::ControlFlow::Continue(())
    });
    if let Err(e) = result {
        panic!("h2's decoder refuses the block: {e:?}");
    }
    assert_eq!(other, None, "only :status and fields are encoded");
    (status, fields)
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut s = Seed::default();
    let mut out = Vec::new();
    // A typical response, repeated, then with its etag changed.
    s.byte(1).byte(5);
    for (name, value) in [
        (0u8, &b"Mon, 23 Nov 2026 10:00:00 GMT"[..]),
        (1, b"text/html; charset=utf-8"),
        (2, b"1234"),
        (3, b"\"1a-2b\""),
        (8, b"max-age=31536000"),
    ] {
        s.byte(name).byte(1).short(value);
    }
    s.u16(100).byte(0);
    s.byte(4)
        .u16(100)
        .byte(1)
        .short(b"Tue, 24 Nov 2026 10:00:00 GMT");
    s.byte(2)
        .byte(3)
        .byte(1)
        .short(b"\"3c-4d\"")
        .byte(3)
        .u16(304)
        .byte(0);
    out.push(s.take());
    // Table size changes between responses, a long value, a custom name.
    s.byte(0).byte(1).byte(5).byte(1).byte(2);
    s.byte(13).byte(0).short(b"abcdefgh").u16(3000);
    s.byte(250).short(b"X-Custom").byte(1).short(b"v");
    s.u16(200).byte(0);
    s.byte(0).byte(0).u16(50).byte(0).byte(1).byte(6);
    s.byte(4).u16(0).byte(0);
    s.byte(0).byte(1).byte(6).byte(4).u16(404).byte(0);
    out.push(s.take());
    out
}
